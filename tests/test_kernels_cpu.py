"""The compiled CPU kernel (``lstmkit.kernels.cpu_fused``) against the NumPy reference and torch.

The extension is built once per machine (cached by torch in TORCH_EXTENSIONS_DIR); the first test
that needs it pays the compile (about 15-50 s on 2 cores). Where no compiler is available the tests
that need it skip, and the fallback test checks that the pure-torch loop runs instead.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from lstmkit import kernels
from lstmkit import reference as ref
from lstmkit.kernels import cpu_fused
from lstmkit.nn import LSTM
from lstmkit.nn.variants import Variants

REF_ATOL = 1e-10  # float64, fused kernel vs the NumPy reference
F32_ATOL = 1e-4  # float32, fused kernel (fast exp, oneDNN GEMMs) vs the pure-torch loop (sums of ~100 terms)

needs_kernel = pytest.mark.skipif(not cpu_fused.available(), reason="the C++ kernel could not be compiled here")

OPTIONS = ["layer_norm", "peephole", "coupled_input_forget", "cell_clip", "recurrent_dropout", "zoneout", "weight_drop"]


def random_case(seed: int):
    """A random configuration: shape, subset of variants, layers, directions, lengths."""
    rng = np.random.default_rng(seed)
    on = [o for o in OPTIONS if rng.random() < 0.5] or ["layer_norm"]
    values = {"layer_norm": True, "peephole": True, "coupled_input_forget": True, "cell_clip": 0.4,
              "recurrent_dropout": 0.3, "zoneout": (0.2, 0.35), "weight_drop": 0.25}  # fmt: skip
    cfg = dict(T=int(rng.integers(1, 7)), B=int(rng.integers(1, 5)), I=int(rng.integers(1, 6)),
               H=int(rng.integers(1, 7)), layers=int(rng.integers(1, 3)), bi=bool(rng.random() < 0.5),
               lengths=bool(rng.random() < 0.5))  # fmt: skip
    return cfg, {k: values[k] for k in on}


@pytest.fixture
def two_threads():
    """torch with 2 threads (the kernel then splits batches of >= 8 rows across them), restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@needs_kernel
@pytest.mark.parametrize("seed", range(12))
def test_fused_matches_reference_float64(seed):
    cfg, variants = random_case(seed)
    check_against_reference(cfg, variants, seed)


# Batches the kernel splits across 2 threads (rows [0, B/2) and [B/2, B) each run the whole time
# loop on their own thread): even and odd B, both directions, ragged lengths, every variant.
SPLIT_CASES = [
    (dict(T=6, B=8, I=3, H=5, layers=2, bi=True, lengths=True), dict(layer_norm=True, zoneout=(0.2, 0.35))),
    (dict(T=5, B=9, I=4, H=6, layers=1, bi=False, lengths=False), dict(recurrent_dropout=0.3, zoneout=0.2)),
    (dict(T=4, B=11, I=2, H=3, layers=2, bi=True, lengths=False),
     dict(layer_norm=True, peephole=True, coupled_input_forget=True, cell_clip=0.4, weight_drop=0.25)),
    (dict(T=7, B=17, I=3, H=4, layers=1, bi=False, lengths=True), dict(layer_norm=True, recurrent_dropout=0.3)),
]  # fmt: skip

# Small batches with H >= 64, where the kernel instead splits W_hh's output units across 2 threads
# (a hand-written GEMV each, the fused pass on thread 0, two barriers per step).
COLUMN_CASES = [
    (dict(T=4, B=1, I=3, H=64, layers=2, bi=True, lengths=False), dict(layer_norm=True, zoneout=(0.2, 0.35))),
    (dict(T=5, B=3, I=4, H=70, layers=1, bi=True, lengths=True),
     dict(recurrent_dropout=0.3, zoneout=0.2, peephole=True, coupled_input_forget=True, cell_clip=0.4)),
    (dict(T=3, B=1, I=2, H=66, layers=1, bi=False, lengths=False), dict(layer_norm=True, weight_drop=0.25)),
]  # fmt: skip


@needs_kernel
@pytest.mark.parametrize("case", range(len(SPLIT_CASES)))
def test_batch_split_across_threads_matches_reference_float64(case, two_threads):
    cfg, variants = SPLIT_CASES[case]
    ops = cpu_fused.load()
    if ops.batch_threads(cfg["B"]) != 2:
        pytest.skip("this build runs without OpenMP: batches are not split across threads")
    assert ops.batch_threads(1) == 1  # B = 1 (a GEMV) is never split
    check_against_reference(cfg, variants, 100 + case)


@needs_kernel
@pytest.mark.parametrize("case", range(len(COLUMN_CASES)))
def test_weight_split_across_threads_matches_reference_float64(case, two_threads):
    cfg, variants = COLUMN_CASES[case]
    ops = cpu_fused.load()
    if ops.column_threads(cfg["B"], cfg["H"]) != 2:
        pytest.skip("this build runs without OpenMP: W_hh is not split across threads")
    assert ops.column_threads(cfg["B"], 63) == 1  # too small to pay for the barriers
    assert ops.column_threads(8, cfg["H"]) == 1  # 8 rows: the batch is split instead
    check_against_reference(cfg, variants, 200 + case)


