"""NumPy reference LSTM: the equations, forward and hand-written backward. The spec and the oracle.

Every fast path in lstmkit (torch modules, fused kernels) is tested against this file. It uses
NumPy only, one equation per line, named as in the equations (sigma = sigmoid, * = element-wise):

    i_t  = sigma(x_t W_xi + h_{t-1} W_hi + b_i)        input gate
    f_t  = sigma(x_t W_xf + h_{t-1} W_hf + b_f)        forget gate
    c~_t = tanh(x_t W_xc + h_{t-1} W_hc + b_c)         candidate cell state
    o_t  = sigma(x_t W_xo + h_{t-1} W_ho + b_o)        output gate
    c_t  = f_t * c_{t-1} + i_t * c~_t                  cell state
    h_t  = o_t * tanh(c_t)                             hidden state
    Y_t  = h_t W_hq + b_q                              output layer

Parameters carry the names of the classic from-scratch code (Dive into Deep Learning, ch. 10):
``W_xi, W_hi, b_i, W_xf, W_hf, b_f, W_xo, W_ho, b_o, W_xc, W_hc, b_c, W_hq, b_q``; ``W_x*`` is
(inputs, hidden), so rows are features and the maths reads ``x @ W``. ``lstm(inputs, state, params)``
follows that calling convention exactly: ``inputs`` is a sequence of (batch, features) arrays,
``state`` is ``(H, C)``, and the outputs of all steps come back concatenated over time.

An optional projection (``W_hr``, (hidden, proj)) makes the recurrent state ``h_t = (o_t *
tanh(c_t)) W_hr``, as ``torch.nn.LSTM(proj_size=...)`` does (Sak et al. 2014).

Gate order. ``torch.nn.LSTM`` stacks its gates as (i, f, g, o), where g is the candidate c~;
:data:`GATES` names that order once and :func:`to_torch` / :func:`from_torch` convert.

The module also holds what a NumPy-only character language model needs (one-hot inputs, softmax
cross-entropy, SGD with gradient-norm clipping, perplexity, generation) and a runnable demo::

    python -m lstmkit.reference --data some.txt --minutes 3
"""

from __future__ import annotations

import argparse
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "GATES",
    "PARAM_NAMES",
    "LayerCache",
    "VARIANT_PARAMS",
    "VariantCache",
    "init_lstm_params",
    "lstm",
    "forward",
    "backward",
    "layer_forward",
    "layer_backward",
    "variant_layer_forward",
    "variant_layer_backward",
    "stack_forward",
    "stack_backward",
    "params_to_dict",
    "params_from_dict",
    "to_torch",
    "from_torch",
    "one_hot",
    "softmax_cross_entropy",
    "clip_gradients",
    "sgd",
    "perplexity",
    "generate",
    "CharLMConfig",
    "train_char_lm",
    "main",
]

#: The one gate order of lstmkit, as ``torch.nn.LSTM`` stacks its weights. ``g`` is c~ (seed name ``c``).
GATES = ("i", "f", "g", "o")
#: The seed names of the gates in :data:`GATES` order (the candidate is ``c`` in ``W_xc``).
_SEED_GATE = {"i": "i", "f": "f", "g": "c", "o": "o"}

#: The parameter list of the classic from-scratch LSTM, in its order.
PARAM_NAMES = (
    "W_xi", "W_hi", "b_i",
    "W_xf", "W_hf", "b_f",
    "W_xo", "W_ho", "b_o",
    "W_xc", "W_hc", "b_c",
    "W_hq", "b_q",
)  # fmt: skip

_LAYER_NAMES = PARAM_NAMES[:12]


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Numerically stable logistic function."""
    return np.where(x >= 0, 1.0 / (1.0 + np.exp(-np.abs(x))), np.exp(-np.abs(x)) / (1.0 + np.exp(-np.abs(x))))


# ---------------------------------------------------------------------------------------------
# Parameters
# ---------------------------------------------------------------------------------------------


def init_lstm_params(
    num_inputs: int,
    num_hiddens: int,
    num_outputs: int,
    rng: np.random.Generator | None = None,
    scale: float = 0.01,
    dtype: np.dtype | type = np.float64,
    forget_bias: float = 0.0,
) -> list[np.ndarray]:
    """The 14 parameters in :data:`PARAM_NAMES` order: weights N(0, scale^2), biases zero.

    ``forget_bias`` is the ``forget_bias`` variant (Jozefowicz et al. 2015): a constant the
    forget-gate bias ``b_f`` starts at, so that the cell remembers by default early in training.
    """
    rng = np.random.default_rng(0) if rng is None else rng

    def normal(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(dtype)

    def three() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return normal(num_inputs, num_hiddens), normal(num_hiddens, num_hiddens), np.zeros(num_hiddens, dtype)

    W_xi, W_hi, b_i = three()  # input gate
    W_xf, W_hf, b_f = three()  # forget gate
    b_f += forget_bias
    W_xo, W_ho, b_o = three()  # output gate
    W_xc, W_hc, b_c = three()  # candidate cell state
    W_hq = normal(num_hiddens, num_outputs)
    b_q = np.zeros(num_outputs, dtype)
    return [W_xi, W_hi, b_i, W_xf, W_hf, b_f, W_xo, W_ho, b_o, W_xc, W_hc, b_c, W_hq, b_q]


def params_to_dict(params: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    """The seed list (12 LSTM arrays, optionally + W_hq, b_q) as a name -> array dict."""
    if len(params) not in (12, 14):
        raise ValueError(f"expected 12 or 14 parameters in the order {PARAM_NAMES}, got {len(params)}")
    return dict(zip(PARAM_NAMES, params))


def params_from_dict(p: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The inverse of :func:`params_to_dict` (14 arrays if W_hq is present, else 12)."""
    names = PARAM_NAMES if "W_hq" in p else _LAYER_NAMES
    return [p[n] for n in names]


