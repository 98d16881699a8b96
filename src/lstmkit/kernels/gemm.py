"""Float32 GEMMs on tensor cores at float32's accuracy (three TF32 products), for the LSTM's large GEMMs.

Around the recurrence an LSTM layer does four GEMMs over all T x B rows at once::

    gx     = x W_ih^T + b        (T*B, I) @ (I, 4H)      forward, the input projection
    dx     = dgx W_ih            (T*B, 4H) @ (4H, I)     backward
    dW_ih  = dgx^T x             (4H, T*B) @ (T*B, I)    backward
    dW_hh  = da^T h_{t-1}        (4H, T*B) @ (T*B, H)    backward

In float32 with TF32 off (torch's default for matmuls, and the issue's 1e-5 bound) cuBLAS computes them with
fp32 FMA, without tensor cores. At (T, B, H) = (128, 256, 1024) each is 275 GFLOP, and together they are about
half of a float32 training call (run 6 on an H200: a 12.6 ms forward of which the recurrence takes 7.4, and a
30.5 ms backward of which it takes 14; docs/gpu.md). ``tl.dot(a, b, input_precision="tf32x3")`` splits each
operand into a TF32 high part and the TF32-rounded rest, and sums three tensor-core products::

    a b ~= a_hi b_hi + a_hi b_lo + a_lo b_hi        (a_lo b_lo, about 2^-22 of a b, is dropped)

close to float32's own rounding (the recurrence kernels' float32 mode already uses it, within the 1e-5 bound).

:func:`mm` is the one entry: on a CUDA device, in float32 with TF32 off, for GEMMs of at least
:data:`MIN_MNK` multiply-adds, it times cuBLAS and each :data:`CONFIGS` tiling of :func:`_mm_kernel` once per
(M, N, K, operand layout, device) and keeps the fastest (:data:`TUNED`); everywhere else it is torch's GEMM.
:func:`linear` is ``F.linear`` with its three GEMMs through :func:`mm`. Under the interpreter (CPU tensors,
:func:`matmul` with ``interpret=True``) the same kernel runs in float32 or float64, for the tests.
``LSTMKIT_GEMM=torch`` turns it off, ``=triton`` takes the first config without timing (checks).

TF32 on (``torch.backends.cuda.matmul.fp32_precision = "tf32"``, or the legacy ``allow_tf32``) means the user
asked for one TF32 product: cuBLAS's is faster, and :func:`tf32_allowed` reads either API. Under autocast
torch's GEMM runs (autocast casts its operands; the kernel would keep float32). Tuning checks each tiling's
result against cuBLAS's before it may be chosen (:data:`TUNE_TOL`).
"""

from __future__ import annotations

import contextlib
import logging
import os

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from . import cuda_autocast_on as _autocast_on

try:
    import triton
    import triton.language as tl

    HAVE_TRITON = True
except ImportError:  # pragma: no cover - exercised only where triton is absent
    triton = tl = None
    HAVE_TRITON = False

__all__ = ["CONFIGS", "MIN_MNK", "TUNED", "compile_ahead", "linear", "matmul", "mm", "tf32_allowed"]

log = logging.getLogger(__name__)

