"""What the per-layer GPU kernels share (``triton_lstm``, ``cluster_lstm``): the loop over layers and directions
(``torch.nn.LSTM``'s stacking, dropout between layers and reversed directions), and the zero padding of a layer's
hidden units up to a size the kernels run (:func:`pad_dim`, :func:`pad_gates`, :func:`pad_recurrent`)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor


def pad_dim(t: Tensor, dim: int, n: int) -> Tensor:
    """``t`` with zeros appended along ``dim`` up to size ``n``."""
    dim = dim % t.dim()
    return F.pad(t, [0, 0] * (t.dim() - 1 - dim) + [0, n - t.shape[dim]])


def pad_gates(t: Tensor, dim: int, H: int, n: int) -> Tensor:
    """A (..., 4H, ...) gate-blocked dimension ``dim`` padded per gate block to 4n: i, f, g, o stay apart."""
    dim = dim % t.dim()
    return pad_dim(t.unflatten(dim, (4, H)), dim + 1, n).flatten(dim, dim + 1)


def pad_recurrent(w_hh: Tensor, n: int) -> Tensor:
    """W_hh (4H, H) padded to (4n, n) in one op: each gate block's rows and the columns (one pad, one
    gradient op, where :func:`pad_gates` then :func:`pad_dim` take two of each)."""
    H = w_hh.shape[1]
    return F.pad(w_hh.unflatten(0, (4, H)), [0, n - H, 0, n - H]).flatten(0, 1)


def run(
    layer: Callable, input: Tensor, hx: tuple[Tensor, Tensor], weights: list[Tensor], *, bias: bool, num_layers: int,
    dropout: float, training: bool, bidirectional: bool, batch_first: bool,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """``layer(x (T, B, I), h0, c0, w_ih, w_hh, b_ih, b_hh) -> (y (T, B, H), h_T, c_T)`` (biases None without
    ``bias``) over ``torch.nn.LSTM``'s ``_flat_weights``, ``hx`` of shape (layers * directions, B, H): (output,
    h_n, c_n) as ``torch.nn.LSTM`` returns them. The reverse direction runs on the time-flipped sequence."""
    x = input.transpose(0, 1) if batch_first else input  # (B, T, I) -> (T, B, I)
    dirs = 2 if bidirectional else 1
    per = 4 if bias else 2
    h_n, c_n = [], []
    for layer_idx in range(num_layers):
        if layer_idx > 0 and dropout > 0 and training:
            x = F.dropout(x, dropout, training=True)
        outs = []
        for d in range(dirs):
            k = layer_idx * dirs + d
            w = weights[k * per : (k + 1) * per]
            xd = x.flip(0) if d == 1 else x
            y, h, c = layer(xd, hx[0][k], hx[1][k], w[0], w[1], w[2] if bias else None, w[3] if bias else None)
            outs.append(y.flip(0) if d == 1 else y)
            h_n.append(h)
            c_n.append(c)
        x = torch.cat(outs, dim=2) if dirs == 2 else outs[0]  # (T, B, D*H)
    out = x.transpose(0, 1) if batch_first else x
    if len(h_n) == 1:  # one layer, one direction: no copy where the layer's h_T, c_T are its own contiguous
        # tensors (a padded layer's are slices: copied once, contiguous as torch.nn.LSTM's, which cuDNN requires)
        return out, h_n[0].contiguous().unsqueeze(0), c_n[0].contiguous().unsqueeze(0)
    return out, torch.stack(h_n), torch.stack(c_n)