def to_torch(p: dict[str, np.ndarray], layer: int = 0, reverse: bool = False) -> dict[str, np.ndarray]:
    """Seed-named parameters of one layer -> ``torch.nn.LSTM`` ``state_dict`` entries (NumPy arrays).

    ``weight_ih_l{k}`` is (4H, I) with row blocks in :data:`GATES` order, i.e. the transposed seed
    weights stacked; the seed's single bias goes to ``bias_ih`` and ``bias_hh`` is zero. A seed
    ``W_hr`` (hidden, proj) becomes ``weight_hr_l{k}`` (proj, hidden).
    """
    sfx = f"_l{layer}" + ("_reverse" if reverse else "")
    gates = [_SEED_GATE[g] for g in GATES]
    b = np.concatenate([p[f"b_{g}"] for g in gates])  # (4H,)
    out = {
        f"weight_ih{sfx}": np.concatenate([p[f"W_x{g}"].T for g in gates], axis=0),  # (4H, I)
        f"weight_hh{sfx}": np.concatenate([p[f"W_h{g}"].T for g in gates], axis=0),  # (4H, H or P)
        f"bias_ih{sfx}": b,
        f"bias_hh{sfx}": np.zeros_like(b),
    }
    if p.get("W_hr") is not None:
        out[f"weight_hr{sfx}"] = p["W_hr"].T  # (P, H)
    return out


def from_torch(sd: dict[str, np.ndarray], layer: int = 0, reverse: bool = False) -> dict[str, np.ndarray]:
    """``torch.nn.LSTM`` ``state_dict`` entries (NumPy arrays) of one layer -> seed-named parameters.

    The two torch biases add up to the seed's one bias. Accepts what ``{k: v.numpy() for k, v in
    module.state_dict().items()}`` gives.
    """
    sfx = f"_l{layer}" + ("_reverse" if reverse else "")
    key = f"weight_ih{sfx}"
    if key not in sd:
        raise ValueError(f"no {key!r} in the state dict; it holds {sorted(sd)}")
    W_ih = np.asarray(sd[key])  # (4H, I)
    W_hh = np.asarray(sd[f"weight_hh{sfx}"])  # (4H, H or P)
    hidden = W_ih.shape[0] // 4
    b = np.zeros(4 * hidden, W_ih.dtype)
    for name in (f"bias_ih{sfx}", f"bias_hh{sfx}"):
        if name in sd:
            b = b + np.asarray(sd[name])
    p: dict[str, np.ndarray] = {}
    for k, g in enumerate(GATES):
        rows = slice(k * hidden, (k + 1) * hidden)
        s = _SEED_GATE[g]
        p[f"W_x{s}"] = W_ih[rows].T.copy()  # (I, H)
        p[f"W_h{s}"] = W_hh[rows].T.copy()  # (H or P, H)
        p[f"b_{s}"] = b[rows].copy()  # (H,)
    if f"weight_hr{sfx}" in sd:
        p["W_hr"] = np.asarray(sd[f"weight_hr{sfx}"]).T.copy()  # (H, P)
    return p


# ---------------------------------------------------------------------------------------------
# One layer over time: forward and backpropagation through time
# ---------------------------------------------------------------------------------------------


@dataclass
class LayerCache:
    """What the backward pass of one layer needs from its forward pass (one entry per step)."""

    p: dict[str, np.ndarray]
    xs: list[np.ndarray]  # x_t, (B, I)
    h_prev: list[np.ndarray]  # h_{t-1}, (B, H or P)
    c_prev: list[np.ndarray]  # c_{t-1}, (B, H)
    i: list[np.ndarray]
    f: list[np.ndarray]
    c_tilde: list[np.ndarray]
    o: list[np.ndarray]
    tanh_c: list[np.ndarray]


def layer_forward(
    xs: Sequence[np.ndarray],
    state: tuple[np.ndarray, np.ndarray],
    p: dict[str, np.ndarray],
) -> tuple[list[np.ndarray], tuple[np.ndarray, np.ndarray], LayerCache]:
    """Run one LSTM layer over ``xs`` (a sequence of (B, I) arrays) from ``state = (H, C)``.

    Returns the hidden states of every step, the final ``(H, C)`` and the cache for
    :func:`layer_backward`. ``p`` holds the 12 seed-named arrays and optionally ``W_hr``.
    """
    H, C = state
    W_hr = p.get("W_hr")
    cache = LayerCache(p, [], [], [], [], [], [], [], [])
    hs = []
    for X in xs:
        cache.xs.append(X)
        cache.h_prev.append(H)
        cache.c_prev.append(C)
        I = sigmoid(X @ p["W_xi"] + H @ p["W_hi"] + p["b_i"])  # (B, H)
        F = sigmoid(X @ p["W_xf"] + H @ p["W_hf"] + p["b_f"])
        C_tilde = np.tanh(X @ p["W_xc"] + H @ p["W_hc"] + p["b_c"])
        O = sigmoid(X @ p["W_xo"] + H @ p["W_ho"] + p["b_o"])
        C = F * C + I * C_tilde
        tanh_C = np.tanh(C)
        H = O * tanh_C
        if W_hr is not None:
            H = H @ W_hr  # (B, H) -> (B, P)
        for lst, v in ((cache.i, I), (cache.f, F), (cache.c_tilde, C_tilde), (cache.o, O), (cache.tanh_c, tanh_C)):
            lst.append(v)
        hs.append(H)
    return hs, (H, C), cache