#: GEMMs below this many multiply-adds (M * N * K) stay on cuBLAS: they are launch-bound, and tuning them costs
#: more than it could save. 2^30 is one (256, 4096, 1024) product, the size of one step of (128, 256, 1024).
MIN_MNK = 2**30
#: the tilings tuning times beside cuBLAS: (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages). The ones that spill no
#: register at any of the three operand layouts in their sm_90 builds (triton 3.6, the GPU image's:
#: ``python benchmarks/gemm_compile.py``, docs/gpu_runs/gemm-compile-2026-11-28.md): the tf32x3 split keeps a
#: high and a low part of each operand tile in registers, so 128 x 256 tiles (296-880 bytes), 64 x 128 at 4 warps
#: (up to 104) and BLOCK_K = 64 (up to 304) spill; 128 x 128 at 8 warps does not, strides aligned or not
#: (177-255 registers; triton 3.9 spills 8-24 bytes at BLOCK_K = 32 with A transposed or rows not aligned).
CONFIGS = ((128, 128, 32, 8, 3), (128, 128, 32, 8, 4), (128, 128, 16, 8, 4))
#: "auto" (time and choose), "torch" (never the kernel), "triton" (the kernel with CONFIGS[0], untimed)
MODE = os.environ.get("LSTMKIT_GEMM", "auto")
#: what tuning chose: key -> (choice: "torch" or a CONFIGS entry, {choice: median ms})
TUNED: dict[tuple, tuple] = {}
#: rows of M swizzled together so that consecutive programs share B's column tiles in L2
GROUP_M = 8
#: a tiling whose result is further than this from cuBLAS's fp32 GEMM (||c - c_cublas|| / ||c_cublas||) when
#: tuning times it is never chosen (tf32x3 is about 1e-6 there; the issue's float32 bound is 1e-5)
TUNE_TOL = 1e-5
#: calls per timed sample in tuning: one would count the kernel's Python launch (tens of us) against cuBLAS's
#: lighter one at GEMMs of tens of microseconds
TUNE_CALLS = 3


def tf32_allowed() -> bool:
    """Whether float32 matmuls may use one TF32 product. torch >= 2.9 has ``fp32_precision`` ("tf32", "ieee" or
    "none", the default: no TF32); reading the legacy ``allow_tf32`` after the new API was set raises there."""
    m = torch.backends.cuda.matmul
    p = getattr(m, "fp32_precision", None)
    return bool(m.allow_tf32) if p is None else p == "tf32"


def _mm_kernel(a_ptr, b_ptr, c_ptr, bias_ptr, M, N, K, s_am, s_ak, s_bk, s_bn, s_cm, s_cn,
               HAS_BIAS: tl.constexpr, EVEN_K: tl.constexpr, PRECISION: tl.constexpr, ACC: tl.constexpr,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP: tl.constexpr):  # fmt: skip
    """C (M, N) = A (M, K) @ B (K, N) (+ bias (N)), any strides; one program per BLOCK_M x BLOCK_N tile of C."""
    pid = tl.program_id(0)
    n_m = (M + BLOCK_M - 1) // BLOCK_M  # (tl.cdiv is a jit function: the interpreter cannot call it)
    n_n = (N + BLOCK_N - 1) // BLOCK_N
    per_group = GROUP * n_n  # programs of one group of GROUP row tiles, column-major inside it
    first_m = (pid // per_group) * GROUP
    rows = tl.minimum(n_m - first_m, GROUP)
    pid_m = first_m + (pid % per_group) % rows
    pid_n = (pid % per_group) // rows
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # (BLOCK_M,) rows of C
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,) columns of C
    rk = tl.arange(0, BLOCK_K)
    # rows and columns past the edge read row 0 / column 0 again (in range) and are never stored
    a_rows = tl.where(rm < M, rm, 0)
    b_cols = tl.where(rn < N, rn, 0)
    a_p = a_ptr + a_rows[:, None] * s_am + rk[None, :] * s_ak  # (BLOCK_M, BLOCK_K)
    b_p = b_ptr + rk[:, None] * s_bk + b_cols[None, :] * s_bn  # (BLOCK_K, BLOCK_N)
    acc = tl.full([BLOCK_M, BLOCK_N], 0.0, ACC)  # (tl.zeros: a jit function, as tl.cdiv)
    for k0 in range(0, K, BLOCK_K):
        if EVEN_K:
            a = tl.load(a_p)
            b = tl.load(b_p)
        else:  # the last K tile is partial: zeros past K add nothing
            a = tl.load(a_p, mask=(k0 + rk)[None, :] < K, other=0.0)
            b = tl.load(b_p, mask=(k0 + rk)[:, None] < K, other=0.0)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
        a_p += BLOCK_K * s_ak
        b_p += BLOCK_K * s_bk
    if HAS_BIAS:
        acc += tl.load(bias_ptr + b_cols).to(ACC)[None, :]
    c_p = c_ptr + rm[:, None] * s_cm + rn[None, :] * s_cn
    tl.store(c_p, acc.to(c_ptr.dtype.element_ty), mask=(rm[:, None] < M) & (rn[None, :] < N))


