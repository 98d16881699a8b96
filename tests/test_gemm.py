"""The float32 GEMM kernel (``lstmkit.kernels.gemm``): Triton's interpreter on CPU tensors, and its sm_90 build.

On the CPU the kernel multiplies exactly in its accumulator's precision, so float64 runs check the indexing
(every operand layout, edges that cut tiles, a partial last K tile, the bias) to 1e-12 against torch's float64
GEMM, and through a whole LSTM layer against the NumPy reference (forward and every gradient). The tf32x3
products themselves only run on a GPU (``benchmarks/gpu.py`` checks them against float64 there); here they
are built for sm_90 and must not spill.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton", reason="triton is not installed (pip install triton); the GPU kernels need it")

from lstmkit.kernels import gemm  # noqa: E402

SMALL = (16, 32, 16, 4, 1)  # (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages): several tiles at test sizes


def _operand(t: torch.Tensor, layout: str) -> torch.Tensor:
    """The same values, row-major ("r") or as a transposed view of a column-major copy ("c")."""
    return t.contiguous() if layout == "r" else t.t().contiguous().t()


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-6)])
@pytest.mark.parametrize("la,lb", [("r", "r"), ("r", "c"), ("c", "r"), ("c", "c")])
@pytest.mark.parametrize("seed", [0, 1])
def test_matmul_matches_float64_at_every_layout(dtype, tol, la, lb, seed):
    g = torch.Generator().manual_seed(seed)
    M, N, K = (int(v) for v in torch.randint(5, 70, (3,), generator=g))  # (rarely multiples of the tiles)
    a = torch.randn(M, K, generator=g, dtype=torch.float64)
    b = torch.randn(K, N, generator=g, dtype=torch.float64)
    bias = torch.randn(N, generator=g, dtype=torch.float64)
    A, B = _operand(a.to(dtype), la), _operand(b.to(dtype), lb)
    assert (A.stride(1) == 1) == (la == "r") and (B.stride(1) == 1) == (lb == "r")
    for bb in (None, bias.to(dtype)):
        want = a @ b if bb is None else a @ b + bias
        got = gemm.matmul(A, B, bb, SMALL)
        assert got.dtype == dtype and got.shape == (M, N)
        assert ((got.double() - want).norm() / want.norm()).item() < tol, (M, N, K, bb is None)


def test_matmul_even_k_and_one_tile():
    """K a multiple of BLOCK_K (no mask on the loads) and a matrix inside one tile."""
    g = torch.Generator().manual_seed(3)
    for M, N, K, cfg in [(40, 50, 48, SMALL), (3, 4, 16, SMALL), (33, 65, 64, (32, 64, 32, 4, 1))]:
        a = torch.randn(M, K, generator=g, dtype=torch.float64)
        b = torch.randn(K, N, generator=g, dtype=torch.float64)
        assert torch.allclose(gemm.matmul(a, b, None, cfg), a @ b, rtol=1e-12, atol=1e-12)


def test_matmul_reads_a_strided_or_broadcast_bias():
    g = torch.Generator().manual_seed(6)
    a, b = torch.randn(9, 5, generator=g, dtype=torch.float64), torch.randn(5, 12, generator=g, dtype=torch.float64)
    wide = torch.randn(24, generator=g, dtype=torch.float64)
    for bias in (wide[::2], wide[:1].expand(12)):  # stride 2, stride 0
        assert torch.allclose(gemm.matmul(a, b, bias, SMALL), a @ b + bias, rtol=1e-12, atol=1e-12)


def test_matmul_edge_sizes_and_errors():
    a, b = torch.randn(0, 5, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    assert gemm.matmul(a, b, None, SMALL).shape == (0, 3)
    bias = torch.arange(3, dtype=torch.float64)
    out = gemm.matmul(torch.randn(2, 0, dtype=torch.float64), torch.randn(0, 3, dtype=torch.float64), bias, SMALL)
    assert torch.equal(out, bias.expand(2, 3))  # K = 0: the bias alone
    with pytest.raises(ValueError, match="a's columns must equal b's rows"):
        gemm.matmul(torch.randn(2, 4), torch.randn(5, 3), None, SMALL)
    with pytest.raises(ValueError, match="need one dtype"):
        gemm.matmul(torch.randn(2, 4), torch.randn(4, 3, dtype=torch.float64), None, SMALL)
    with pytest.raises(ValueError, match=r"the shape \(3,\)"):
        gemm.matmul(torch.randn(2, 4), torch.randn(4, 3), torch.randn(4), SMALL)
    with pytest.raises(ValueError, match="need one dtype"):
        gemm.matmul(torch.randn(2, 4), torch.randn(4, 3), torch.randn(3, dtype=torch.float64), SMALL)


@pytest.fixture
def kernel_gemms(monkeypatch):
    """Every GEMM :func:`gemm.mm` / :func:`gemm.linear` sees runs on the kernel (CPU: the interpreter), with
    SMALL tiles; returns the list of (M, N, K) it ran."""
    ran = []
    real = gemm.matmul

    def counted(a, b, bias=None, config=gemm.CONFIGS[0], interpret=None):
        ran.append((a.shape[0], b.shape[1], a.shape[1]))
        return real(a, b, bias, config, interpret)

    monkeypatch.setattr(gemm, "_considered", lambda *a: True)
    monkeypatch.setattr(gemm, "_choice", lambda a, b, bias: SMALL)
    monkeypatch.setattr(gemm, "matmul", counted)
    return ran


def test_linear_and_its_gradients_through_the_kernel(kernel_gemms):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(3, 7, 9, generator=g, dtype=torch.float64, requires_grad=True)  # (T, B, K)
    w = torch.randn(20, 9, generator=g, dtype=torch.float64, requires_grad=True)  # (N, K)
    b = torch.randn(20, generator=g, dtype=torch.float64, requires_grad=True)
    gy = torch.randn(3, 7, 20, generator=g, dtype=torch.float64)
    y = gemm.linear(x, w, b)
    got = torch.autograd.grad((y * gy).sum(), (x, w, b))
    assert kernel_gemms == [(21, 20, 9), (21, 9, 20), (20, 9, 21)]  # y, dx, dW: all three on the kernel
    want_y = F.linear(x, w, b)
    want = torch.autograd.grad((want_y * gy).sum(), (x, w, b))
    assert y.shape == (3, 7, 20) and torch.allclose(y, want_y, rtol=1e-12, atol=1e-12)
    for name, a, e in zip(("dx", "dW", "db"), got, want, strict=True):
        assert torch.allclose(a, e, rtol=1e-12, atol=1e-12), name
    y = gemm.linear(x.detach(), w, None)  # no bias, no input gradient
    (dw,) = torch.autograd.grad((y * gy).sum(), (w,))
    assert torch.allclose(dw, torch.einsum("tbn,tbk->nk", gy, x.detach()), rtol=1e-12, atol=1e-12)
    y = gemm.linear(x, w, b)  # a second derivative: said so, not silently wrong
    (dx,) = torch.autograd.grad((y * gy).sum(), (x,), create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|does not require grad"):
        torch.autograd.grad(dx.sum(), (w,))
    kernel_gemms.clear()  # a bias of another dtype or shape: F.linear's own rules (here: its error)
    with pytest.raises(RuntimeError):
        gemm.linear(x, w, b.float())
    assert kernel_gemms == []


def test_mm_keeps_autograd_where_an_operand_needs_it(kernel_gemms):
    """:func:`gemm.mm` is for backward passes (no graph): with an operand that requires grad it is torch's."""
    a = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    out = gemm.mm(a, torch.randn(3, 5, dtype=torch.float64))
    assert out.grad_fn is not None and kernel_gemms == []
    with torch.no_grad():
        gemm.mm(a, torch.randn(3, 5, dtype=torch.float64))
    assert kernel_gemms == [(4, 5, 3)]


