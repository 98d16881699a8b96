"""Fast LSTM paths, and the one place that chooses between them.

``lstmkit.nn`` asks :func:`select_lstm` / :func:`select_cell` which kernel runs a call; ``None``
means "no kernel covers this configuration", and the module falls back to its readable pure-torch
loop. Today's kernels:

* ``native``: torch's fused operator (``torch._VF.lstm``): cuDNN on GPU, oneDNN/ATen on CPU. It
  covers everything ``torch.nn.LSTM`` does, plus padded batches with ``lengths`` (by packing).

Kernels never import ``lstmkit.nn`` or ``lstmkit.tasks``.
"""

from __future__ import annotations

from collections.abc import Callable

from . import native

__all__ = ["IMPLS", "select_lstm", "select_cell", "native"]

#: What a user may ask for with ``impl=``: ``auto`` (fastest that covers the call), ``native``
#: (fail unless the fused operator covers it) or ``loop`` (always the readable pure-torch path).
IMPLS = ("auto", "native", "loop")


def _check_impl(impl: str) -> None:
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")


def select_lstm(impl: str, variants: tuple[str, ...] = ()) -> Callable | None:
    """The kernel that runs a whole-sequence call, or None for the pure-torch loop.

    ``variants`` names the features beyond ``torch.nn.LSTM`` that are switched on (none yet has
    a native kernel).
    """
    _check_impl(impl)
    if impl == "loop":
        return None
    if variants:
        if impl == "native":
            raise ValueError(
                f"impl='native' runs only what torch.nn.LSTM supports, but {', '.join(variants)} "
                "is switched on; use impl='auto' or 'loop'"
            )
        return None
    return native.lstm


def select_cell(impl: str, variants: tuple[str, ...] = ()) -> Callable | None:
    """The kernel that runs one step of an ``LSTMCell``, or None for the pure-torch cell."""
    _check_impl(impl)
    if impl == "loop":
        return None
    if variants:
        if impl == "native":
            raise ValueError(
                f"impl='native' runs only what torch.nn.LSTMCell supports, but {', '.join(variants)} "
                "is switched on; use impl='auto' or 'loop'"
            )
        return None
    return native.lstm_cell