_KERNELS: dict[bool, object] = {}


def _kernel(interpret: bool):
    """The kernel for the GPU (``triton.jit``) or the CPU interpreter, built once each."""
    if interpret not in _KERNELS:
        fn = _mm_kernel
        if interpret:
            from .interpreter import interpreted

            _KERNELS[True] = interpreted(fn)
        else:  # sizes change from call to call; one compiled kernel per layout, not per size
            _KERNELS[False] = triton.jit(fn, do_not_specialize=["M", "N", "K"])
    return _KERNELS[interpret]


def matmul(a: Tensor, b: Tensor, bias: Tensor | None = None, config: tuple = CONFIGS[0],
           interpret: bool | None = None) -> Tensor:  # fmt: skip
    """(M, K) @ (K, N) (+ bias (N)) -> (M, N) in a's dtype on :func:`_mm_kernel`, whatever the strides (a
    transposed view costs no copy). float32: tf32x3 products on a GPU; the interpreter (CPU tensors) takes
    float32 and float64, its products exact in the accumulator's precision."""
    if not HAVE_TRITON:
        raise RuntimeError("lstmkit.kernels.gemm needs triton; install it, or use torch's matmul")
    (M, K), (K2, N) = a.shape, b.shape
    if K2 != K:
        raise ValueError(f"matmul: a is {tuple(a.shape)} and b {tuple(b.shape)}; a's columns must equal b's rows")
    if a.dtype != b.dtype or (bias is not None and (bias.shape != (N,) or bias.dtype != a.dtype)):
        raise ValueError(f"matmul: a {a.dtype}, b {b.dtype}, bias "
                         f"{None if bias is None else (tuple(bias.shape), bias.dtype)}: a, b and the bias need one "
                         f"dtype, and the bias the shape ({N},)")  # fmt: skip
    bias = None if bias is None else bias.contiguous()  # (the kernel reads it with stride 1)
    interpret = a.device.type == "cpu" if interpret is None else interpret
    bm, bn, bk, warps, stages = config
    c = torch.empty(M, N, dtype=a.dtype, device=a.device)
    if M == 0 or N == 0:
        return c
    if K == 0:
        return c.zero_() if bias is None else c.copy_(bias.expand(M, N))
    acc = tl.float64 if a.dtype == torch.float64 else tl.float32
    precision = "ieee" if interpret or a.dtype != torch.float32 else "tf32x3"
    grid = (triton.cdiv(M, bm) * triton.cdiv(N, bn),)
    opts = {} if interpret else {"num_warps": warps, "num_stages": stages}
    with torch.cuda.device(a.device) if a.is_cuda else contextlib.nullcontext():  # (Triton: the current device)
        _kernel(interpret)[grid](
            a, b, c, c if bias is None else bias, M, N, K, a.stride(0), a.stride(1), b.stride(0), b.stride(1),
            c.stride(0), c.stride(1), HAS_BIAS=bias is not None, EVEN_K=K % bk == 0, PRECISION=precision, ACC=acc,
            BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP=GROUP_M, **opts,
        )  # fmt: skip
    return c


