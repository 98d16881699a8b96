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
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "GATES",
    "PARAM_NAMES",
    "LayerCache",
    "init_lstm_params",
    "lstm",
    "forward",
    "backward",
    "layer_forward",
    "layer_backward",
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
) -> list[np.ndarray]:
    """The 14 parameters in :data:`PARAM_NAMES` order: weights N(0, scale^2), biases zero."""
    rng = np.random.default_rng(0) if rng is None else rng

    def normal(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(dtype)

    def three() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return normal(num_inputs, num_hiddens), normal(num_hiddens, num_hiddens), np.zeros(num_hiddens, dtype)

    W_xi, W_hi, b_i = three()  # input gate
    W_xf, W_hf, b_f = three()  # forget gate
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
