"""The compiled CPU kernel for LSTM variants: one layer and direction, the time loop in C++.

Why C++: on the CPU a step of a small LSTM costs a few microseconds of arithmetic, while a Python
loop of ~20 torch ops per step costs ~20 dispatches forward and as many autograd nodes backward;
that overhead, not arithmetic, is what made the hand-written loop 2-7x slower than oneDNN. So the
whole time loop runs in ``csrc/lstm_variants.cpp`` (ATen, no Python per step): per step one GEMM
for the recurrent projection and ONE fused pass over each batch row (layer norm, gates, cell, zoneout,
padding); backward the same in reverse, with the weight gradients formed after the loop by one GEMM
over all steps. The input projection of all steps (one GEMM, and its layer norm) stays in torch.

Threads: with more than one torch thread and a batch of >= 4 rows per thread, the rows are split
across threads for the whole time loop (rows never interact), each thread running its own
single-threaded GEMMs and row passes, inside ONE OpenMP parallel region per layer call, as oneDNN's
RNN primitive does. Smaller batches (B = 1) with H >= 64 split W_hh's output units instead, each
thread a GEMV on its own part of the weight (which then stays in its core's L2), with two barriers
per step and the fused pass on one thread. Both need the extension built with ``-fopenmp``, against
torch's own OpenMP runtime (libgomp, resolved through libtorch); where torch has no OpenMP, or the
compiler fails with it, it is built without, and runs each layer on one thread plus parallel GEMMs.

The extension is JIT-compiled by ``torch.utils.cpp_extension.load`` on first use (needs a C++
compiler and ``ninja``) and cached in torch's extension directory (``TORCH_EXTENSIONS_DIR``), so
later processes only load it. If compiling fails, or ``LSTMKIT_NO_COMPILE=1`` is set, the kernel
reports itself unavailable (one logged warning) and ``lstmkit.nn`` runs its pure-torch loop.

Covered: CPU, float32/float64, no projection; every variant; ``lengths`` (as a padding mask).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["why_not", "available", "load", "layer", "linear", "LayerFunction", "LinearFunction", "SOURCE"]

log = logging.getLogger(__name__)

#: The C++ source of the kernel.
SOURCE = Path(__file__).with_name("csrc") / "lstm_variants.cpp"
_NAME = "lstmkit_cpu_fused"
#: Compiled for the machine that runs it (the build is local and cached per machine user).
CFLAGS_SERIAL = ["-O3", "-march=native", "-fno-math-errno", "-fopenmp-simd"]  # simd: vectorised LN sums
#: With OpenMP (the batch split across threads), where torch's own threads are OpenMP's.
CFLAGS = CFLAGS_SERIAL[:-1] + ["-fopenmp"] if torch.backends.openmp.is_available() else CFLAGS_SERIAL
_state: dict = {"ops": None, "error": None, "seconds": None}
_lock = threading.Lock()


def load() -> object:
    """Compile (first time) and load the extension; return ``torch.ops.lstmkit_cpu``. Raises on failure."""
    with _lock:
        if _state["ops"] is not None:
            return _state["ops"]
        if _state["error"] is not None:
            raise RuntimeError(_state["error"])
        try:
            if os.environ.get("LSTMKIT_NO_COMPILE", "") not in ("", "0"):
                raise RuntimeError("LSTMKIT_NO_COMPILE is set")
            from torch.utils import cpp_extension

            venv_bin = str(Path(sys.executable).parent)  # ninja installed next to python, venv not activated
            if venv_bin not in os.environ.get("PATH", "").split(os.pathsep):
                os.environ["PATH"] = os.environ.get("PATH", "") + os.pathsep + venv_bin
            t0 = time.perf_counter()
            try:
                cpp_extension.load(
                    name=_NAME, sources=[str(SOURCE)], extra_cflags=CFLAGS, is_python_module=False, verbose=False
                )
            except Exception as e:  # a compiler without OpenMP: build the single-region kernel instead
                if CFLAGS == CFLAGS_SERIAL:
                    raise
                log.warning("building %s with OpenMP failed (%s); building it without", _NAME, str(e)[:200])
                cpp_extension.load(
                    name=_NAME, sources=[str(SOURCE)], extra_cflags=CFLAGS_SERIAL, is_python_module=False,
                    verbose=False,
                )  # fmt: skip
            _state["seconds"] = time.perf_counter() - t0
            log.debug("loaded %s in %.1f s", _NAME, _state["seconds"])
            _state["ops"] = torch.ops.lstmkit_cpu
        except Exception as e:  # any compiler / loader failure: fall back, say so once
            _state["error"] = f"the compiled CPU kernel is unavailable ({type(e).__name__}: {str(e)[:500]})"
            log.warning("%s; LSTM variants run the pure-torch loop instead (slower)", _state["error"])
            raise RuntimeError(_state["error"]) from e
        return _state["ops"]


def available() -> bool:
    """Whether the extension is (or can be) compiled and loaded; compiles on first call."""
    try:
        load()
        return True
    except RuntimeError:
        return False


def why_not(proj_size: int = 0, like: Tensor | None = None) -> str:
    """Why the kernel cannot run a call ('' when it can): device, dtype, projection or no compiler."""
    if proj_size > 0:
        return "proj_size > 0 is not covered by the compiled CPU kernel"
    if like is not None:
        if like.device.type != "cpu":
            return f"the compiled kernel runs on the CPU, the parameters are on {like.device}"
        if like.dtype not in (torch.float32, torch.float64):
            return f"the compiled kernel runs float32/float64, the parameters are {like.dtype}"
    if not available():
        return _state["error"]
    return ""


class LayerFunction(torch.autograd.Function):
    """autograd for one layer and direction: (gx, h0, c0, w_hh, LN gains, peepholes; masks) -> (y, h_n, c_n)."""

    @staticmethod
    def forward(ctx, gx, h0, c0, w_hh, ln_hh, ln_c_w, ln_c_b, w_ch, ln_ih, bias, rec, zh, zc, valid, cifg, clip, eps):
        ops = load()
        save = any(ctx.needs_input_grad[:10])
        outs = ops.forward(gx, h0, c0, w_hh, ln_hh, ln_c_w, ln_c_b, w_ch, rec, zh, zc, valid, ln_ih, bias, cifg, clip,
                           eps, save)  # fmt: skip
        y, h_n, c_n = outs[0], outs[1], outs[2]
        if save:
            ctx.save_for_backward(h0, y, w_hh, ln_hh, ln_c_w, ln_c_b, w_ch, ln_ih, rec, zh, zc, valid, *outs[3:])
            ctx.flags = (cifg, clip, bias is not None)
        return y, h_n, c_n

    @staticmethod
    def backward(ctx, dy, dh_n, dc_n):
        h0, y, w_hh, ln_hh, ln_c_w, ln_c_b, w_ch, ln_ih, rec, zh, zc, valid, *saved = ctx.saved_tensors
        dy = torch.zeros_like(y) if dy is None else dy.contiguous()
        dh_n = torch.zeros_like(h0) if dh_n is None else dh_n.contiguous()
        dc_n = torch.zeros_like(h0) if dc_n is None else dc_n.contiguous()
        cifg, clip, with_bias = ctx.flags
        g = load().backward(dy, dh_n, dc_n, h0, y, w_hh, ln_hh, ln_c_w, ln_c_b, w_ch, rec, zh, zc, valid, ln_ih,
                            with_bias, cifg, clip, saved)  # fmt: skip
        dgx, dh0, dc0, dw_hh, dln_hh, dln_cw, dln_cb, dw_ch, dln_ih, dbias = g
        return dgx, dh0, dc0, dw_hh, dln_hh, dln_cw, dln_cb, dw_ch, dln_ih, dbias, *([None] * 7)


class LinearFunction(torch.autograd.Function):
    """``x @ w^T`` (x (M, K), w (N, K)) with the kernel's GEMM (oneDNN for float32) forward and backward."""

    @staticmethod
    def forward(ctx, x, w):
        ctx.save_for_backward(x, w)
        return load().linear(x, w)

    @staticmethod
    def backward(ctx, dy):
        x, w = ctx.saved_tensors
        lin = load().linear
        dx = lin(dy, w.t()) if ctx.needs_input_grad[0] else None  # (M, N) @ (N, K)
        dw = load().mm_tn(dy, x) if ctx.needs_input_grad[1] else None  # (N, M) @ (M, K), no transposed copies
        return dx, dw


