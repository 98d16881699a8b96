"""Layer norm of the input projection, fused with its gain, the bias and the dtype casts, in Triton.

The layer-norm LSTM normalises the input projection over its 4H gates before the bias (nn.variants, the spec:
``lstmkit.reference.variant_layer_forward``)::

    a_x = LN(x W_ih^T) * g_ih + b          LN(v) = (v - mean(v)) / sqrt(var(v) + eps), over the 4H gates

``nn.variants.input_norm`` computes it in float32 whatever the input dtype (as autocast runs layer norm: the
gain's gradient sums T x B rows), which in torch is four kernels forward (cast up, layer norm, cast down, add
the bias) and more backward, each a pass over the (T, B, 4H) projection: at (128, 256, 1024) in bf16 about
0.7 ms of a 5 ms forward (run 6, docs/gpu.md, by subtraction). torch's CUDA layer norm takes no bf16 input
with a float32 gain. Here one kernel reads gx once and writes a_x once (statistics and arithmetic in float32,
each tensor in its own dtype), and the backward is one kernel plus a sum of per-program partials for the gain
and the bias. :func:`input_norm` runs it on CUDA (and, for the tests, on CPU tensors in Triton's interpreter
with ``interpret=True``); elsewhere, or for rows over :data:`MAX_N` values, torch's composite.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

try:
    import triton
    import triton.language as tl

    HAVE_TRITON = True
except ImportError:  # pragma: no cover - exercised only where triton is absent
    triton = tl = None
    HAVE_TRITON = False

__all__ = ["MAX_N", "float32_layer_norm", "input_norm"]

#: the longest row one program holds in registers (4H = 8192: H up to 2048); longer rows run torch's composite.
#: The sm_90 builds (triton 3.6) spill nothing up to here (the backward at 8 warps: 220-244 registers) and
#: 256-1224 bytes at 16384 (16 warps, 128 registers each; ``benchmarks/gemm_compile.py``).
MAX_N = 8192
#: the most rows one backward program handles (its gain and bias partials are summed over them before one
#: store): fewer where that leaves under PROGRAMS_PER_SM programs a multiprocessor (a short call's 700 rows
#: would otherwise be 11 programs, each 64 rows after one another)
ROWS_PER_PROGRAM = 64
PROGRAMS_PER_SM = 2


def _add(a, b):  # tl.reduce's combine function (tl.sum is a jit function Triton's interpreter cannot call)
    return a + b


if HAVE_TRITON:
    _add = triton.jit(_add)


def _fwd_kernel(x_ptr, w_ptr, b_ptr, y_ptr, mean_ptr, rstd_ptr, N, eps, HAS_BIAS: tl.constexpr,
                ACC: tl.constexpr, BLOCK_N: tl.constexpr):  # fmt: skip
    """One row: y = (x - mean) * rstd * w (+ b) in ACC (float32; float64 in the tests), stored in y's dtype;
    mean and rstd kept."""
    row = tl.program_id(0)
    start = row.to(tl.int64) * N  # (int64: T * B * 4H may pass 2^31)
    cols = tl.arange(0, BLOCK_N)
    m = cols < N
    x = tl.load(x_ptr + start + cols, mask=m, other=0.0).to(ACC)  # (BLOCK_N,)
    mean = tl.reduce(x, 0, _add) / N
    d = tl.where(m, x - mean, 0.0)
    rstd = 1.0 / tl.sqrt(tl.reduce(d * d, 0, _add) / N + eps)
    y = d * rstd * tl.load(w_ptr + cols, mask=m, other=0.0).to(ACC)
    if HAS_BIAS:
        y += tl.load(b_ptr + cols, mask=m, other=0.0).to(ACC)
    tl.store(y_ptr + start + cols, y.to(y_ptr.dtype.element_ty), mask=m)
    tl.store(mean_ptr + row, mean)
    tl.store(rstd_ptr + row, rstd)


def _bwd_kernel(dy_ptr, x_ptr, w_ptr, mean_ptr, rstd_ptr, dx_ptr, dw_ptr, db_ptr, M, N, rows,
                ACC: tl.constexpr, BLOCK_N: tl.constexpr):  # fmt: skip
    """``rows`` rows: dx = (w dy - (xhat mean(xhat w dy) + mean(w dy))) rstd; this program's partial sums of
    dy xhat (the gain's gradient) and dy (the bias') over its rows, one row of dw_ptr / db_ptr each."""
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_N)
    m = cols < N
    w = tl.load(w_ptr + cols, mask=m, other=0.0).to(ACC)
    dw = tl.full([BLOCK_N], 0.0, ACC)
    db = tl.full([BLOCK_N], 0.0, ACC)
    for r in range(rows):
        row = pid * rows + r
        if row < M:
            start = row.to(tl.int64) * N  # (int64: T * B * 4H may pass 2^31)
            x = tl.load(x_ptr + start + cols, mask=m, other=0.0).to(ACC)
            dy = tl.load(dy_ptr + start + cols, mask=m, other=0.0).to(ACC)
            rstd = tl.load(rstd_ptr + row)
            xhat = tl.where(m, (x - tl.load(mean_ptr + row)) * rstd, 0.0)
            wdy = w * dy
            c1 = tl.reduce(xhat * wdy, 0, _add) / N
            c2 = tl.reduce(wdy, 0, _add) / N
            dx = (wdy - (xhat * c1 + c2)) * rstd
            tl.store(dx_ptr + start + cols, dx.to(dx_ptr.dtype.element_ty), mask=m)
            dw += dy * xhat
            db += dy
    tl.store(dw_ptr + pid * N + cols, dw, mask=m)
    tl.store(db_ptr + pid * N + cols, db, mask=m)


_KERNELS: dict[tuple[str, bool], object] = {}
#: the kernels' arithmetic dtype for a statistics dtype
_ACC = {torch.float32: tl.float32, torch.float64: tl.float64} if HAVE_TRITON else {}


def _kernel(name: str, interpret: bool):
    """The forward or backward kernel for the GPU (``triton.jit``) or the CPU interpreter, built once each."""
    if (name, interpret) not in _KERNELS:
        fn = {"fwd": _fwd_kernel, "bwd": _bwd_kernel}[name]
        if interpret:
            from .interpreter import interpreted

            k = interpreted(fn)
        else:  # row counts change from call to call (1 would be a constant: another compile)
            k = triton.jit(fn, do_not_specialize=["M", "rows"] if name == "bwd" else [])
        _KERNELS[(name, interpret)] = k
    return _KERNELS[(name, interpret)]


def compile_ahead(N: int, dtype: torch.dtype = torch.bfloat16, bias: bool = True, arch: int = 90) -> dict:
    """Build the forward and backward for sm_``arch`` without a GPU, as a launch on (M, N) rows of ``dtype`` with
    float32 statistics would specialise them: ``{"fwd": CompiledKernel, "bwd": ...}`` (registers, spills)."""
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import CUDABackend
    from triton.compiler import ASTSource

    ptr = {torch.float32: "*fp32", torch.bfloat16: "*bf16", torch.float16: "*fp16"}[dtype]
    block = triton.next_power_of_2(N)
    kinds = {"x_ptr": ptr, "y_ptr": ptr, "dy_ptr": ptr, "dx_ptr": ptr, "w_ptr": "*fp32", "b_ptr": "*fp32",
             "mean_ptr": "*fp32", "rstd_ptr": "*fp32", "dw_ptr": "*fp32", "db_ptr": "*fp32", "eps": "fp32"}  # fmt: skip
    out = {}
    for name, consts in (("fwd", dict(HAS_BIAS=bias, ACC=tl.float32, BLOCK_N=block)),
                         ("bwd", dict(ACC=tl.float32, BLOCK_N=block))):  # fmt: skip
        jf = _kernel(name, False)
        if name == "fwd" and not bias:
            consts["b_ptr"] = None
        sig = {a: "constexpr" if a in consts else kinds.get(a, "i32") for a in jf.arg_names}
        attrs = {(jf.arg_names.index(a),): CUDABackend.parse_attr("D")
                 for a, k in sig.items() if k.startswith("*") or (a == "N" and N % 16 == 0)}  # fmt: skip
        src = ASTSource(fn=jf, signature=sig, constexprs={(jf.arg_names.index(k),): v for k, v in consts.items()},
                        attrs=attrs)  # fmt: skip
        out[name] = triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": _warps(block)})
    return out


def _rows_per_program(M: int, device: torch.device) -> int:
    """Rows per backward program: at most ROWS_PER_PROGRAM, and few enough for PROGRAMS_PER_SM programs on every
    multiprocessor (the interpreter: as if 4)."""
    if device.type == "cuda":
        from .triton_lstm import _sm_count  # (triton_lstm imports this module)

        sms = _sm_count(device)
    else:
        sms = 4
    return max(1, min(ROWS_PER_PROGRAM, -(-M // (PROGRAMS_PER_SM * sms))))


def _warps(block_n: int) -> int:
    return 4 if block_n <= 2048 else 8 if block_n <= 8192 else 16


class _InputNorm(torch.autograd.Function):
    """a = LN(x) * w (+ b) over the last dimension of x (M, N); float32 statistics and arithmetic."""

    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor, b: Tensor | None, eps: float, out_dtype: torch.dtype, interpret: bool):
        M, N = x.shape
        acc = torch.promote_types(x.dtype, torch.float32)
        y = torch.empty(M, N, dtype=out_dtype, device=x.device)
        mean = torch.empty(M, dtype=acc, device=x.device)
        rstd = torch.empty(M, dtype=acc, device=x.device)
        block = triton.next_power_of_2(N)
        opts = {} if interpret else {"num_warps": _warps(block)}
        if M:
            with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():
                _kernel("fwd", interpret)[(M,)](x, w, y if b is None else b, y, mean, rstd, N, eps,
                                                HAS_BIAS=b is not None, ACC=_ACC[acc], BLOCK_N=block,
                                                **opts)  # fmt: skip
        ctx.save_for_backward(x, w, mean, rstd)
        ctx.b_dtype = None if b is None else b.dtype
        ctx.interpret = interpret
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, dy: Tensor):
        x, w, mean, rstd = ctx.saved_tensors
        M, N = x.shape
        dy = dy.contiguous()
        dx = torch.empty_like(x)
        rows = _rows_per_program(M, x.device)
        n_prog = triton.cdiv(M, rows)
        dw = torch.empty(max(n_prog, 1), N, dtype=mean.dtype, device=x.device)
        db = torch.empty_like(dw)
        block = triton.next_power_of_2(N)
        opts = {} if ctx.interpret else {"num_warps": _warps(block)}
        if M:
            with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():
                _kernel("bwd", ctx.interpret)[(n_prog,)](dy, x, w, mean, rstd, dx, dw, db, M, N, rows,
                                                         ACC=_ACC[mean.dtype], BLOCK_N=block, **opts)  # fmt: skip
        else:
            dw.zero_()
            db.zero_()
        d_w = dw.sum(0).to(w.dtype)  # (N,): float32 partials (float64 in the tests), summed so
        d_b = None if ctx.b_dtype is None else db.sum(0).to(ctx.b_dtype)
        return dx, d_w, d_b, None, None, None


def float32_layer_norm(gx: Tensor, weight: Tensor, eps: float = 1e-5) -> Tensor:
    """LN(gx) * weight over the last dimension in torch, computed in float32 at least, returned in gx's dtype:
    what ``nn.variants.input_norm`` (the pure-torch loop's input norm) is."""
    acc = torch.promote_types(gx.dtype, torch.float32)
    return F.layer_norm(gx.to(acc), (gx.shape[-1],), weight=weight.to(acc), eps=eps).to(gx.dtype)


def _composite(gx: Tensor, weight: Tensor, bias: Tensor | None, eps: float, out_dtype: torch.dtype) -> Tensor:
    """torch's way: :func:`float32_layer_norm` and then the bias (the pure-torch loop's numbers)."""
    y = float32_layer_norm(gx, weight, eps)
    return (y if bias is None else y + bias).to(out_dtype)


def input_norm(gx: Tensor, weight: Tensor, bias: Tensor | None = None, eps: float = 1e-5,
               out_dtype: torch.dtype | None = None, interpret: bool = False) -> Tensor:  # fmt: skip
    """LN(gx) * weight (+ bias) over gx's last dimension (4H), statistics and arithmetic in float32, the result
    in ``out_dtype`` (default gx's). Differentiable in gx, weight and bias. One Triton kernel forward and one
    backward on CUDA (``interpret``: CPU tensors in Triton's interpreter, float64 too, the tests); torch's
    composite elsewhere, for float64 on a GPU, and for rows longer than :data:`MAX_N`."""
    out_dtype = out_dtype or gx.dtype
    N = gx.shape[-1]
    fused = HAVE_TRITON and (gx.is_cuda and gx.dtype != torch.float64 or interpret) and 0 < N <= MAX_N
    if not fused or weight.shape != (N,) or (bias is not None and bias.shape != (N,)):
        return _composite(gx, weight, bias, eps, out_dtype)
    x = gx.reshape(-1, N).contiguous()  # (M, 4H)
    w = weight.contiguous()
    b = None if bias is None else bias.contiguous()
    return _InputNorm.apply(x, w, b, float(eps), out_dtype, interpret).view(*gx.shape[:-1], N)