def layer_backward(
    dhs: Sequence[np.ndarray | None],
    cache: LayerCache,
    dstate: tuple[np.ndarray | None, np.ndarray | None] = (None, None),
) -> tuple[dict[str, np.ndarray], list[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Backpropagation through time for :func:`layer_forward`.

    ``dhs[t]`` is dLoss/dh_t from above (None for zero), ``dstate`` the gradient on the final
    ``(H, C)``. Returns the gradients of every parameter in ``cache.p`` (same names), of every
    input ``x_t``, and of the initial state ``(H_0, C_0)``.
    """
    p = cache.p
    W_hr = p.get("W_hr")
    grads = {k: np.zeros_like(p[k]) for k in (*_LAYER_NAMES, "W_hr") if p.get(k) is not None}
    T = len(cache.xs)
    dH = np.zeros_like(cache.h_prev[0]) if dstate[0] is None else dstate[0].copy()  # dL/dh_t, (B, H or P)
    dC = np.zeros_like(cache.c_prev[0]) if dstate[1] is None else dstate[1].copy()  # dL/dc_t, (B, H)
    dxs: list[np.ndarray] = [np.empty(0)] * T
    for t in reversed(range(T)):
        if dhs[t] is not None:
            dH = dH + dhs[t]
        I, F, C_tilde, O, tanh_C = cache.i[t], cache.f[t], cache.c_tilde[t], cache.o[t], cache.tanh_c[t]
        X, H_prev, C_prev = cache.xs[t], cache.h_prev[t], cache.c_prev[t]
        if W_hr is not None:
            m = O * tanh_C  # (B, H), the state before projection
            grads["W_hr"] += m.T @ dH
            dH = dH @ W_hr.T  # (B, P) -> (B, H)
        # h_t = o_t * tanh(c_t)
        dO = dH * tanh_C
        dC = dC + dH * O * (1.0 - tanh_C**2)
        # c_t = f_t * c_{t-1} + i_t * c~_t
        dF = dC * C_prev
        dI = dC * C_tilde
        dC_tilde = dC * I
        dC_prev = dC * F
        # pre-activations: sigma' = s(1 - s), tanh' = 1 - t^2
        da = {
            "i": dI * I * (1.0 - I),
            "f": dF * F * (1.0 - F),
            "c": dC_tilde * (1.0 - C_tilde**2),
            "o": dO * O * (1.0 - O),
        }
        dX = np.zeros_like(X)
        dH_prev = np.zeros_like(H_prev)
        for g, d in da.items():
            grads[f"W_x{g}"] += X.T @ d
            grads[f"W_h{g}"] += H_prev.T @ d
            grads[f"b_{g}"] += d.sum(axis=0)
            dX += d @ p[f"W_x{g}"].T
            dH_prev += d @ p[f"W_h{g}"].T
        dxs[t] = dX
        dH, dC = dH_prev, dC_prev
    return grads, dxs, (dH, dC)


# ---------------------------------------------------------------------------------------------
# Variants: one layer over time in the stacked (torch) layout, forward and BPTT
# ---------------------------------------------------------------------------------------------
#
# One step with every variant, in the order lstmkit applies them (a (B, 4H) pre-activation is split
# into gates in GATES order; LN(z) = (z - mean(z)) / sqrt(var(z) + eps) over the last axis):
#
#   a_x   = LN(x_t W_ih^T) * g_ih + b_ih + b_hh          (layer_norm: g_ih; else x_t W_ih^T + b)
#   h_in  = h_{t-1} * m_rec                              (recurrent_dropout: one (B, P) mask per sequence)
#   a_h   = LN(h_in (W_hh * m_w)^T) * g_hh               (weight_drop: one (4H, P) mask per forward)
#   i_t   = sigma(a_i + w_ci * c_{t-1})                  (peephole: w_ci, w_cf, w_co = weight_ch)
#   f_t   = sigma(a_f + w_cf * c_{t-1})
#   i_t   = 1 - f_t                                      (coupled_input_forget replaces the line above)
#   c~_t  = tanh(a_g)
#   c'_t  = clip(f_t * c_{t-1} + i_t * c~_t, -v, v)      (cell_clip v)
#   o_t   = sigma(a_o + w_co * c'_t)
#   h'_t  = o_t * tanh(LN(c'_t) * g_c + b_c)             (layer_norm: g_c, b_c)   [then @ W_hr^T]
#   c_t   = z_c * c_{t-1} + (1 - z_c) * c'_t             (zoneout: z in {0, 1} drawn per step in
#   h_t   = z_h * h_{t-1} + (1 - z_h) * h'_t              training, z = rate in evaluation)
#
# The masks are inputs (``masks=``): scaled dropout masks (values 0 or 1/(1-p)) and zoneout masks,
# so that every random variant is a deterministic function the torch paths can be checked against.
# ``forget_bias`` only changes the initial b_f (:func:`init_lstm_params`).

#: The extra parameters of each variant, per layer and direction, as ``lstmkit.nn`` names them
#: (torch style: ``layernorm_ih_weight_l0``, ``weight_ch_l1_reverse``; an ``LSTMCell`` drops the suffix).
VARIANT_PARAMS = {
    "layer_norm": ("layernorm_ih_weight", "layernorm_hh_weight", "layernorm_c_weight", "layernorm_c_bias"),
    "peephole": ("weight_ch",),
}

LN_EPS = 1e-5


def _layer_norm(z: np.ndarray, eps: float = LN_EPS) -> tuple[np.ndarray, np.ndarray]:
    """(z - mean) / sqrt(var + eps) over the last axis, and that 1 / sqrt(var + eps) (..., 1)."""
    mu = z.mean(axis=-1, keepdims=True)
    var = ((z - mu) ** 2).mean(axis=-1, keepdims=True)
    rstd = 1.0 / np.sqrt(var + eps)
    return (z - mu) * rstd, rstd


def _layer_norm_backward(dzhat: np.ndarray, zhat: np.ndarray, rstd: np.ndarray) -> np.ndarray:
    """dL/dz from dL/dzhat for ``zhat, rstd = _layer_norm(z)``."""
    mean_d = dzhat.mean(axis=-1, keepdims=True)
    mean_dz = (dzhat * zhat).mean(axis=-1, keepdims=True)
    return rstd * (dzhat - mean_d - zhat * mean_dz)


@dataclass
class VariantCache:
    """What :func:`variant_layer_backward` needs: parameters, options, masks and one dict per step."""

    p: dict[str, np.ndarray]
    opts: dict
    masks: dict
    valid: Sequence[np.ndarray] | None
    steps: list[dict]


def variant_layer_forward(
    xs: Sequence[np.ndarray],
    state: tuple[np.ndarray, np.ndarray],
    p: dict[str, np.ndarray],
    *,
    layer_norm: bool = False,
    peephole: bool = False,
    coupled_input_forget: bool = False,
    cell_clip: float | None = None,
    masks: dict | None = None,
    valid: Sequence[np.ndarray] | None = None,
    eps: float = LN_EPS,
) -> tuple[list[np.ndarray], tuple[np.ndarray, np.ndarray], VariantCache]:
    """One LSTM layer with variants over ``xs`` (T x (B, I)) from ``state = (h_0, c_0)``.

    ``p`` holds torch-layout arrays of one layer and direction, without suffix: ``weight_ih`` (4H, I),
    ``weight_hh`` (4H, P), optionally ``bias`` (4H,) (= ``bias_ih + bias_hh``), ``weight_hr`` (P, H),
    and the :data:`VARIANT_PARAMS` of the switched-on variants (``layernorm_*_weight`` (4H,), (4H,),
    (H,), ``layernorm_c_bias`` (H,); ``weight_ch`` (3H,) = (w_ci, w_cf, w_co)).
    ``masks`` may hold ``recurrent`` (B, P), ``weight_hh`` (4H, P), ``zoneout_h`` T x (B, P) and
    ``zoneout_c`` T x (B, H); ``valid`` is T x (B, 1) with 1 where step t lies within the sequence's
    length (elsewhere the state is carried unchanged). Returns the states h_t of every step, the
    final (h, c) and the cache for :func:`variant_layer_backward`.
    """
    masks = dict(masks or {})
    opts = dict(layer_norm=layer_norm, peephole=peephole, cifg=coupled_input_forget, clip=cell_clip, eps=eps)
    W_hh = p["weight_hh"] * masks["weight_hh"] if "weight_hh" in masks else p["weight_hh"]  # (4H, P)
    W_hr = p.get("weight_hr")
    if peephole:
        w_ci, w_cf, w_co = np.split(p["weight_ch"], 3)  # 3 x (H,)
    H, C = state
    hs, steps = [], []
    for t, X in enumerate(xs):
        s: dict = {"x": X, "h_prev": H, "c_prev": C}
        a_x = X @ p["weight_ih"].T  # (B, 4H)
        if layer_norm:
            s["xhat_x"], s["rstd_x"] = _layer_norm(a_x, eps)
            a_x = s["xhat_x"] * p["layernorm_ih_weight"]
        if p.get("bias") is not None:
            a_x = a_x + p["bias"]
        h_in = H * masks["recurrent"] if "recurrent" in masks else H  # (B, P)
        s["h_in"] = h_in
        a_h = h_in @ W_hh.T  # (B, 4H)
        if layer_norm:
            s["xhat_h"], s["rstd_h"] = _layer_norm(a_h, eps)
            a_h = s["xhat_h"] * p["layernorm_hh_weight"]
        a_i, a_f, a_g, a_o = np.split(a_x + a_h, 4, axis=1)  # 4 x (B, H)
        if peephole:
            a_i = a_i + w_ci * C
            a_f = a_f + w_cf * C
        F = sigmoid(a_f)
        I = 1.0 - F if coupled_input_forget else sigmoid(a_i)
        G = np.tanh(a_g)
        C_pre = F * C + I * G
        C_new = np.clip(C_pre, -cell_clip, cell_clip) if cell_clip is not None else C_pre
        if peephole:
            a_o = a_o + w_co * C_new
        O = sigmoid(a_o)
        if layer_norm:
            s["nhat"], s["rstd_c"] = _layer_norm(C_new, eps)
            N = s["nhat"] * p["layernorm_c_weight"] + p["layernorm_c_bias"]
        else:
            N = C_new
        tanh_N = np.tanh(N)
        M = O * tanh_N  # (B, H)
        H_new = M @ W_hr.T if W_hr is not None else M  # (B, H) -> (B, P)
        if "zoneout_h" in masks:
            H_new = masks["zoneout_h"][t] * H + (1.0 - masks["zoneout_h"][t]) * H_new
        C_next = C_new
        if "zoneout_c" in masks:
            C_next = masks["zoneout_c"][t] * C + (1.0 - masks["zoneout_c"][t]) * C_new
        if valid is not None:
            H_new = valid[t] * H_new + (1.0 - valid[t]) * H
            C_next = valid[t] * C_next + (1.0 - valid[t]) * C
        s.update(i=I, f=F, g=G, o=O, c_pre=C_pre, c_new=C_new, tanh_n=tanh_N, m=M)
        steps.append(s)
        H, C = H_new, C_next
        hs.append(H)
    return hs, (H, C), VariantCache(p, opts, masks, valid, steps)


def variant_layer_backward(
    dhs: Sequence[np.ndarray | None],
    cache: VariantCache,
    dstate: tuple[np.ndarray | None, np.ndarray | None] = (None, None),
) -> tuple[dict[str, np.ndarray], list[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Backpropagation through time for :func:`variant_layer_forward`, written out by hand.

    Returns the gradients of every array in ``cache.p`` (same names; ``bias`` is the gradient of
    both ``bias_ih`` and ``bias_hh``), of every ``x_t`` and of ``(h_0, c_0)``.
    """
    p, o, masks, valid = cache.p, cache.opts, cache.masks, cache.valid
    W_hh = p["weight_hh"] * masks["weight_hh"] if "weight_hh" in masks else p["weight_hh"]
    W_hr = p.get("weight_hr")
    grads = {k: np.zeros_like(v) for k, v in p.items() if v is not None}
    dW_hh = np.zeros_like(W_hh)  # gradient w.r.t. the masked W_hh
    if o["peephole"]:
        w_ci, w_cf, w_co = np.split(p["weight_ch"], 3)
        dw_ci, dw_cf, dw_co = np.split(grads["weight_ch"], 3)  # views: += writes into grads
    steps = cache.steps
    T = len(steps)
    dH = np.zeros_like(steps[0]["h_prev"]) if dstate[0] is None else dstate[0].copy()  # dL/dh_t
    dC = np.zeros_like(steps[0]["c_prev"]) if dstate[1] is None else dstate[1].copy()  # dL/dc_t
    dxs: list[np.ndarray] = [np.empty(0)] * T
    for t in reversed(range(T)):
        s = steps[t]
        if dhs[t] is not None:
            dH = dH + dhs[t]
        dH_prev = np.zeros_like(dH)
        dC_prev = np.zeros_like(dC)
        if valid is not None:  # h_t = v h_t' + (1 - v) h_{t-1}
            dH_prev += (1.0 - valid[t]) * dH
            dC_prev += (1.0 - valid[t]) * dC
            dH, dC = valid[t] * dH, valid[t] * dC
        if "zoneout_h" in masks:  # h_t = z h_{t-1} + (1 - z) h'_t
            dH_prev += masks["zoneout_h"][t] * dH
            dH = (1.0 - masks["zoneout_h"][t]) * dH
        if "zoneout_c" in masks:
            dC_prev += masks["zoneout_c"][t] * dC
            dC = (1.0 - masks["zoneout_c"][t]) * dC
        I, F, G, O, tanh_N = s["i"], s["f"], s["g"], s["o"], s["tanh_n"]
        C_prev, C_new = s["c_prev"], s["c_new"]
        if W_hr is not None:  # h'_t = m_t W_hr^T
            grads["weight_hr"] += dH.T @ s["m"]
            dM = dH @ W_hr  # (B, P) -> (B, H)
        else:
            dM = dH
        # m_t = o_t * tanh(n_t)
        dO = dM * tanh_N
        dN = dM * O * (1.0 - tanh_N**2)
        if o["layer_norm"]:  # n_t = LN(c'_t) g_c + b_c
            grads["layernorm_c_weight"] += (dN * s["nhat"]).sum(axis=0)
            grads["layernorm_c_bias"] += dN.sum(axis=0)
            dC_new = dC + _layer_norm_backward(dN * p["layernorm_c_weight"], s["nhat"], s["rstd_c"])
        else:
            dC_new = dC + dN
        da_o = dO * O * (1.0 - O)
        if o["peephole"]:  # o_t = sigma(a_o + w_co c'_t)
            dC_new = dC_new + da_o * w_co
            dw_co += (da_o * C_new).sum(axis=0)
        if o["clip"] is not None:  # d clip(c)/dc = 1 inside [-v, v]
            dC_new = dC_new * ((s["c_pre"] >= -o["clip"]) & (s["c_pre"] <= o["clip"]))
        # c'_t = f_t * c_{t-1} + i_t * c~_t
        dF = dC_new * C_prev
        dI = dC_new * G
        dG = dC_new * I
        dC_prev += dC_new * F
        if o["cifg"]:  # i_t = 1 - f_t
            dF = dF - dI
            da_i = np.zeros_like(dI)
        else:
            da_i = dI * I * (1.0 - I)
        da_f = dF * F * (1.0 - F)
        da_g = dG * (1.0 - G**2)
        if o["peephole"]:
            dC_prev += da_i * w_ci + da_f * w_cf
            dw_ci += (da_i * C_prev).sum(axis=0)
            dw_cf += (da_f * C_prev).sum(axis=0)
        da = np.concatenate([da_i, da_f, da_g, da_o], axis=1)  # (B, 4H), GATES order
        if "bias" in grads:
            grads["bias"] += da.sum(axis=0)
        if o["layer_norm"]:
            grads["layernorm_ih_weight"] += (da * s["xhat_x"]).sum(axis=0)
            grads["layernorm_hh_weight"] += (da * s["xhat_h"]).sum(axis=0)
            da_x = _layer_norm_backward(da * p["layernorm_ih_weight"], s["xhat_x"], s["rstd_x"])
            da_h = _layer_norm_backward(da * p["layernorm_hh_weight"], s["xhat_h"], s["rstd_h"])
        else:
            da_x = da_h = da
        grads["weight_ih"] += da_x.T @ s["x"]
        dxs[t] = da_x @ p["weight_ih"]  # (B, 4H) -> (B, I)
        dW_hh += da_h.T @ s["h_in"]
        dh_in = da_h @ W_hh  # (B, 4H) -> (B, P)
        dH_prev += dh_in * masks["recurrent"] if "recurrent" in masks else dh_in
        dH, dC = dH_prev, dC_prev
    grads["weight_hh"] = dW_hh * masks["weight_hh"] if "weight_hh" in masks else dW_hh
    return grads, dxs, (dH, dC)


# ---------------------------------------------------------------------------------------------
# Layers x directions x time, with variants and lengths (what lstmkit.nn.LSTM computes)
# ---------------------------------------------------------------------------------------------


def _reverse_padded(x: np.ndarray, lengths: np.ndarray | None) -> np.ndarray:
    """Flip each sequence of time-major ``x`` (T, B, ...) within its own length; padding stays."""
    if lengths is None:
        return x[::-1].copy()
    out = x.copy()
    for b, n in enumerate(lengths):
        out[:n, b] = x[:n, b][::-1]
    return out


def _layer_params(sd: dict[str, np.ndarray], sfx: str) -> dict[str, np.ndarray]:
    """The arrays of one layer and direction of a torch-named state dict, suffix ``sfx`` removed."""
    p = {}
    for k, v in sd.items():
        m = re.fullmatch(r"(.*)(_l\d+(?:_reverse)?)", k)
        if m is not None and m.group(2) == sfx:
            base = m.group(1)
            if base in ("bias_ih", "bias_hh"):
                p["bias"] = p.get("bias", 0.0) + np.asarray(v)
            else:
                p[base] = np.asarray(v)
    return p


def stack_forward(
    x: np.ndarray,
    state: tuple[np.ndarray, np.ndarray],
    sd: dict[str, np.ndarray],
    num_layers: int,
    bidirectional: bool = False,
    lengths: np.ndarray | None = None,
    masks: dict[int, dict] | None = None,
    **variants,
) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray], dict]:
    """``lstmkit.nn.LSTM`` (time-major, no inter-layer dropout) in NumPy: x (T, B, I) -> (y, (h_n, c_n), cache).

    ``sd`` is the module's ``state_dict`` as NumPy arrays (torch names); ``state`` is (h_0, c_0) of
    shapes (layers * dirs, B, P or H) and (layers * dirs, B, H); ``lengths`` (B,) masks padding
    (padded outputs are zero, each final state is the one at its sequence's last step);
    ``masks[layer * dirs + direction]`` and ``variants`` go to :func:`variant_layer_forward`.
    """
    T = x.shape[0]
    dirs = 2 if bidirectional else 1
    valid = None
    if lengths is not None:
        valid = [(t < np.asarray(lengths))[:, None].astype(x.dtype) for t in range(T)]  # T x (B, 1)
    cache: dict = {"caches": [], "valid": valid, "lengths": lengths, "dirs": dirs, "inputs": []}
    h_n, c_n = [], []
    for layer in range(num_layers):
        cache["inputs"].append(x)
        outs = []
        for d in range(dirs):
            k = layer * dirs + d
            sfx = f"_l{layer}" + ("_reverse" if d else "")
            xd = _reverse_padded(x, lengths) if d else x
            hs, (h, c), lc = variant_layer_forward(
                list(xd), (state[0][k], state[1][k]), _layer_params(sd, sfx), masks=(masks or {}).get(k),
                valid=valid, **variants,
            )  # fmt: skip
            y = np.stack(hs)  # (T, B, P)
            if valid is not None:
                y = y * np.stack(valid)
            outs.append(_reverse_padded(y, lengths) if d else y)
            cache["caches"].append(lc)
            h_n.append(h)
            c_n.append(c)
        x = np.concatenate(outs, axis=2)  # (T, B, D*P)
    return x, (np.stack(h_n), np.stack(c_n)), cache