@pytest.mark.parametrize("T,B,I,H", [(3, 2, 3, 5), (2, 3, 6, 12)])
def test_a_layer_with_the_kernel_gemms_matches_the_spec(kernel_gemms, T, B, I, H):
    """The input projection, dx, dW_ih and dW_hh on the kernel, through triton_lstm's layer: the NumPy spec."""
    from test_triton import one_layer_case, reference_case, rel, triton_case

    w, x, h0, c0, gy = one_layer_case(T, B, I, H, seed=7 * H + T)
    want = reference_case(w, x, h0, c0, gy)
    got = triton_case(w, x, h0, c0, gy, torch.float64)
    G = 4 * H  # (the kernels' units: H padded as on a GPU would be H here, the CPU pads nothing)
    assert sorted(kernel_gemms) == sorted([(T * B, G, I), (T * B, I, G), (G, I, T * B), (G, H, T * B)])
    for k, v in want.items():
        assert rel(got[k], v) < 1e-10, k


def test_tuning_times_cublas_and_each_tiling_once_and_keeps_the_fastest(monkeypatch):
    monkeypatch.setattr(gemm, "TUNED", {})
    order = iter([5.0, 3.0, 1.0, 2.0, 1.0, 9.0, 9.0, 9.0])  # torch, then CONFIGS: the second tiling, then torch
    timed = []

    def fake_time(fn, device, reps=3):
        timed.append(fn)
        return next(order)

    monkeypatch.setattr(gemm, "_time", fake_time)
    monkeypatch.setattr(gemm, "_considered", lambda *a: True)
    monkeypatch.setattr(gemm, "CONFIGS", (SMALL, (32, 16, 16, 4, 1), (16, 16, 16, 4, 1)))
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(20, 30, generator=g), torch.randn(30, 10, generator=g)
    out = gemm.mm(a, b)
    assert len(timed) == 4 and torch.allclose(out, a @ b, rtol=1e-5, atol=1e-5)
    ((key, (choice, times, errors)),) = gemm.TUNED.items()
    assert choice == (32, 16, 16, 4, 1) and times["torch"] == 5.0 and key[:5] == (32, 16, 32, "r", "r")
    assert set(errors) == set(gemm.CONFIGS) and max(errors.values()) < 1e-6  # each checked against cuBLAS
    gemm.mm(a, b)  # the same key: not timed again
    gemm.mm(torch.randn(25, 30, generator=g), b)  # nor a size in the same power-of-two bucket
    assert len(timed) == 4
    out = gemm.mm(a.t().contiguous().t(), b)  # another layout is another key, timed on its own
    assert len(timed) == 8 and len(gemm.TUNED) == 2 and torch.equal(out, a @ b)
    assert [v[0] for v in gemm.TUNED.values()] == [(32, 16, 16, 4, 1), "torch"]


