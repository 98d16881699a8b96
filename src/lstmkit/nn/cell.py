"""One LSTM step in torch, line by line as the equations say, and the drop-in ``LSTMCell``.

With gates stacked in lstmkit's order (i, f, g, o) -- ``torch.nn.LSTM``'s -- and ``gx_t`` the input
projection ``x_t W_ih^T + b_ih + b_hh`` computed for all steps at once by the caller:

    i_t  = sigma(gx_i + h_{t-1} W_hi^T)
    f_t  = sigma(gx_f + h_{t-1} W_hf^T)
    c~_t = tanh(gx_g + h_{t-1} W_hg^T)
    o_t  = sigma(gx_o + h_{t-1} W_ho^T)
    c_t  = f_t * c_{t-1} + i_t * c~_t
    h_t  = o_t * tanh(c_t)            (then h_t W_hr^T with a projection)

``LSTMCell`` takes the variants of ``variants.py`` as keyword options (one step of
:func:`~lstmkit.nn.variants.variant_step`). A cell sees one step per call, so the per-sequence
masks (``recurrent_dropout``, ``weight_drop``) are drawn on the first training call and kept until
:meth:`LSTMCell.reset_masks` -- call it at the start of every sequence; zoneout draws per call.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import kernels
from ._checks import check_cell_args
from .variants import Variants, add_variant_params, init_variant_params, input_projection, sample_masks, variant_step

__all__ = ["lstm_step", "LSTMCell"]


def lstm_step(
    gx_t: Tensor, h: Tensor, c: Tensor, weight_hh: Tensor, weight_hr: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """One step from the precomputed input projection ``gx_t`` (B, 4H) and state (h, c) -> (h_t, c_t)."""
    gates = torch.addmm(gx_t, h, weight_hh.t())  # (B, 4H)
    i, f, g, o = gates.chunk(4, dim=1)  # 4 x (B, H)
    i_t = torch.sigmoid(i)
    f_t = torch.sigmoid(f)
    c_tilde = torch.tanh(g)
    o_t = torch.sigmoid(o)
    c_t = f_t * c + i_t * c_tilde
    h_t = o_t * torch.tanh(c_t)
    if weight_hr is not None:
        h_t = h_t @ weight_hr.t()  # (B, H) -> (B, P)
    return h_t, c_t


class LSTMCell(torch.nn.LSTMCell):
    """Drop-in for ``torch.nn.LSTMCell``: same arguments, parameters, ``state_dict`` and results.

    ``impl`` picks the path: ``"auto"`` (torch's fused cell when it covers the call), ``"native"``
    or ``"loop"`` (the readable :func:`lstm_step`). The variants are keyword options as in
    :class:`~lstmkit.nn.LSTM`; their extra parameters carry the same names without suffix.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        device=None,
        dtype=None,
        *,
        impl: str = "auto",
        layer_norm: bool = False,
        peephole: bool = False,
        forget_bias: float = 0.0,
        coupled_input_forget: bool = False,
        recurrent_dropout: float = 0.0,
        zoneout: float | tuple[float, float] = 0.0,
        weight_drop: float = 0.0,
        cell_clip: float | None = None,
    ):
        v = Variants.build(
            layer_norm=layer_norm, peephole=peephole, forget_bias=forget_bias,
            coupled_input_forget=coupled_input_forget, recurrent_dropout=recurrent_dropout, zoneout=zoneout,
            weight_drop=weight_drop, cell_clip=cell_clip, bias=bias,
        )  # fmt: skip
        super().__init__(input_size, hidden_size, bias, device=device, dtype=dtype)
        kernels.select_cell(impl)  # validates impl
        self.impl = impl
        self.variant_config = v
        add_variant_params(self, v, "", hidden_size, {"device": device, "dtype": dtype})
        init_variant_params(self, v, "", hidden_size)
        self._masks: dict | None = None

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if getattr(self, "variant_config", None) is not None:
            init_variant_params(self, self.variant_config, "", self.hidden_size)

    def reset_masks(self) -> None:
        """Forget the per-sequence masks; the next training call draws new ones."""
        self._masks = None

    def variants(self) -> tuple[str, ...]:
        """The features beyond torch's that change this call's computation (see ``LSTM.variants``)."""
        return self.variant_config.names(self.training)

    def extra_repr(self) -> str:
        s = super().extra_repr()
        extra = self.variant_config.describe()
        return f"{s}, {extra}" if extra else s

    def _step_masks(self, batch: int, like: Tensor) -> dict:
        """Per-sequence masks (kept until :meth:`reset_masks` or a new batch size), zoneout per call."""
        v, H = self.variant_config, self.hidden_size
        stale = self._masks is None or ("recurrent" in self._masks and self._masks["recurrent"].shape[0] != batch)
        if self.training and stale:
            seq = sample_masks(v, True, 1, batch, H, H, like)
            self._masks = {k: m for k, m in seq.items() if k in ("recurrent", "weight_hh")}
        masks = dict(self._masks or {}) if self.training else {}
        masks.update({k: m for k, m in sample_masks(v, self.training, 1, batch, H, H, like).items()
                      if k.startswith("zoneout")})  # fmt: skip
        return masks

    def forward(self, input: Tensor, hx: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
        is_batched = check_cell_args(self, input, hx)
        if not is_batched:
            input = input.unsqueeze(0)  # (I,) -> (1, I)
            if hx is not None:
                hx = (hx[0].unsqueeze(0), hx[1].unsqueeze(0))
        if hx is None:
            zeros = input.new_zeros(input.shape[0], self.hidden_size)
            hx = (zeros, zeros)
        kernel = kernels.select_cell(self.impl, self.variants())
        if self.variants():
            p = {n: getattr(self, n, None) for n in ("layernorm_hh_weight", "layernorm_c_weight", "layernorm_c_bias",
                                                     "weight_ch")}  # fmt: skip
            masks = self._step_masks(input.shape[0], input)
            w_hh = self.weight_hh * masks["weight_hh"] if "weight_hh" in masks else self.weight_hh
            bias = self.bias_ih + self.bias_hh if self.bias else None
            gx = input_projection(input, self.weight_ih, bias, getattr(self, "layernorm_ih_weight", None))
            h, c = variant_step(gx, hx[0], hx[1], w_hh, None, self.variant_config, p, masks, 0)
        elif kernel is not None:
            h, c = kernel(input, hx, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)
        else:
            gx = input @ self.weight_ih.t()  # (B, 4H)
            if self.bias:
                gx = gx + self.bias_ih + self.bias_hh
            h, c = lstm_step(gx, hx[0], hx[1], self.weight_hh)
        if not is_batched:
            h, c = h.squeeze(0), c.squeeze(0)
        return h, c
