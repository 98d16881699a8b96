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


def test_matmul_edge_sizes_and_errors():
    a, b = torch.randn(0, 5, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    assert gemm.matmul(a, b, None, SMALL).shape == (0, 3)
    bias = torch.arange(3, dtype=torch.float64)
    out = gemm.matmul(torch.randn(2, 0, dtype=torch.float64), torch.randn(0, 3, dtype=torch.float64), bias, SMALL)
    assert torch.equal(out, bias.expand(2, 3))  # K = 0: the bias alone
    with pytest.raises(ValueError, match="a's columns must equal b's rows"):
        gemm.matmul(torch.randn(2, 4), torch.randn(5, 3), None, SMALL)
    with pytest.raises(ValueError, match="one dtype and the bias shape"):
        gemm.matmul(torch.randn(2, 4), torch.randn(4, 3, dtype=torch.float64), None, SMALL)
    with pytest.raises(ValueError, match=r"the bias shape \(3,\)"):
        gemm.matmul(torch.randn(2, 4), torch.randn(4, 3), torch.randn(4), SMALL)


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
    ((key, (choice, times)),) = gemm.TUNED.items()
    assert choice == (32, 16, 16, 4, 1) and times["torch"] == 5.0 and key[:5] == (20, 10, 30, "r", "r")
    gemm.mm(a, b)  # the same key: not timed again
    assert len(timed) == 4
    out = gemm.mm(a.t().contiguous().t(), b)  # another layout is another key, timed on its own
    assert len(timed) == 8 and len(gemm.TUNED) == 2 and torch.equal(out, a @ b)
    assert [c for c, _ in gemm.TUNED.values()] == [(32, 16, 16, 4, 1), "torch"]


def test_tuning_keeps_cublas_when_no_tiling_runs(monkeypatch):
    monkeypatch.setattr(gemm, "TUNED", {})
    monkeypatch.setattr(gemm, "_considered", lambda *a: True)

    def refuse(*a, **k):
        raise RuntimeError("out of resources")

    monkeypatch.setattr(gemm, "matmul", refuse)
    a, b = torch.randn(8, 6), torch.randn(6, 4)
    assert torch.allclose(gemm.mm(a, b), a @ b)
    (choice, times), = gemm.TUNED.values()
    assert choice == "torch" and all(t == float("inf") for k, t in times.items() if k != "torch")


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
        )  # fmt: skip
        env = {**os.environ, "PYTHONWARNINGS": "ignore"}
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
        assert r.returncode == 0, (setting, r.stderr[-600:])


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="TRITON_INTERPRET=1 turns triton.jit off")
@pytest.mark.parametrize("la,lb,bias", [("r", "c", True), ("r", "r", False), ("c", "r", False)])
def test_the_tilings_build_for_sm_90_with_tf32x3_products_and_spill_at_most_a_little(la, lb, bias, tmp_path):
    """The three GEMMs' layouts (x W^T + b; dgx W; dgx^T x) at every tuning candidate: wgmma on TF32 operands,
    three products per K step of 8, registers spilled by none or (A transposed, triton >= 3.9) a few words
    (cuobjdump, Triton's copy)."""
    from test_cluster_lstm import _resources

    for cfg in gemm.CONFIGS:
        k = gemm.compile_ahead(la, lb, bias, cfg)
        ptx = k.asm["ptx"]
        assert "wgmma.mma_async" in ptx and ".tf32" in ptx, cfg
        assert ptx.count("wgmma.mma_async") == 3 * cfg[2] // 8, cfg  # hi*hi + hi*lo + lo*hi per k-step of 8
        res = _resources(k.asm["cubin"], tmp_path)
        if not res:
            pytest.skip("cuobjdump (Triton's copy) not found: no register report")
        ((regs, stack, local),) = res.values()
        # triton 3.6 (the GPU image's) spills nothing at any of these; 3.9 spills 8-24 bytes with A transposed
        # (dgx^T x) at BLOCK_K = 32, where tf32 wgmma wants K-major operands and A is transposed on chip
        assert stack <= (32 if la == "c" else 0) and local == 0, (cfg, regs, stack)
        assert k.metadata.shared <= 232448, cfg  # an H100 / H200 block's shared memory