@needs_kernel
@pytest.mark.parametrize("B, H", [(1, 6), (8, 6), (13, 6), (1, 64), (5, 64)])
def test_split_equals_one_thread_float64(B, H, two_threads):
    """2 threads (batch split for B >= 8, W_hh split for B < 8 and H >= 64) against 1 thread (never
    split): the same numbers up to GEMM rounding."""
    torch.manual_seed(3)
    m = LSTM(4, H, 2, bidirectional=True, dtype=torch.float64, layer_norm=True, zoneout=0.2, recurrent_dropout=0.3)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(5, B, 4, dtype=torch.float64, generator=g)
    lengths = torch.randint(1, 6, (B,), generator=g)
    masks = m.sample_masks(B, 5, generator=g)
    results = []
    for threads in (2, 1):
        torch.set_num_threads(threads)
        m.zero_grad()
        xi = x.clone().requires_grad_()
        out, (h, c) = m(xi, lengths=lengths, masks=masks)
        (out.square().sum() + h.sum() + c.sum()).backward()
        results.append([out, h, c, xi.grad] + [p.grad for p in m.parameters()])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


def check_against_reference(cfg: dict, variants: dict, seed: int) -> None:
    """Forward and every gradient of lstmkit.nn.LSTM (the fused kernel) against the NumPy reference."""
    torch.manual_seed(seed)
    m = LSTM(cfg["I"], cfg["H"], cfg["layers"], bidirectional=cfg["bi"], dtype=torch.float64, **variants)
    assert kernels.select_lstm("auto", m.variants(), like=m.weight_ih_l0) is cpu_fused.layer
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.startswith(("layernorm", "weight_ch")):
                p.add_(torch.randn(p.shape, dtype=p.dtype) * 0.3)
    g = torch.Generator().manual_seed(seed)
    T, B = cfg["T"], cfg["B"]
    L = cfg["layers"] * (2 if cfg["bi"] else 1)
    x = torch.randn(T, B, cfg["I"], dtype=torch.float64, generator=g, requires_grad=True)
    h0 = torch.randn(L, B, cfg["H"], dtype=torch.float64, generator=g, requires_grad=True)
    c0 = torch.randn(L, B, cfg["H"], dtype=torch.float64, generator=g, requires_grad=True)
    lengths = torch.randint(1, T + 1, (B,), generator=g) if cfg["lengths"] else None
    masks = m.sample_masks(B, T, generator=g)
    out, (h, c) = m(x, (h0, c0), lengths=lengths, masks=masks)
    wy, wh, wc = (torch.randn(t.shape, dtype=t.dtype, generator=g) for t in (out, h, c))
    ((out * wy).sum() + (h * wh).sum() + (c * wc).sum()).backward()
    sd = {k: v.detach().numpy() for k, v in m.state_dict().items()}
    np_masks = {k: {n: t.numpy() for n, t in d.items()} for k, d in masks.items()}
    opts = {k: variants[k] for k in ("layer_norm", "peephole", "coupled_input_forget", "cell_clip") if k in variants}
    y_r, (h_r, c_r), cache = ref.stack_forward(
        x.detach().numpy(), (h0.detach().numpy(), c0.detach().numpy()), sd, cfg["layers"], cfg["bi"],
        None if lengths is None else lengths.numpy(), np_masks, **opts,
    )  # fmt: skip
    for a, b in ((out, y_r), (h, h_r), (c, c_r)):
        np.testing.assert_allclose(a.detach().numpy(), b, atol=REF_ATOL, rtol=0)
    g_r, dx_r, (dh0_r, dc0_r) = ref.stack_backward(wy.numpy(), cache, (wh.numpy(), wc.numpy()))
    for a, b in ((x, dx_r), (h0, dh0_r), (c0, dc0_r)):
        np.testing.assert_allclose(a.grad.numpy(), b, atol=REF_ATOL, rtol=0)
    for name, p in m.named_parameters():
        np.testing.assert_allclose(p.grad.numpy(), g_r[name], atol=REF_ATOL, rtol=0, err_msg=name)


@needs_kernel
@pytest.mark.parametrize("variants", [dict(layer_norm=True), dict(zoneout=0.1, recurrent_dropout=0.25),
                                      dict(peephole=True, coupled_input_forget=True, cell_clip=0.5)])  # fmt: skip
