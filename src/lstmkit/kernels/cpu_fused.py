"""The compiled CPU kernel for LSTM variants (not built yet: always unavailable, the loop runs)."""

from __future__ import annotations

__all__ = ["why_not", "layer"]


def why_not(proj_size, like) -> str:
    """Why the kernel cannot run a call ('' when it can)."""
    return "the compiled CPU kernel is not built yet"


def layer(*args):
    raise NotImplementedError("the compiled CPU kernel is not built yet")