def compile_ahead(a_layout: str = "r", b_layout: str = "r", bias: bool = False, config: tuple = CONFIGS[0],
                  arch: int = 90, even_k: bool = True, aligned: bool = True):  # fmt: skip
    """Compile the float32 kernel for sm_``arch`` without a GPU, specialised as a launch with these operand
    layouts ("r" row-major, "c" a transposed view) would be: with strides that are multiples of 16 (``aligned``,
    Triton's JIT then knows it) or not (e.g. 650 input features), and K a multiple of BLOCK_K (``even_k``) or
    not. The check that it builds, and what it asks of registers and shared memory (``.asm["cubin"]``,
    ``.metadata.shared``)."""
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import CUDABackend
    from triton.compiler import ASTSource

    bm, bn, bk, warps, stages = config
    jf = _kernel(False)
    unit = {"s_ak": a_layout == "r", "s_am": a_layout == "c", "s_bn": b_layout == "r", "s_bk": b_layout == "c",
            "s_cn": True}  # fmt: skip
    consts = dict(HAS_BIAS=bias, EVEN_K=even_k, PRECISION="tf32x3", ACC=tl.float32, BLOCK_M=bm, BLOCK_N=bn,
                  BLOCK_K=bk, GROUP=GROUP_M)  # fmt: skip
    consts.update({k: 1 for k, one in unit.items() if one})  # a stride of 1 is a constant in a real launch
    if not bias:
        consts["bias_ptr"] = None
    sig = {a: "constexpr" if a in consts else "*fp32" if a.endswith("_ptr") else "i32" for a in jf.arg_names}
    attrs = {(jf.arg_names.index(a),): CUDABackend.parse_attr("D")  # aligned pointers, strides divisible by 16
             for a, kind in sig.items()
             if kind != "constexpr" and a not in ("M", "N", "K") and (aligned or kind.startswith("*"))}  # fmt: skip
    cx = {(jf.arg_names.index(k),): v for k, v in consts.items()}
    src = ASTSource(fn=jf, signature=sig, constexprs=cx, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": warps, "num_stages": stages})


def _layout(t: Tensor) -> str:
    """"r" row-major, "c" column-major (a transposed view), "s" neither (strided: torch copies it anyway)."""
    return "r" if t.stride(1) == 1 else "c" if t.stride(0) == 1 else "s"


def _span(t: Tensor) -> int:
    """The largest element offset a 2-D view reaches from its first element (its strides, not its size)."""
    return sum((n - 1) * abs(st) for n, st in zip(t.shape, t.stride(), strict=True))


def _considered(t: Tensor, other: Tensor, M: int, N: int, K: int) -> bool:
    """Whether an (M, N, K) GEMM of ``t`` and ``other`` may run on the kernel at all (then tuning decides):
    CUDA, float32 both, TF32 off, no autocast, at least :data:`MIN_MNK`, every offset within int32 (``t`` and
    ``other`` as the kernel reads them: 2-D; the output is M x N)."""
    return (
        MODE != "torch" and HAVE_TRITON and t.is_cuda and t.dtype == other.dtype == torch.float32
        and M * N * K >= MIN_MNK and not tf32_allowed() and not _autocast_on()
        and M * N < 2**31 and _span(t) < 2**31 and _span(other) < 2**31
    )  # fmt: skip


def _torch_mm(a: Tensor, b: Tensor, bias: Tensor | None) -> Tensor:
    return a @ b if bias is None else torch.addmm(bias, a, b)


def _time(fn, device: torch.device) -> float:
    """Milliseconds of one call of ``fn``: the recurrence tuning's median (CUDA events on a GPU, after an untimed
    call), each sample :data:`TUNE_CALLS` calls back to back."""
    from .triton_lstm import _time_launch  # (triton_lstm imports this module)

    return _time_launch(lambda: [fn() for _ in range(TUNE_CALLS)], device) / TUNE_CALLS


def _bucket(n: int) -> int:
    """The power of two at or above ``n``: GEMMs whose sizes fall in one bucket share a tuning (a language
    model's last, shorter batch does not tune again)."""
    return 1 << max(n - 1, 0).bit_length()


def _choice(a: Tensor, b: Tensor, bias: Tensor | None):
    """"torch" or the CONFIGS entry this GEMM runs with: measured once per key on this device, each tiling's
    result checked against cuBLAS's (a tiling that fails to build or run, or misses :data:`TUNE_TOL`, is no
    choice). The key: the sizes' power-of-two buckets, the operand layouts, the bias, the device."""
    if MODE == "triton":
        return CONFIGS[0]
    M, K = a.shape
    key = (_bucket(M), _bucket(b.shape[1]), _bucket(K), _layout(a), _layout(b), bias is not None, a.device.index)
    if key not in TUNED:
        ref = _torch_mm(a, b, bias)
        scale = ref.norm().item()
        times, errors = {"torch": _time(lambda: _torch_mm(a, b, bias), a.device)}, {}
        for cfg in CONFIGS:
            try:
                err = (matmul(a, b, bias, cfg) - ref).norm().item() / max(scale, 1e-30)
                errors[cfg] = err
                if not err <= TUNE_TOL:  # (NaN too)
                    raise ArithmeticError(f"relative error {err:.2e} against cuBLAS, bound {TUNE_TOL:.0e}")
                times[cfg] = _time(lambda cfg=cfg: matmul(a, b, bias, cfg), a.device)
            except Exception as e:  # a tiling this device cannot compile, launch or get right is no choice
                times[cfg] = float("inf")
                log.warning("gemm: tiling %s refused at %s: %s: %s", cfg, key, type(e).__name__, e)
        TUNED[key] = (min(times, key=times.get), times, errors)
        log.info("gemm %s: %s (ms: %s; errors against cuBLAS: %s)", key, TUNED[key][0], times, errors)
    return TUNED[key][0]


def mm(a: Tensor, b: Tensor, bias: Tensor | None = None) -> Tensor:
    """``a @ b`` (+ ``bias``) for 2-D tensors: the tf32x3 kernel where :func:`_considered` and tuning say it is
    faster, else torch's GEMM."""
    (M, K), N = a.shape, b.shape[1]
    if torch.is_grad_enabled() and (a.requires_grad or b.requires_grad or (bias is not None and bias.requires_grad)):
        return _torch_mm(a, b, bias)  # (no autograd here: :func:`linear` is the differentiable entry)
    if _considered(a, b, M, N, K):
        choice = _choice(a, b, bias)
        if choice != "torch":
            return matmul(a, b, bias, choice)
    return _torch_mm(a, b, bias)


class _Linear(torch.autograd.Function):
    """y = x W^T (+ b), x (M, K), W (N, K): forward and both gradients through :func:`mm`."""

    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor, b: Tensor | None):
        ctx.save_for_backward(x, w)
        ctx.has_bias = b is not None
        return mm(x, w.t(), b)  # (M, K) @ (K, N) -> (M, N)

    @staticmethod
    @once_differentiable
    def backward(ctx, dy: Tensor):
        x, w = ctx.saved_tensors
        dx = mm(dy, w) if ctx.needs_input_grad[0] else None  # (M, N) @ (N, K) -> (M, K)
        dw = mm(dy.t(), x) if ctx.needs_input_grad[1] else None  # (N, M) @ (M, K) -> (N, K)
        db = dy.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None  # (N,)
        return dx, dw, db


def linear(x: Tensor, w: Tensor, b: Tensor | None = None) -> Tensor:
    """``F.linear(x, w, b)``, x (..., K) -> (..., N), with its GEMMs through :func:`mm` where that can matter
    (CUDA, float32, TF32 off, at least :data:`MIN_MNK`); exactly ``F.linear`` elsewhere."""
    M = x.numel() // max(x.shape[-1], 1)
    if x.dim() < 2 or (b is not None and (b.dtype != x.dtype or b.shape != (w.shape[0],))):
        return F.linear(x, w, b)  # (torch's own rules and errors for anything unusual)
    x2 = x.reshape(M, x.shape[-1])  # (M, K), a view where x allows it
    if not _considered(x2, w, M, w.shape[0], w.shape[1]):
        return F.linear(x, w, b)
    y = _Linear.apply(x2, w, b)  # (M, K) -> (M, N)
    return y.view(*x.shape[:-1], w.shape[0])