@pytest.mark.parametrize("B", [5, 21])  # 21 on 2 threads: rows 0-9 and 10-20, each on its own thread
def test_fused_float32_matches_the_loop(variants, B, two_threads):
    torch.manual_seed(0)
    fused = LSTM(16, 24, 2, **variants)
    loop = LSTM(16, 24, 2, impl="loop", **variants)
    loop.load_state_dict(fused.state_dict())
    x = torch.randn(9, B, 16)
    masks = fused.sample_masks(B, 9)
    results = []
    for m in (fused, loop):
        xi = x.clone().requires_grad_()
        out, (h, c) = m(xi, masks=masks)
        (out.square().sum() + h.sum() + c.sum()).backward()
        results.append([out, h, c, xi.grad] + [p.grad for p in m.parameters()])
    atol = F32_ATOL * B / 5  # gradients sum over T * B rows: float32 rounding grows with B
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, atol=atol, rtol=1e-3)


@needs_kernel
def test_fused_without_variants_equals_torch_and_no_grad_path():
    torch.manual_seed(1)
    theirs = torch.nn.LSTM(5, 7, dtype=torch.float64)
    x = torch.randn(6, 3, 5, dtype=torch.float64)
    w_ih, w_hh, b_ih, b_hh = (p.detach() for p in theirs.parameters())
    gx = x @ w_ih.t() + b_ih + b_hh
    h0 = torch.zeros(3, 7, dtype=torch.float64)
    with torch.no_grad():
        y, h, c = cpu_fused.layer(gx, h0, h0, w_hh, Variants(), {}, {}, None)
        out, (h_t, c_t) = theirs(x)
    torch.testing.assert_close(y, out, atol=1e-12, rtol=0)
    torch.testing.assert_close(c, c_t[0], atol=1e-12, rtol=0)
    gx.requires_grad_()
    y2, _, _ = cpu_fused.layer(gx, h0, h0, w_hh, Variants(), {}, {}, None)
    assert torch.equal(y2.detach(), y)  # saving for backward changes no number


@needs_kernel
def test_linear_gradients():
    x = torch.randn(7, 5, dtype=torch.float32, requires_grad=True)
    w = torch.randn(6, 5, dtype=torch.float32, requires_grad=True)
    y = cpu_fused.linear(x, w)
    (y * torch.arange(6.0)).sum().backward()
    x2, w2 = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    ((x2 @ w2.t()) * torch.arange(6.0)).sum().backward()
    torch.testing.assert_close(y, x2 @ w2.t(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x.grad, x2.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(w.grad, w2.grad, atol=1e-5, rtol=1e-5)


def test_kernel_coverage():
    assert "proj_size" in cpu_fused.why_not(3, None)
    assert "float32/float64" in cpu_fused.why_not(0, torch.zeros(1, dtype=torch.bfloat16))
    m = LSTM(3, 4, proj_size=2, layer_norm=True)
    assert kernels.select_lstm("auto", m.variants(), proj_size=2, like=m.weight_ih_l0) is None  # the loop


def test_falls_back_to_the_loop_when_compiling_fails(monkeypatch, caplog):
    saved = dict(cpu_fused._state)
    monkeypatch.setenv("LSTMKIT_NO_COMPILE", "1")
    monkeypatch.setattr(cpu_fused, "_state", {"ops": None, "error": None, "seconds": None})
    try:
        torch.manual_seed(2)
        m = LSTM(3, 4, 2, layer_norm=True, dtype=torch.float64)
        loop = LSTM(3, 4, 2, layer_norm=True, dtype=torch.float64, impl="loop")
        loop.load_state_dict(m.state_dict())
        with caplog.at_level(logging.WARNING, logger="lstmkit.kernels.cpu_fused"):
            assert kernels.select_lstm("auto", m.variants(), like=m.weight_ih_l0) is None
            x = torch.randn(5, 2, 3, dtype=torch.float64)
            assert torch.equal(m(x)[0], loop(x)[0])
            m(x)
        warnings = [r for r in caplog.records if "compiled CPU kernel is unavailable" in r.getMessage()]
        assert len(warnings) == 1  # said once, not per call
        assert "LSTMKIT_NO_COMPILE" in warnings[0].getMessage()
    finally:
        cpu_fused._state.update(saved)


_FEWER_THREADS = """
import torch
from lstmkit.nn import LSTM
torch.manual_seed(0)
m = LSTM(4, 64, zoneout=0.1, dtype=torch.float64).train()
x = torch.randn(5, 1, 4, dtype=torch.float64, requires_grad=True)
masks = m.sample_masks(1, 5, like=x)
outs = []
for n in (1, 4):
    torch.set_num_threads(n)
    x.grad = None
    out, _ = m(x, masks=masks)
    out.sum().backward()
    outs.append((out.detach(), x.grad.clone()))
assert all(torch.allclose(a, b, rtol=0, atol=1e-12) for a, b in zip(*outs))
print("ok")
"""


@pytest.mark.skipif(not cpu_fused.available(), reason="the compiled CPU kernel is unavailable here")
def test_weight_split_runs_with_the_team_openmp_gives():
    """OpenMP may give fewer threads than torch asks for (OMP_THREAD_LIMIT, OMP_DYNAMIC): the small-batch
    weight split then runs on the team it got (a review found it raised), with the one-thread numbers."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_THREAD_LIMIT": "2"}
    res = subprocess.run([sys.executable, "-c", _FEWER_THREADS], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr[-2000:]
