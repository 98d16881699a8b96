"""Input checks shared by ``LSTM`` and ``LSTMCell``: each failure is a ``ValueError`` that says what
was expected, what came, and what to do."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["check_lstm_args", "check_cell_args", "check_lengths"]


def _same_place(name: str, t: Tensor, ref: Tensor, ref_name: str) -> None:
    if t.device != ref.device:
        raise ValueError(
            f"{name} is on {t.device} and {ref_name} on {ref.device}; move them to one device (.to(device))"
        )
    if t.dtype != ref.dtype:
        raise ValueError(f"{name} has dtype {t.dtype} and {ref_name} {ref.dtype}; cast one of them (.to(dtype))")


def check_lstm_args(m, input: Tensor, hx, lengths: Tensor | None) -> bool:
    """Check a padded-tensor call of ``lstmkit.nn.LSTM``; returns whether the input is batched."""
    if not isinstance(input, Tensor):
        raise ValueError(f"input must be a torch.Tensor or PackedSequence, got {type(input).__name__}")
    if input.dim() not in (2, 3):
        layout = "(B, T, features)" if m.batch_first else "(T, B, features)"
        raise ValueError(
            f"input must be 3-D {layout} or 2-D (T, features) for one unbatched sequence; "
            f"got {input.dim()}-D with shape {tuple(input.shape)}"
        )
    if not input.is_floating_point():
        raise ValueError(f"input must be a floating-point tensor, got dtype {input.dtype}")
    if input.shape[-1] != m.input_size:
        raise ValueError(
            f"input has {input.shape[-1]} features (last dimension of shape {tuple(input.shape)}) "
            f"but the LSTM was built with input_size={m.input_size}"
        )
    weight = m.weight_ih_l0
    _same_place("input", input, weight, "the LSTM's parameters")
    is_batched = input.dim() == 3
    batch = (input.shape[0] if m.batch_first else input.shape[1]) if is_batched else None
    if hx is not None:
        check_state(m, hx, batch, input)
    if lengths is not None:
        T = (input.shape[1] if m.batch_first else input.shape[0]) if is_batched else input.shape[0]
        check_lengths(lengths, 1 if batch is None else batch, T)
    return is_batched


def check_state(m, hx, batch: int | None, input: Tensor) -> None:
    """``hx = (h_0, c_0)`` of shapes (layers*dirs, B, P or H) and (layers*dirs, B, H), 2-D if unbatched."""
    if not (isinstance(hx, (tuple, list)) and len(hx) == 2 and all(isinstance(t, Tensor) for t in hx)):
        raise ValueError(f"hx must be a tuple (h_0, c_0) of two tensors, got {type(hx).__name__}")
    layers = m.num_layers * (2 if m.bidirectional else 1)
    h_size = m.proj_size if m.proj_size > 0 else m.hidden_size
    lead = (layers,) if batch is None else (layers, batch)
    for name, t, size in (("h_0", hx[0], h_size), ("c_0", hx[1], m.hidden_size)):
        want = (*lead, size)
        if tuple(t.shape) != want:
            what = "unbatched 2-D input" if batch is None else f"batch of {batch}"
            raise ValueError(
                f"{name} must have shape {want} (num_layers*num_directions, "
                f"{'' if batch is None else 'batch, '}{'proj_size or ' if name == 'h_0' else ''}hidden_size) "
                f"for a {what}; got {tuple(t.shape)}"
            )
        _same_place(name, t, input, "input")


def check_lengths(lengths: Tensor, batch: int, T: int) -> None:
    """``lengths``: a 1-D integer tensor of ``batch`` values in [1, T], on any device."""
    if not isinstance(lengths, Tensor):
        raise ValueError(f"lengths must be a 1-D integer torch.Tensor, got {type(lengths).__name__}")
    if lengths.dtype.is_floating_point or lengths.dtype in (torch.bool, torch.complex64, torch.complex128):
        raise ValueError(f"lengths must hold integers (torch.long), got dtype {lengths.dtype}; use lengths.long()")
    if lengths.dim() != 1 or lengths.numel() != batch:
        raise ValueError(f"lengths must be 1-D with one entry per sequence ({batch}), got shape {tuple(lengths.shape)}")
    lo, hi = int(lengths.min()), int(lengths.max())
    if lo < 1 or hi > T:
        raise ValueError(f"lengths must lie in [1, {T}] (the padded length), got values from {lo} to {hi}")


def check_cell_args(m, input: Tensor, hx) -> bool:
    """Check a call of ``lstmkit.nn.LSTMCell``; returns whether the input is batched."""
    if not isinstance(input, Tensor):
        raise ValueError(f"input must be a torch.Tensor, got {type(input).__name__}")
    if input.dim() not in (1, 2):
        raise ValueError(
            f"LSTMCell input must be 2-D (batch, features) or 1-D (features,), got {input.dim()}-D "
            f"with shape {tuple(input.shape)}"
        )
    if input.shape[-1] != m.input_size:
        raise ValueError(f"input has {input.shape[-1]} features but the cell was built with input_size={m.input_size}")
    _same_place("input", input, m.weight_ih, "the cell's parameters")
    is_batched = input.dim() == 2
    if hx is not None:
        if not (isinstance(hx, (tuple, list)) and len(hx) == 2 and all(isinstance(t, Tensor) for t in hx)):
            raise ValueError(f"hx must be a tuple (h_0, c_0) of two tensors, got {type(hx).__name__}")
        want = (input.shape[0], m.hidden_size) if is_batched else (m.hidden_size,)
        for name, t in (("h_0", hx[0]), ("c_0", hx[1])):
            if tuple(t.shape) != want:
                raise ValueError(f"{name} must have shape {want} to match the input, got {tuple(t.shape)}")
            _same_place(name, t, input, "input")
    return is_batched
