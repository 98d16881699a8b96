"""The LSTM variants of ``lstmkit.nn``: options, their extra parameters, their masks, and one step.

Each variant is an option of :class:`~lstmkit.nn.LSTM` and :class:`~lstmkit.nn.LSTMCell`; all of
them compose with each other, with layers, directions, projection and ``lengths``. One step, in the
order applied (``lstmkit.reference.variant_layer_forward`` is the spec, same names):

    a_x   = LN(x_t W_ih^T) * g_ih + b_ih + b_hh          layer_norm (Ba et al. 2016, as haste)
    h_in  = h_{t-1} * m_rec                              recurrent_dropout (Gal & Ghahramani 2016)
    a_h   = LN(h_in (W_hh * m_w)^T) * g_hh               weight_drop (Merity et al. 2017)
    i_t   = sigma(a_i + w_ci * c_{t-1})                  peephole (Gers & Schmidhuber 2000)
    f_t   = sigma(a_f + w_cf * c_{t-1})
    i_t   = 1 - f_t                                      coupled_input_forget (Greff et al. 2017)
    c~_t  = tanh(a_g)
    c'_t  = clip(f_t * c_{t-1} + i_t * c~_t, -v, v)      cell_clip
    o_t   = sigma(a_o + w_co * c'_t)
    h'_t  = o_t * tanh(LN(c'_t) * g_c + b_c)             (then h'_t W_hr^T with proj_size)
    c_t   = z_c * c_{t-1} + (1 - z_c) * c'_t             zoneout (Krueger et al. 2017): z ~ Bernoulli
    h_t   = z_h * h_{t-1} + (1 - z_h) * h'_t             in training, z = rate in evaluation

``forget_bias`` (Jozefowicz et al. 2015) adds a constant to the forget rows of ``bias_ih`` at
initialisation only; it changes no computation, so torch's fused operator still runs.

Extra parameters, per layer ``k`` and direction (suffix ``_l{k}`` / ``_l{k}_reverse`` as torch's own;
an ``LSTMCell`` has no suffix): ``layernorm_ih_weight`` (4H) g_ih, ``layernorm_hh_weight`` (4H) g_hh,
``layernorm_c_weight`` (H) g_c, ``layernorm_c_bias`` (H) b_c (the input and recurrent LNs take
``bias_ih``/``bias_hh`` as their bias, as haste does), and ``weight_ch`` (3H) = (w_ci, w_cf, w_co).
With every variant off a module has exactly ``torch.nn.LSTM``'s parameters, so its ``state_dict``
loads into torch. With ``coupled_input_forget`` the input-gate rows of the weights are kept (so the
layout stays torch's) but unused: their gradient is zero.

Masks of one layer and direction (what :meth:`LSTM.sample_masks` returns, per ``layer * dirs + d``):
``recurrent`` (B, P) and ``weight_hh`` (4H, P), scaled dropout masks (0 or 1/(1-p)), in training
only; ``zoneout_h`` (T, B, P) and ``zoneout_c`` (T, B, H), 1 where the old value is kept.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..kernels.layer_norm import float32_layer_norm

__all__ = ["Variants", "LN_EPS", "input_norm", "variant_step", "sample_masks", "add_variant_params",
           "init_variant_params"]

#: The epsilon of every layer normalisation (``torch.nn.LayerNorm``'s default).
LN_EPS = 1e-5


@dataclass(frozen=True)
class Variants:
    """Which variants a module runs, validated once at construction."""

    layer_norm: bool = False  # LN of input projection, recurrent projection and cell state
    peephole: bool = False  # diagonal peepholes: i, f see c_{t-1}; o sees c_t
    forget_bias: float = 0.0  # added to the forget-gate bias at initialisation
    coupled_input_forget: bool = False  # CIFG: i_t = 1 - f_t
    recurrent_dropout: float = 0.0  # variational dropout on h_{t-1}, one mask per sequence
    zoneout_h: float = 0.0  # zoneout rate of h
    zoneout_c: float = 0.0  # zoneout rate of c
    weight_drop: float = 0.0  # DropConnect on W_hh, one mask per forward
    cell_clip: float | None = None  # clip c_t to [-cell_clip, cell_clip]

    @classmethod
    def build(
        cls,
        *,
        layer_norm: bool = False,
        peephole: bool = False,
        forget_bias: float = 0.0,
        coupled_input_forget: bool = False,
        recurrent_dropout: float = 0.0,
        zoneout: float | tuple[float, float] = 0.0,
        weight_drop: float = 0.0,
        cell_clip: float | None = None,
        bias: bool = True,
    ) -> Variants:
        """Validate the user's options (``zoneout`` is one rate for h and c, or ``(rate_h, rate_c)``)."""
        flags = (("layer_norm", layer_norm), ("peephole", peephole), ("coupled_input_forget", coupled_input_forget))
        for name, v in flags:
            if not isinstance(v, bool):
                raise ValueError(f"{name} must be True or False, got {v!r}")
        if isinstance(zoneout, (tuple, list)):
            if len(zoneout) != 2:
                raise ValueError(f"zoneout must be one rate or a pair (rate_h, rate_c), got {zoneout!r}")
            zh, zc = zoneout
        else:
            zh = zc = zoneout
        for name, r in (("recurrent_dropout", recurrent_dropout), ("zoneout (h)", zh), ("zoneout (c)", zc),
                        ("weight_drop", weight_drop)):  # fmt: skip
            if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0.0 <= r < 1.0:
                raise ValueError(f"{name} must be a rate in [0, 1), got {r!r}")
        if cell_clip is not None:
            if isinstance(cell_clip, bool) or not isinstance(cell_clip, (int, float)) or not cell_clip > 0:
                raise ValueError(f"cell_clip must be a positive number (or None for no clipping), got {cell_clip!r}")
            if math.isinf(cell_clip):
                cell_clip = None
        if isinstance(forget_bias, bool) or not isinstance(forget_bias, (int, float)) or not math.isfinite(forget_bias):
            raise ValueError(f"forget_bias must be a finite number, got {forget_bias!r}")
        if forget_bias != 0.0 and not bias:
            raise ValueError("forget_bias needs the biases: use bias=True or forget_bias=0.0")
        clip = None if cell_clip is None else float(cell_clip)
        return cls(layer_norm, peephole, float(forget_bias), coupled_input_forget, float(recurrent_dropout),
                   float(zh), float(zc), float(weight_drop), clip)  # fmt: skip

    def names(self, training: bool) -> tuple[str, ...]:
        """The variants that change the computation now (dropouts are the identity in evaluation)."""
        on = [
            ("layer_norm", self.layer_norm),
            ("peephole", self.peephole),
            ("coupled_input_forget", self.coupled_input_forget),
            ("recurrent_dropout", training and self.recurrent_dropout > 0),
            ("zoneout", self.zoneout_h > 0 or self.zoneout_c > 0),
            ("weight_drop", training and self.weight_drop > 0),
            ("cell_clip", self.cell_clip is not None),
        ]
        return tuple(n for n, v in on if v)

    def describe(self) -> str:
        """``key=value`` of the options that differ from their defaults (for ``extra_repr``)."""
        parts = []
        for k, d in (("layer_norm", False), ("peephole", False), ("forget_bias", 0.0), ("coupled_input_forget", False),
                     ("recurrent_dropout", 0.0), ("weight_drop", 0.0), ("cell_clip", None)):  # fmt: skip
            if getattr(self, k) != d:
                parts.append(f"{k}={getattr(self, k)!r}")
        if self.zoneout_h or self.zoneout_c:
            parts.append(f"zoneout=({self.zoneout_h!r}, {self.zoneout_c!r})")
        return ", ".join(parts)