def stack_backward(
    dy: np.ndarray,
    cache: dict,
    dstate: tuple[np.ndarray | None, np.ndarray | None] = (None, None),
) -> tuple[dict[str, np.ndarray], np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """Gradients of :func:`stack_forward`: (torch-named parameter grads, dx (T, B, I), (dh_0, dc_0))."""
    dirs, valid, lengths = cache["dirs"], cache["valid"], cache["lengths"]
    layers = len(cache["inputs"])
    grads: dict[str, np.ndarray] = {}
    dh0: list = [None] * (layers * dirs)
    dc0: list = [None] * (layers * dirs)
    for layer in reversed(range(layers)):
        x = cache["inputs"][layer]
        dx = np.zeros_like(x)
        douts = np.split(dy, dirs, axis=2)
        for d in range(dirs):
            k = layer * dirs + d
            sfx = f"_l{layer}" + ("_reverse" if d else "")
            dyd = _reverse_padded(douts[d], lengths) if d else douts[d]
            if valid is not None:
                dyd = dyd * np.stack(valid)
            ds = tuple(None if g is None else g[k] for g in dstate)
            g, dxs, (dh, dc) = variant_layer_backward(list(dyd), cache["caches"][k], ds)
            for name, v in g.items():
                if name == "bias":
                    grads["bias_ih" + sfx] = v
                    grads["bias_hh" + sfx] = v.copy()
                else:
                    grads[name + sfx] = v
            dxd = np.stack(dxs)
            dx += _reverse_padded(dxd, lengths) if d else dxd
            dh0[k], dc0[k] = dh, dc
        dy = dx
    return grads, dy, (np.stack(dh0), np.stack(dc0))


# ---------------------------------------------------------------------------------------------
# The seed model: LSTM layer + output layer, d2l calling convention
# ---------------------------------------------------------------------------------------------


def forward(
    inputs: Sequence[np.ndarray],
    state: tuple[np.ndarray, np.ndarray],
    params: Sequence[np.ndarray],
) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray], LayerCache]:
    """:func:`lstm` that also returns the cache for :func:`backward`."""
    p = params_to_dict(params)
    if "W_hq" not in p:
        raise ValueError("forward() needs the output layer: pass all 14 parameters (W_hq, b_q last)")
    hs, state, cache = layer_forward(inputs, state, p)
    outputs = [H @ p["W_hq"] + p["b_q"] for H in hs]  # each (B, Q)
    return np.concatenate(outputs, axis=0), state, cache  # (T*B, Q)