def test_tuning_keeps_cublas_when_no_tiling_runs(monkeypatch):
    monkeypatch.setattr(gemm, "TUNED", {})
    monkeypatch.setattr(gemm, "_considered", lambda *a: True)

    def refuse(*a, **k):
        raise RuntimeError("out of resources")

    monkeypatch.setattr(gemm, "matmul", refuse)
    a, b = torch.randn(8, 6), torch.randn(6, 4)
    assert torch.allclose(gemm.mm(a, b), a @ b)
    ((choice, times, errors),) = gemm.TUNED.values()
    assert choice == "torch" and all(t == float("inf") for k, t in times.items() if k != "torch") and not errors


def test_tuning_never_chooses_a_tiling_that_gets_it_wrong(monkeypatch):
    """The fastest tiling here returns a wrong product (as a miscompiled one would): it is refused."""
    monkeypatch.setattr(gemm, "TUNED", {})
    monkeypatch.setattr(gemm, "_considered", lambda *a: True)
    bad, good = (16, 16, 16, 4, 1), (32, 16, 16, 4, 1)
    monkeypatch.setattr(gemm, "CONFIGS", (bad, good))
    real = gemm.matmul
    monkeypatch.setattr(gemm, "matmul", lambda a, b, bias=None, config=bad, interpret=None: (
        real(a, b, bias, config) * (1.001 if config == bad else 1.0)))  # fmt: skip
    order = iter([5.0, 2.0])  # torch, then the good tiling (the bad one is never timed)
    monkeypatch.setattr(gemm, "_time", lambda fn, device, reps=3: next(order))
    a, b = torch.randn(20, 30), torch.randn(30, 10)
    gemm.mm(a, b)
    ((choice, times, errors),) = gemm.TUNED.values()
    assert choice == good and times[bad] == float("inf") and errors[bad] > gemm.TUNE_TOL > errors[good]


def test_considered_only_for_large_float32_cuda_gemms_without_tf32_or_autocast(monkeypatch):
    """The gate itself, on stand-ins for CUDA tensors (this machine has none)."""
    from types import SimpleNamespace

    def fake(shape, stride=None, dtype=torch.float32, cuda=True):
        stride = stride or (shape[1], 1)
        return SimpleNamespace(shape=shape, stride=lambda: stride, dtype=dtype, is_cuda=cuda)

    monkeypatch.setattr(gemm, "tf32_allowed", lambda: False)
    monkeypatch.setattr(gemm, "_autocast_on", lambda: False)
    M, N, K = 4096, 1024, 1024  # 2^32 multiply-adds
    a, b = fake((M, K)), fake((K, N))
    assert gemm._considered(a, b, M, N, K)
    assert not gemm._considered(fake((M, K), cuda=False), b, M, N, K)
    assert not gemm._considered(fake((M, K), dtype=torch.bfloat16), fake((K, N), dtype=torch.bfloat16), M, N, K)
    assert not gemm._considered(fake((64, 64)), fake((64, 64)), 64, 64, 64)  # under MIN_MNK: cuBLAS
    assert not gemm._considered(fake((M, K), (2**20, 1)), b, M, N, K)  # a view whose rows reach past int32
    monkeypatch.setattr(gemm, "MODE", "torch")
    assert not gemm._considered(a, b, M, N, K)
    monkeypatch.setattr(gemm, "MODE", "auto")
    monkeypatch.setattr(gemm, "tf32_allowed", lambda: True)  # the user asked for one TF32 product: cuBLAS's
    assert not gemm._considered(a, b, M, N, K)
    monkeypatch.setattr(gemm, "tf32_allowed", lambda: False)
    monkeypatch.setattr(gemm, "_autocast_on", lambda: True)  # autocast casts torch's GEMM, not the kernel's
    assert not gemm._considered(a, b, M, N, K)