def add_variant_params(module: torch.nn.Module, v: Variants, sfx: str, hidden: int, factory: dict) -> None:
    """Register the extra parameters of one layer and direction (names in the module docstring)."""
    if v.layer_norm:
        for name, size in (("layernorm_ih_weight", 4 * hidden), ("layernorm_hh_weight", 4 * hidden),
                           ("layernorm_c_weight", hidden), ("layernorm_c_bias", hidden)):  # fmt: skip
            module.register_parameter(name + sfx, torch.nn.Parameter(torch.empty(size, **factory)))
    if v.peephole:
        module.register_parameter("weight_ch" + sfx, torch.nn.Parameter(torch.empty(3 * hidden, **factory)))


@torch.no_grad()
def init_variant_params(module: torch.nn.Module, v: Variants, sfx: str, hidden: int) -> None:
    """LN gains 1 and biases 0; peepholes U(-1/sqrt(H), 1/sqrt(H)) as torch's weights; forget bias."""
    if v.layer_norm:
        for name in ("layernorm_ih_weight", "layernorm_hh_weight", "layernorm_c_weight"):
            getattr(module, name + sfx).fill_(1.0)
        getattr(module, "layernorm_c_bias" + sfx).zero_()
    if v.peephole:
        k = 1.0 / math.sqrt(hidden) if hidden > 0 else 0.0
        getattr(module, "weight_ch" + sfx).uniform_(-k, k)
    if v.forget_bias:
        getattr(module, "bias_ih" + sfx)[hidden : 2 * hidden] += v.forget_bias  # rows of f in (i, f, g, o)