def lstm(
    inputs: Sequence[np.ndarray],
    state: tuple[np.ndarray, np.ndarray],
    params: Sequence[np.ndarray],
) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """The seed LSTM: ``Y, (H, C) = lstm(inputs, (H, C), params)``; Y is (T*B, Q), time-major."""
    Y, state, _ = forward(inputs, state, params)
    return Y, state


def backward(
    dY: np.ndarray,
    cache: LayerCache,
    params: Sequence[np.ndarray],
    dstate: tuple[np.ndarray | None, np.ndarray | None] = (None, None),
) -> tuple[list[np.ndarray], list[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Gradients of :func:`forward` given dLoss/dY (T*B, Q) and optionally dLoss/d(final H, C).

    Returns ``(dparams, dinputs, (dH0, dC0))``: ``dparams`` in :data:`PARAM_NAMES` order.
    """
    p = params_to_dict(params)
    T = len(cache.xs)
    B = cache.xs[0].shape[0]
    dYs = dY.reshape(T, B, -1)  # (T*B, Q) -> (T, B, Q)
    hs = [cache.o[t] * cache.tanh_c[t] for t in range(T)]
    if "W_hr" in cache.p:
        hs = [h @ cache.p["W_hr"] for h in hs]
    dW_hq = sum(h.T @ d for h, d in zip(hs, dYs))
    db_q = dYs.sum(axis=(0, 1))
    dhs = [d @ p["W_hq"].T for d in dYs]
    grads, dxs, dstate0 = layer_backward(dhs, cache, dstate)
    grads["W_hq"], grads["b_q"] = dW_hq, db_q
    return [grads[n] for n in PARAM_NAMES], dxs, dstate0


# ---------------------------------------------------------------------------------------------
# What a NumPy character language model needs
# ---------------------------------------------------------------------------------------------


def one_hot(indices: np.ndarray, size: int, dtype: type = np.float64) -> np.ndarray:
    """(...,) integer indices -> (..., size) one-hot rows."""
    out = np.zeros((*indices.shape, size), dtype)
    np.put_along_axis(out, indices[..., None], 1.0, axis=-1)
    return out


def softmax_cross_entropy(logits: np.ndarray, targets: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean cross-entropy of (N, V) logits against (N,) targets, and its gradient w.r.t. logits."""
    z = logits - logits.max(axis=1, keepdims=True)
    log_probs = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    n = len(targets)
    loss = -log_probs[np.arange(n), targets].mean()
    dlogits = np.exp(log_probs)
    dlogits[np.arange(n), targets] -= 1.0
    return float(loss), dlogits / n


def clip_gradients(grads: Sequence[np.ndarray], max_norm: float) -> float:
    """Scale ``grads`` in place so that their global L2 norm is at most ``max_norm``; return the norm."""
    norm = math.sqrt(sum(float((g**2).sum()) for g in grads))
    if norm > max_norm:
        for g in grads:
            g *= max_norm / norm
    return norm


def sgd(params: Sequence[np.ndarray], grads: Sequence[np.ndarray], lr: float) -> None:
    """Plain stochastic gradient descent, in place."""
    for p, g in zip(params, grads):
        p -= lr * g


def perplexity(mean_nll: float) -> float:
    """exp of the mean negative log-likelihood per token (nats)."""
    return math.exp(min(mean_nll, 700.0))


def generate(
    prefix: str,
    num_chars: int,
    params: Sequence[np.ndarray],
    vocab: Sequence[str],
    temperature: float = 0.0,
    rng: np.random.Generator | None = None,
) -> str:
    """Continue ``prefix`` by ``num_chars`` characters: greedy when temperature is 0, else sampled."""
    index = {ch: k for k, ch in enumerate(vocab)}
    unknown = sorted({ch for ch in prefix if ch not in index})
    if unknown:
        raise ValueError(f"prefix has characters outside the vocabulary: {unknown!r}; use characters of the training text")
    if not prefix:
        raise ValueError("prefix must hold at least one character")
    rng = np.random.default_rng(0) if rng is None else rng
    hidden = params[1].shape[0]
    state = (np.zeros((1, hidden)), np.zeros((1, hidden)))
    V = len(vocab)
    out = [index[ch] for ch in prefix]
    for k in out[:-1]:  # warm the state up on the prefix
        _, state = lstm([one_hot(np.array([k]), V)], state, params)
    for _ in range(num_chars):
        Y, state = lstm([one_hot(np.array([out[-1]]), V)], state, params)
        logits = Y[0]
        if temperature <= 0:
            out.append(int(np.argmax(logits)))
        else:
            z = logits / temperature
            prob = np.exp(z - z.max())
            out.append(int(rng.choice(V, p=prob / prob.sum())))
    return "".join(vocab[k] for k in out)


@dataclass
class CharLMConfig:
    """The NumPy character LM demo; defaults train visibly in a few minutes on one core."""

    hidden: int = 128  # LSTM units; NumPy cost grows as hidden^2
    seq_len: int = 32  # truncated BPTT window, characters
    batch_size: int = 32  # independent streams
    lr: float = 1.0  # SGD step on the per-character mean loss
    clip: float = 1.0  # global gradient-norm bound
    minutes: float = 3.0  # wall-clock training budget
    init_scale: float = 0.1  # N(0, scale^2) weight init
    log_every: int = 50  # windows between progress lines
    seed: int = 0  # RNG seed for init, data order and sampling


def _log(msg: str) -> None:
    print(msg, flush=True)


def train_char_lm(
    text: str, cfg: CharLMConfig, prefix: str | None = None, log=_log
) -> tuple[list[np.ndarray], list[str], list[float]]:
    """Train the seed LSTM as a character LM on ``text`` with NumPy alone.

    The text is cut into ``batch_size`` contiguous streams; windows of ``seq_len`` characters are
    read in order and the state is carried across windows (truncated BPTT). Returns the
    parameters, the vocabulary and the perplexities logged along the way.
    """
    if len(text) < cfg.batch_size * (cfg.seq_len + 1):
        raise ValueError(
            f"text has {len(text)} characters; need at least batch_size * (seq_len + 1) = "
            f"{cfg.batch_size * (cfg.seq_len + 1)}: use a longer text or smaller --batch-size/--seq-len"
        )
    rng = np.random.default_rng(cfg.seed)
    vocab = sorted(set(text))
    index = {ch: k for k, ch in enumerate(vocab)}
    V = len(vocab)
    ids = np.array([index[ch] for ch in text])
    cols = len(ids) // cfg.batch_size
    streams = ids[: cols * cfg.batch_size].reshape(cfg.batch_size, cols).T  # (cols, B)
    params = init_lstm_params(V, cfg.hidden, V, rng, scale=cfg.init_scale)
    params[5][:] = 1.0  # b_f: start with the forget gate open
    state = (np.zeros((cfg.batch_size, cfg.hidden)), np.zeros((cfg.batch_size, cfg.hidden)))
    start = time.perf_counter()
    history: list[float] = []
    pos, step, total_nll, total_n, n_chars = 0, 0, 0.0, 0, 0
    while time.perf_counter() - start < cfg.minutes * 60:
        if pos + cfg.seq_len + 1 > cols:
            pos = 0
            state = (np.zeros_like(state[0]), np.zeros_like(state[1]))
        window = streams[pos : pos + cfg.seq_len + 1]  # (T+1, B)
        xs = [one_hot(window[t], V) for t in range(cfg.seq_len)]  # T x (B, V)
        targets = window[1:].reshape(-1)  # (T*B,) time-major like Y
        Y, state, cache = forward(xs, state, params)
        loss, dY = softmax_cross_entropy(Y, targets)
        grads, _, _ = backward(dY, cache, params)
        clip_gradients(grads, cfg.clip)
        sgd(params, grads, cfg.lr)
        state = (state[0].copy(), state[1].copy())  # carried, but no gradient flows back into it
        pos += cfg.seq_len
        step += 1
        total_nll += loss * len(targets)
        total_n += len(targets)
        n_chars += len(targets)
        if step % cfg.log_every == 0:
            ppl = perplexity(total_nll / total_n)
            history.append(ppl)
            elapsed = time.perf_counter() - start
            log(f"step {step:6d}  perplexity {ppl:8.3f}  {n_chars / elapsed:8.0f} chars/s  {elapsed:6.1f}s")
            total_nll, total_n = 0.0, 0
    if prefix is not None:
        log("sample: " + generate(prefix, 200, params, vocab, temperature=0.7, rng=rng))
    return params, vocab, history


def _default_text() -> Path:
    """A text every Python installation has: the standard library's own ``argparse.py``."""
    return Path(argparse.__file__)


def main(argv: Sequence[str] | None = None, prog: str = "python -m lstmkit.reference") -> int:
    """``python -m lstmkit.reference``: train the NumPy char LM on a text file, print perplexity and a sample."""
    ap = argparse.ArgumentParser(
        prog=prog,
        description="Train the NumPy reference LSTM as a character language model (no torch).",
    )
    ap.add_argument("--data", type=Path, default=None, help="text file (default: the stdlib's argparse.py)")
    ap.add_argument("--prefix", default=None, help="generation prefix (default: the first 10 characters)")
    defaults = CharLMConfig()
    for name, value in vars(defaults).items():
        ap.add_argument("--" + name.replace("_", "-"), type=type(value), default=value)
    args = ap.parse_args(argv)
    path = args.data or _default_text()
    if not path.is_file():
        raise FileNotFoundError(f"--data {path}: no such file; pass a UTF-8 text file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"--data {path} is not UTF-8 text ({e}); convert it or pass another file") from e
    cfg = CharLMConfig(**{k: getattr(args, k) for k in vars(defaults)})
    _log(f"training on {path} ({len(text):,} characters, {len(set(text))} distinct) for {cfg.minutes} min")
    prefix = args.prefix if args.prefix is not None else text[:10]
    train_char_lm(text, cfg, prefix=prefix)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
