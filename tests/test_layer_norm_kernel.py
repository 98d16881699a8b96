"""The fused input layer norm (``lstmkit.kernels.layer_norm``): Triton's interpreter on CPU tensors, its sm_90 build.

LN(gx) * g_ih + b over the 4H gates, statistics and arithmetic in float32 (float64 in the float64 runs), each
tensor in its own dtype: against torch's float64 layer norm, forward and the gradients of gx, the gain and the
bias, with rows that do not fill the block and more rows than one backward program takes.
"""

from __future__ import annotations

import os
import re

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton", reason="triton is not installed (pip install triton); the GPU kernels need it")

from lstmkit.kernels import layer_norm as ln  # noqa: E402
from lstmkit.nn.variants import input_norm as spec_input_norm  # noqa: E402


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def _case(M, N, x_dtype, p_dtype, seed, bias=True):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(M, N, generator=g, dtype=torch.float64) * 3 + 1).to(x_dtype).requires_grad_()
    w = (torch.randn(N, generator=g, dtype=torch.float64) + 1).to(p_dtype).requires_grad_()
    b = torch.randn(N, generator=g, dtype=torch.float64).to(p_dtype).requires_grad_() if bias else None
    gy = torch.randn(M, N, generator=g, dtype=torch.float64)
    return x, w, b, gy


def _float64(x, w, b, gy, eps=1e-5):
    leaves = [t.detach().double().requires_grad_() for t in (x, w) + ((b,) if b is not None else ())]
    y = F.layer_norm(leaves[0], (x.shape[-1],), leaves[1], leaves[2] if b is not None else None, eps)
    return y, torch.autograd.grad((y * gy).sum(), leaves)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("M,N", [(3, 20), (150, 52), (64, 16), (65, 100)])  # 150, 65: a partial last program
def test_float64_matches_torch_layer_norm(M, N, bias):
    x, w, b, gy = _case(M, N, torch.float64, torch.float64, seed=M + N, bias=bias)
    y = ln.input_norm(x, w, b, 1e-5, interpret=True)
    got = torch.autograd.grad((y * gy).sum(), (x, w) + ((b,) if bias else ()))
    want_y, want = _float64(x, w, b, gy)
    assert y.dtype == torch.float64 and rel(y, want_y) < 1e-13
    for name, a, e in zip(("dx", "dw", "db"), got, want, strict=False):
        assert rel(a, e) < 1e-12, name


@pytest.mark.parametrize("x_dtype,p_dtype,out,tol", [
    (torch.float32, torch.float32, None, 1e-6),
    (torch.bfloat16, torch.bfloat16, None, 1e-2),  # a module in bf16 (the GPU benchmarks')
    (torch.bfloat16, torch.float32, None, 1e-2),  # autocast: float32 parameters, bf16 projection (cluster path)
    (torch.bfloat16, torch.float32, torch.float32, 1e-2),  # ... the result promoted as gx + bias (Triton path)
    (torch.float16, torch.float16, None, 2e-3),
])  # fmt: skip
def test_low_precision_within_bounds_and_each_tensor_keeps_its_dtype(x_dtype, p_dtype, out, tol):
    x, w, b, gy = _case(70, 40, x_dtype, p_dtype, seed=11)
    y = ln.input_norm(x, w, b, 1e-5, out, interpret=True)
    dx, dw, db = torch.autograd.grad((y.double() * gy).sum(), (x, w, b))
    assert y.dtype == (out or x_dtype) and dx.dtype == x_dtype and dw.dtype == db.dtype == p_dtype
    want_y, want = _float64(x, w, b, gy)
    errs = [rel(y, want_y)] + [rel(a, e) for a, e in zip((dx, dw, db), want, strict=True)]
    assert max(errs) < tol, errs
    # and no worse than torch's composite (cast up, layer norm, cast down, add the bias) in the same dtypes: one
    # rounding to the output dtype where it has two (in float32 both are at its rounding, summed in other orders)
    yc = (spec_input_norm(x, w) + b).to(out or x_dtype)
    assert rel(y, want_y) <= 1.05 * rel(yc, want_y) + (1e-7 if x_dtype == torch.float32 else 0.0)


def test_off_the_gpu_and_for_long_rows_it_is_the_composite():
    x, w, b, _ = _case(6, 12, torch.float32, torch.float32, seed=3)
    assert torch.equal(ln.input_norm(x, w, b), spec_input_norm(x, w) + b)  # CPU, not interpreted: torch's
    x, w, b, _ = _case(2, ln.MAX_N + 8, torch.float32, torch.float32, seed=4)
    assert torch.equal(ln.input_norm(x, w, b, interpret=True), spec_input_norm(x, w) + b)