def test_off_the_gpu_linear_and_mm_are_torch_exactly():
    g = torch.Generator().manual_seed(4)
    x, w, b = torch.randn(4, 5, 6, generator=g), torch.randn(7, 6, generator=g), torch.randn(7, generator=g)
    assert torch.equal(gemm.linear(x, w, b), F.linear(x, w, b))
    assert torch.equal(gemm.mm(x[0], w.t()), x[0] @ w.t())


def test_tf32_allowed_reads_the_new_and_the_legacy_api():
    """torch >= 2.9 raises when the legacy ``allow_tf32`` is read after the new ``fp32_precision`` was set:
    the kernels' precision check must read the one the user set (each case in a fresh interpreter)."""
    if not hasattr(torch.backends.cuda.matmul, "fp32_precision"):
        pytest.skip("this torch has only the legacy allow_tf32")
    cases = {
        "pass": False,
        "m.allow_tf32 = True": True,
        "m.fp32_precision = 'tf32'": True,
        "m.fp32_precision = 'ieee'": False,
        "torch.backends.fp32_precision = 'tf32'": True,
        "torch.set_float32_matmul_precision('high')": True,
    }
    for setting, want in cases.items():
        precision = '"tf32"' if want else "tk.FP32_PRECISION"
        code = (
            "import torch\nfrom lstmkit.kernels import gemm, triton_lstm as tk\nm = torch.backends.cuda.matmul\n"
            f"{setting}\nassert gemm.tf32_allowed() is {want}\n"
            f"assert tk._precision(torch.float32) == {precision}\n"
            "tk.plan(4, 16, torch.float32, 'cpu')\n"
            "try:\n    tk.plan(4, 16, torch.float32, 'cpu', precision='ieee')\n"  # (with TF32 on: refused, said why)
            "except ValueError as e:\n    assert 'TF32 on' in str(e), e\n"
        )  # fmt: skip
        env = {**os.environ, "PYTHONWARNINGS": "ignore"}
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
        assert r.returncode == 0, (setting, r.stderr[-600:])


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="TRITON_INTERPRET=1 turns triton.jit off")
@pytest.mark.parametrize("la,lb,bias", [("r", "c", True), ("r", "r", False), ("c", "r", False)])
def test_the_tilings_build_for_sm_90_with_tf32x3_products_and_spill_at_most_a_little(la, lb, bias, tmp_path):
    """The three GEMMs' layouts (x W^T + b; dgx W; dgx^T x) at every tuning candidate: wgmma on TF32 operands,
    three products per K step of 8, with strides aligned or not; registers spilled by none (triton 3.6) or a few words
    (cuobjdump, Triton's copy)."""
    import triton

    from test_cluster_lstm import _resources

    # triton 3.6 (the GPU image's) spills nothing at any of these; 3.9 spills 8-24 bytes at BLOCK_K = 32 with an
    # operand transposed on chip (tf32 wgmma wants K-major operands) or rows not known to be aligned
    allowed = 0 if tuple(int(v) for v in triton.__version__.split(".")[:2]) < (3, 9) else 32
    for cfg in gemm.CONFIGS:
        # strides multiples of 16 and K of BLOCK_K (the shapes but one), and neither ((35, 20, 650))
        for aligned in (True, False):
            k = gemm.compile_ahead(la, lb, bias, cfg, aligned=aligned, even_k=aligned)
            ptx = k.asm["ptx"]
            assert "wgmma.mma_async" in ptx and ".tf32" in ptx, cfg
            assert ptx.count("wgmma.mma_async") == 3 * cfg[2] // 8, cfg  # hi*hi + hi*lo + lo*hi per k-step of 8
            res = _resources(k.asm["cubin"], tmp_path)
            if not res:
                pytest.skip("cuobjdump (Triton's copy) not found: no register report")
            ((regs, stack, local),) = res.values()
            assert stack <= allowed and local == 0, (cfg, aligned, regs, stack)
            assert k.metadata.shared <= 232448, cfg  # an H100 / H200 block's shared memory