def linear(x: Tensor, w: Tensor) -> Tensor:
    """(..., K) @ w^T -> (..., N) through :class:`LinearFunction`."""
    y = LinearFunction.apply(x.reshape(-1, x.shape[-1]), w)  # (M, K) -> (M, N)
    return y.view(*x.shape[:-1], w.shape[0])


def layer(
    gx: Tensor,
    h0: Tensor,
    c0: Tensor,
    w_hh: Tensor,
    v,
    p: dict[str, Tensor | None],
    masks: dict[str, Tensor],
    valid: Tensor | None,
    eps: float = 1e-5,
) -> tuple[Tensor, Tensor, Tensor]:
    """One layer and direction: gx (T, B, 4H), h0/c0 (B, H), w_hh (4H, H) effective -> (y (T, B, H), h_n, c_n).

    ``gx`` is ``x W_ih^T`` (no bias, no layer norm: the kernel applies ``p["layernorm_ih_weight"]``
    and adds ``p["bias"]`` = b_ih + b_hh itself). ``v`` holds the switched-on variants
    (``layer_norm``, ``peephole``, ``coupled_input_forget``, ``cell_clip``), ``p`` their parameters
    by name, ``masks`` the step's masks (``recurrent``, ``zoneout_h``, ``zoneout_c``), ``valid``
    (T, B, 1) bool where t < length. ``y`` is the carried state (padding not zeroed).
    """
    c = lambda t: None if t is None else t.contiguous()  # noqa: E731
    ln = v.layer_norm
    vm = None if valid is None else valid.reshape(valid.shape[0], valid.shape[1]).to(gx.dtype).contiguous()
    clip = float(v.cell_clip) if v.cell_clip is not None else -1.0
    return LayerFunction.apply(
        gx.contiguous(), h0.contiguous(), c0.contiguous(), w_hh.contiguous(),
        c(p.get("layernorm_hh_weight")) if ln else None, c(p.get("layernorm_c_weight")) if ln else None,
        c(p.get("layernorm_c_bias")) if ln else None, c(p.get("weight_ch")) if v.peephole else None,
        c(p.get("layernorm_ih_weight")) if ln else None, c(p.get("bias")),
        c(masks.get("recurrent")), c(masks.get("zoneout_h")), c(masks.get("zoneout_c")), vm,
        bool(v.coupled_input_forget), clip, float(eps),
)  # fmt: skip


layer.per_layer = True  # type: ignore[attr-defined]  # the module's loop over layers/directions calls it
layer.linear = linear  # type: ignore[attr-defined]  # and computes the input projection with this GEMM
layer.fuses_input_norm = True  # type: ignore[attr-defined]  # gx without bias and LN: the kernel adds them