def test_the_interpreter_rounds_bfloat16_to_nearest_as_the_gpu_does():
    """Triton's interpreter cuts float32 to bfloat16 (toward zero); kernels.interpreter makes it round to nearest
    even, as the GPU and torch do, before any of our kernels is interpreted."""
    from lstmkit.kernels import interpreter

    assert interpreter.install()
    g = torch.Generator().manual_seed(8)
    x = torch.randn(100_000, generator=g) * torch.logspace(-30, 30, 100_000)  # (and subnormals, overflow to inf)
    x = torch.cat([x, torch.tensor([1e-40, -3e-39, 3.4e38, float("inf"), float("-inf"), 0.0, -0.0])])
    got = torch.from_numpy(interpreter.rtne_bf16_bits(x.numpy()).view("int16")).view(torch.bfloat16)
    assert torch.equal(got, x.to(torch.bfloat16))
    # through a kernel: a constant row's LN is 0, so LN * 1 + bias is the bias, stored in bfloat16
    x = x[:4000].clone()
    y = ln.input_norm(torch.zeros(1, 4000), torch.ones(4000), x, out_dtype=torch.bfloat16, interpret=True)
    assert torch.equal(y[0], x.to(torch.bfloat16))
    nan = torch.from_numpy(interpreter.rtne_bf16_bits(torch.tensor([float("nan")]).numpy()).view("int16"))
    assert torch.isnan(nan.view(torch.bfloat16)).all()


def test_shapes_edges_and_a_second_derivative():
    x, w, b, gy = _case(4, 24, torch.float64, torch.float64, seed=5)
    y = ln.input_norm(x.view(2, 2, 24), w, b, interpret=True)  # (T, B, 4H) in, the same shape out
    assert y.shape == (2, 2, 24)
    empty = ln.input_norm(torch.zeros(0, 3, 24, dtype=torch.float64, requires_grad=True), w, b, interpret=True)
    assert empty.shape == (0, 3, 24)
    (dw,) = torch.autograd.grad(empty.sum(), (w,))
    assert torch.equal(dw, torch.zeros_like(w))
    y = ln.input_norm(x, w, b, interpret=True)
    (dx,) = torch.autograd.grad((y * gy).sum(), (x,), create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|does not require grad"):  # said so, not wrong
        torch.autograd.grad(dx.sum(), (w,))


def test_backward_programs_fill_the_gpu(monkeypatch):
    """A short call's rows spread over PROGRAMS_PER_SM programs a multiprocessor, a long one's 64 rows each."""
    from lstmkit.kernels import triton_lstm

    monkeypatch.setattr(triton_lstm, "_sm_count", lambda device: 132)
    dev = torch.device("cuda", 0)
    assert ln._rows_per_program(700, dev) == 3  # (35, 20, 650): 234 programs, not 11 of 64 rows
    assert ln._rows_per_program(32768, dev) == ln.ROWS_PER_PROGRAM  # (128, 256, 1024): 512 programs
    assert ln._rows_per_program(1, dev) == 1 and ln._rows_per_program(0, dev) == 1


def test_row_offsets_are_64_bit():
    """T * B * 4H may pass 2^31 (e.g. 32 rows of 768 units over 22,000 steps): the row's first element is
    computed in int64 in both kernels (their sm_90 code, not a 16 GB test tensor)."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("TRITON_INTERPRET=1 turns triton.jit off")
    for name, k in ln.compile_ahead(3072, torch.bfloat16).items():
        assert re.search(r"arith\.muli [^\n]*: i64", k.asm["ttir"]), name  # (row * N, widened first)


def test_the_variant_layers_keep_their_dtype_rules(monkeypatch):
    """Triton's variant layer: gx' in the dtype gx + bias had (autocast: float32 bias, bf16 gx -> float32), the
    cluster kernels': gx's own dtype."""
    from lstmkit.kernels import triton_lstm as tk
    from lstmkit.nn.variants import Variants

    seen = []
    monkeypatch.setattr(tk, "_recurrence", lambda gx, *a, **k: seen.append(gx.dtype) or (gx, gx, gx))
    v = Variants(layer_norm=True)
    gx = torch.randn(2, 3, 16, dtype=torch.bfloat16)
    p = {"layernorm_ih_weight": torch.ones(16), "bias": torch.zeros(16), "layernorm_hh_weight": torch.ones(16),
         "layernorm_c_weight": torch.ones(4), "layernorm_c_bias": torch.zeros(4)}  # fmt: skip
    tk.variant_layer(gx, torch.zeros(3, 4), torch.zeros(3, 4), torch.zeros(16, 4), v, p, {}, None)
    p16 = {k: t.to(torch.bfloat16) for k, t in p.items()}
    tk.variant_layer(gx, torch.zeros(3, 4), torch.zeros(3, 4), torch.zeros(16, 4), v, p16, {}, None)
    assert seen == [torch.float32, torch.bfloat16]


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="TRITON_INTERPRET=1 turns triton.jit off")
@pytest.mark.parametrize("N", [1024, 2600, 3072, ln.MAX_N])  # 4H of the shapes (650 -> 2600) and the cap
def test_the_kernels_build_for_sm_90_without_spills(N, tmp_path):
    from test_cluster_lstm import _resources

    for dtype in (torch.bfloat16, torch.float32):
        for name, k in ln.compile_ahead(N, dtype).items():
            res = _resources(k.asm["cubin"], tmp_path)
            if not res:
                pytest.skip("cuobjdump (Triton's copy) not found: no register report")
            ((regs, stack, local),) = res.values()
            assert stack == 0 and local == 0, (N, dtype, name, regs, stack)