def sample_masks(
    v: Variants, training: bool, T: int, B: int, hidden: int, h_size: int, like: Tensor, generator=None
) -> dict[str, Tensor]:
    """The masks of one layer and direction for a (T, B) call (shapes in the module docstring)."""
    masks: dict[str, Tensor] = {}
    kw = dict(dtype=like.dtype, device=like.device)

    def bernoulli(shape, p: float) -> Tensor:  # 1 with probability p: rand < p, compared in place (one pass,
        return torch.rand(shape, generator=generator, **kw).lt_(p)  # no bool temporary; ~2x torch.bernoulli)

    def dropout_mask(shape, p: float) -> Tensor:  # (1 - bernoulli(p)) / (1 - p), the same numbers, in place
        return torch.rand(shape, generator=generator, **kw).ge_(p).div_(1.0 - p)

    if training and v.recurrent_dropout > 0:
        masks["recurrent"] = dropout_mask((B, h_size), v.recurrent_dropout)
    if training and v.weight_drop > 0:
        masks["weight_hh"] = dropout_mask((4 * hidden, h_size), v.weight_drop)
    for key, rate, size in (("zoneout_h", v.zoneout_h, h_size), ("zoneout_c", v.zoneout_c, hidden)):
        if rate > 0:
            masks[key] = bernoulli((T, B, size), rate) if training else torch.full((T, B, size), rate, **kw)
    return masks


def input_norm(gx: Tensor, weight: Tensor, eps: float = LN_EPS) -> Tensor:
    """LN(x W_ih^T) g_ih over the gates, all steps at once, computed in float32 at least (as autocast runs layer
    norm: the gain's gradient sums T x B rows), returned in gx's dtype. The torch loop and the kernels' paths
    (which take gx without it) all normalise the input projection so (kernels.layer_norm holds it, and fuses it
    with the bias for the kernels)."""
    return float32_layer_norm(gx, weight, eps)


def input_projection(
    x: Tensor, w_ih: Tensor, bias: Tensor | None, ln_ih: Tensor | None, linear=None
) -> Tensor:
    """``a_x`` for all steps at once: (..., I) -> (..., 4H), one GEMM (+ LN with gain ``ln_ih``).

    ``linear(x, w) = x @ w^T`` may come from a kernel (a faster GEMM); default torch's.
    """
    gx = x @ w_ih.t() if linear is None else linear(x, w_ih)  # (T, B, I) -> (T, B, 4H)
    if ln_ih is not None:
        gx = input_norm(gx, ln_ih)
    if bias is not None:
        gx = gx + bias
    return gx


def variant_step(
    gx_t: Tensor,
    h: Tensor,
    c: Tensor,
    weight_hh: Tensor,
    weight_hr: Tensor | None,
    v: Variants,
    p: dict[str, Tensor | None],
    masks: dict[str, Tensor],
    t: int,
) -> tuple[Tensor, Tensor]:
    """One step with variants, line by line as the module docstring says (``weight_hh`` already masked).

    ``p`` holds the step's extra parameters without suffix (``layernorm_hh_weight``, ...).
    """
    h_in = h * masks["recurrent"] if "recurrent" in masks else h  # (B, P)
    a_h = h_in @ weight_hh.t()  # (B, 4H)
    if v.layer_norm:
        a_h = F.layer_norm(a_h, (a_h.shape[-1],), weight=p["layernorm_hh_weight"], eps=LN_EPS)
    a_i, a_f, a_g, a_o = (gx_t + a_h).chunk(4, dim=1)  # 4 x (B, H)
    if v.peephole:
        w_ci, w_cf, w_co = p["weight_ch"].chunk(3)
        a_i = a_i + w_ci * c
        a_f = a_f + w_cf * c
    f_t = torch.sigmoid(a_f)
    i_t = 1.0 - f_t if v.coupled_input_forget else torch.sigmoid(a_i)
    c_tilde = torch.tanh(a_g)
    c_new = f_t * c + i_t * c_tilde
    if v.cell_clip is not None:
        c_new = c_new.clamp(-v.cell_clip, v.cell_clip)
    if v.peephole:
        a_o = a_o + w_co * c_new
    o_t = torch.sigmoid(a_o)
    n_t = c_new
    if v.layer_norm:
        n_t = F.layer_norm(c_new, (c_new.shape[-1],), p["layernorm_c_weight"], p["layernorm_c_bias"], eps=LN_EPS)
    h_new = o_t * torch.tanh(n_t)
    if weight_hr is not None:
        h_new = h_new @ weight_hr.t()  # (B, H) -> (B, P)
    if "zoneout_h" in masks:
        z = masks["zoneout_h"][t]
        h_new = z * h + (1.0 - z) * h_new
    if "zoneout_c" in masks:
        z = masks["zoneout_c"][t]
        c_new = z * c + (1.0 - z) * c_new
    return h_new, c_new
