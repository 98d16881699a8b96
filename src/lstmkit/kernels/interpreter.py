"""Triton's interpreter (CPU tensors: the kernels' tests and replays), made to round to bfloat16 as the GPU does.

On an NVIDIA GPU, Triton converts float32 to bfloat16 rounding to nearest, ties to even (``cvt.rn.bf16.f32``),
as torch's ``.to(torch.bfloat16)`` does. Triton's interpreter (3.6 and 3.9, ``InterpreterBuilder.cast_impl``)
cuts the low 16 bits instead: rounding toward zero, for every store of a float32 value to a bfloat16 tensor and
every ``.to(tl.bfloat16)`` with the default or the "rtne" rounding mode ("rtz" asks for toward zero: kept).
Toward zero is twice the error of nearest and always in one direction, so over a recurrence the interpreter's
bf16 runs drift from what the GPU computes (at 2.6048: the interpreter stores 2.59375, the GPU 2.609375).
:func:`install` replaces that conversion, for this process's interpreter runs only, with round-to-nearest-even
(float64 to bfloat16 too, by way of float32, where Triton's own gives NaN); our kernels call it before they
build an interpreted kernel. It checks itself on known values and leaves the interpreter as it was (with a
warning) where its internals differ from what it expects. float16 was right already (numpy rounds to nearest).
"""

from __future__ import annotations

import logging

import numpy as np

__all__ = ["install", "interpreted", "rtne_bf16_bits", "uninstall"]

log = logging.getLogger(__name__)

_STATE: dict = {}


def rtne_bf16_bits(x: np.ndarray) -> np.ndarray:
    """The bfloat16 bit patterns (uint16) nearest to float32 values, ties to even; NaN stays NaN (quiet)."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    out = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)  # (carries into the exponent: inf)
    nan = np.isnan(np.asarray(x, dtype=np.float32))
    if nan.any():
        out[nan] = ((bits[nan] >> 16) | 0x40).astype(np.uint16)
    return out


def install() -> bool:
    """Make this process's Triton interpreter round float32 -> bfloat16 to nearest even. Idempotent; returns
    whether the interpreter now rounds so (False: Triton absent or its interpreter not as expected)."""
    if "ok" in _STATE:
        return _STATE["ok"]
    try:
        import triton.language as tl
        from triton.runtime import interpreter as ti

        builder = ti.InterpreterBuilder
        original = builder.cast_impl

        def cast_impl(self, src, dst_type):
            if src.dtype.scalar in (tl.float32, tl.float64) and dst_type.scalar == tl.bfloat16:
                # (float64: once to float32, nearest, then to bfloat16; Triton's own cast gives NaN from it)
                data = rtne_bf16_bits(np.asarray(src.data, dtype=np.float32)).reshape(np.shape(src.data))
                return ti.TensorHandle(data.view(ti._get_np_dtype(dst_type)), dst_type.scalar)
            return original(self, src, dst_type)

        builder.cast_impl = cast_impl
        _STATE["original"] = original
        probe = np.array([2.6048, -1.8188, 1.00390625, 1.01171875], dtype=np.float32)  # (the last two: ties)
        # through the builder's own float truncation (what a store or .to(tl.bfloat16) calls), on an instance
        got = builder.__new__(builder).create_fp_trunc(ti.TensorHandle(probe, tl.float32), tl.bfloat16).data
        want = np.array([0x4027, 0xBFE9, 0x3F80, 0x3F82], dtype=np.uint16)  # 2.609375, -1.8203125, 1.0, 1.015625
        if not np.array_equal(got.view(np.uint16), want):
            builder.cast_impl = original
            raise RuntimeError(f"probe gave {got.view(np.uint16)}, want {want}")
        _STATE["ok"] = True
    except Exception as e:  # an interpreter of another shape: leave it be, say so once
        log.warning("Triton's interpreter keeps rounding bfloat16 toward zero (%s: %s)", type(e).__name__, e)
        _STATE["ok"] = False
    return _STATE["ok"]


def uninstall() -> None:
    """Triton's own rounding back, for the rest of this process (later :func:`install` calls leave it so): a
    replay that shows what the interpreter computed before (``ln_case_replay.py --interpreter-rounding``)."""
    original = _STATE.pop("original", None)
    if original is not None:
        from triton.runtime import interpreter as ti

        ti.InterpreterBuilder.cast_impl = original
    _STATE["ok"] = False


def interpreted(fn, names: dict | None = None):
    """``fn`` (a kernel's plain Python function) for Triton's interpreter, rounding bfloat16 as the GPU does.
    ``names``: the globals its body sees (default: its module's; ``triton_lstm`` gives a copy whose jit helpers
    are interpreted too)."""
    import types

    from triton.runtime.interpreter import InterpretedFunction

    install()
    g = fn.__globals__ if names is None else names
    return InterpretedFunction(types.FunctionType(fn.__code__, g, fn.__name__, fn.__defaults__))
