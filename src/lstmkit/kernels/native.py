"""torch's fused LSTM operator (cuDNN on GPU, oneDNN/ATen on CPU), called as torch.nn.LSTM calls it.

``lstm`` takes time-major or batch-first padded input, optionally with per-sequence ``lengths``:
then it packs (no sorting is asked of the caller), runs the packed operator, and unpacks, so every
sequence's final state is the one at its own last valid step and padded outputs are zero.
"""

from __future__ import annotations

import torch
from torch import _VF, Tensor
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

__all__ = ["lstm", "lstm_packed", "lstm_cell"]


def lstm(
    input: Tensor,
    hx: tuple[Tensor, Tensor],
    weights: list[Tensor],
    *,
    bias: bool,
    num_layers: int,
    dropout: float,
    training: bool,
    bidirectional: bool,
    batch_first: bool,
    lengths: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """(T, B, I) or (B, T, I) input -> (output, h_n, c_n), exactly ``torch.nn.LSTM``'s numbers."""
    if lengths is None:
        out, h, c = _VF.lstm(input, hx, weights, bias, num_layers, dropout, training, bidirectional, batch_first)
        return out, h, c
    T = input.shape[1] if batch_first else input.shape[0]
    packed = pack_padded_sequence(input, lengths.cpu(), batch_first=batch_first, enforce_sorted=False)
    data, batch_sizes, sorted_idx, unsorted_idx = packed
    hx = (hx[0].index_select(1, sorted_idx), hx[1].index_select(1, sorted_idx))
    out, h, c = lstm_packed(
        data,
        batch_sizes,
        hx,
        weights,
        bias=bias,
        num_layers=num_layers,
        dropout=dropout,
        training=training,
        bidirectional=bidirectional,
    )
    packed_out = packed._replace(data=out)
    out, _ = pad_packed_sequence(packed_out, batch_first=batch_first, total_length=T)
    return out, h.index_select(1, unsorted_idx), c.index_select(1, unsorted_idx)


def lstm_packed(
    data: Tensor,
    batch_sizes: Tensor,
    hx: tuple[Tensor, Tensor],
    weights: list[Tensor],
    *,
    bias: bool,
    num_layers: int,
    dropout: float,
    training: bool,
    bidirectional: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """The packed form: ``data`` (sum of lengths, I) sorted by length, hx in sorted batch order."""
    out, h, c = _VF.lstm(data, batch_sizes, hx, weights, bias, num_layers, dropout, training, bidirectional)
    return out, h, c


def lstm_cell(
    input: Tensor, hx: tuple[Tensor, Tensor], w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None, b_hh: Tensor | None
) -> tuple[Tensor, Tensor]:
    """One step, (B, I) -> (h, c), as ``torch.nn.LSTMCell`` computes it."""
    h, c = torch.lstm_cell(input, hx, w_ih, w_hh, b_ih, b_hh)
    return h, c
