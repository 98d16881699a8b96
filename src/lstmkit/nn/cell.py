"""One LSTM step in torch, line by line as the equations say, and the drop-in ``LSTMCell``.

With gates stacked in lstmkit's order (i, f, g, o) -- ``torch.nn.LSTM``'s -- and ``gx_t`` the input
projection ``x_t W_ih^T + b_ih + b_hh`` computed for all steps at once by the caller:

    i_t  = sigma(gx_i + h_{t-1} W_hi^T)
    f_t  = sigma(gx_f + h_{t-1} W_hf^T)
    c~_t = tanh(gx_g + h_{t-1} W_hg^T)
    o_t  = sigma(gx_o + h_{t-1} W_ho^T)
    c_t  = f_t * c_{t-1} + i_t * c~_t
    h_t  = o_t * tanh(c_t)            (then h_t W_hr^T with a projection)
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import kernels
from ._checks import check_cell_args

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
    or ``"loop"`` (the readable :func:`lstm_step`).
    """

    def __init__(
        self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None, *, impl: str = "auto"
    ):
        super().__init__(input_size, hidden_size, bias, device=device, dtype=dtype)
        kernels.select_cell(impl)  # validates impl
        self.impl = impl

    def variants(self) -> tuple[str, ...]:
        """The features beyond torch's switched on (none yet)."""
        return ()

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
        if kernel is not None:
            h, c = kernel(input, hx, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)
        else:
            gx = input @ self.weight_ih.t()  # (B, 4H)
            if self.bias:
                gx = gx + self.bias_ih + self.bias_hh
            h, c = lstm_step(gx, hx[0], hx[1], self.weight_hh)
        if not is_batched:
            h, c = h.squeeze(0), c.squeeze(0)
        return h, c
