"""The Triton LSTM kernels (``lstmkit.kernels.triton_lstm``) in Triton's interpreter, on CPU tensors.

Forward and gradients against the NumPy reference (float64: 1e-10; float32: relative 1e-5; bfloat16:
relative 1e-2, the issue's bounds), in both launch modes (persistent: one launch, grid barrier per
step; step-wise: one launch per step) and with tiles small enough to cut the batch and the hidden
units into several programs. Multi-layer, bidirectional, batch-first and bias-free stacks against
``torch.nn.LSTM``. The interpreter is slow, so shapes are tiny (T <= 4, B <= 3, H <= 12).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed (pip install triton); the GPU kernels need it")

from lstmkit import reference as ref  # noqa: E402
from lstmkit.kernels import native  # noqa: E402
from lstmkit.kernels import triton_lstm as tk  # noqa: E402

KW = dict(bias=True, num_layers=1, dropout=0.0, training=True, bidirectional=False, batch_first=False)


def rel(a: torch.Tensor, b: np.ndarray | torch.Tensor) -> float:
    """||a - b|| / ||b||, in float64."""
    a = a.detach().double().numpy()
    b = b.detach().double().numpy() if isinstance(b, torch.Tensor) else b
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def one_layer_case(T, B, I, H, seed):
    """Random torch-layout weights, input, state and output-gradient weights (float64, never zeros)."""
    g = torch.Generator().manual_seed(seed)
    w = [torch.randn(4 * H, I, generator=g, dtype=torch.float64) * 0.5,
         torch.randn(4 * H, H, generator=g, dtype=torch.float64) * 0.5,
         torch.randn(4 * H, generator=g, dtype=torch.float64) * 0.3,
         torch.randn(4 * H, generator=g, dtype=torch.float64) * 0.3]  # fmt: skip
    x = torch.randn(T, B, I, generator=g, dtype=torch.float64)
    h0 = torch.randn(1, B, H, generator=g, dtype=torch.float64)
    c0 = torch.randn(1, B, H, generator=g, dtype=torch.float64)
    gy = torch.randn(T, B, H, generator=g, dtype=torch.float64)  # dLoss/dy
    return w, x, h0, c0, gy


def reference_case(w, x, h0, c0, gy, a=1.3, b=0.7):
    """The NumPy reference's outputs and gradients of loss = sum(y * gy) + a sum(h_T) + b sum(c_T)."""
    sd = {"weight_ih_l0": w[0].numpy(), "weight_hh_l0": w[1].numpy(), "bias_ih_l0": w[2].numpy(),
          "bias_hh_l0": w[3].numpy()}  # fmt: skip
    p = ref.from_torch(sd)
    xs = list(x.numpy())
    hs, (hT, cT), cache = ref.layer_forward(xs, (h0[0].numpy(), c0[0].numpy()), p)
    grads, dxs, (dh0, dc0) = ref.layer_backward(list(gy.numpy()), cache, (np.full_like(hT, a), np.full_like(cT, b)))
    tg = ref.to_torch(grads)  # weight_ih_l0 (4H, I), weight_hh_l0 (4H, H), bias_ih_l0 = db
    return {
        "y": np.stack(hs), "h": hT, "c": cT, "dx": np.stack(dxs), "dh0": dh0, "dc0": dc0,
        "dw_ih": tg["weight_ih_l0"], "dw_hh": tg["weight_hh_l0"], "db": tg["bias_ih_l0"],
    }  # fmt: skip


def triton_case(w, x, h0, c0, gy, dtype, a=1.3, b=0.7, **kw):
    """The Triton kernels' outputs and gradients of the same loss, computed in ``dtype``."""
    leaf = [t.to(dtype).clone().requires_grad_() for t in (x, h0, c0, *w)]
    xt, h0t, c0t, *wt = leaf
    y, h, c = tk.lstm(xt, (h0t, c0t), wt, **{**KW, **kw})
    loss = (y.double() * gy).sum() + a * h.double().sum() + b * c.double().sum()
    loss.backward()
    return {
        "y": y, "h": h[0], "c": c[0], "dx": xt.grad, "dh0": h0t.grad[0], "dc0": c0t.grad[0],
        "dw_ih": wt[0].grad, "dw_hh": wt[1].grad, "db": wt[2].grad, "db_hh": wt[3].grad,
    }  # fmt: skip


# (T, B, I, H, mode, tiles, resident): one program; several batch tiles (persistent); several hidden
# tiles (step-wise); weights streamed in K chunks that do not divide H, persistent and step-wise
CASES = [
    (3, 2, 3, 5, "persistent", None, None),
    (4, 3, 2, 6, "persistent", (1, 16), True),
    (3, 3, 4, 12, "stepwise", (2, 4), True),
    (3, 2, 3, 10, "persistent", (1, 16, 4), False),
    (2, 3, 2, 10, "stepwise", (2, 4, 4), False),
    # tiles of more than 512 units: the fused forward starts its product from gx as one tile (GX4)
    (3, 3, 2, 20, "persistent", (32, 32), True),
    (3, 3, 2, 20, "persistent", (32, 32, 8), False),
]


@pytest.mark.parametrize("fuse", [True, False])  # one product for the four gates (the default), or four
@pytest.mark.parametrize("T,B,I,H,mode,tiles,resident", CASES)
def test_float64_matches_reference(T, B, I, H, mode, tiles, resident, fuse):
    w, x, h0, c0, gy = one_layer_case(T, B, I, H, seed=T * 100 + H)
    want = reference_case(w, x, h0, c0, gy)
    got = triton_case(w, x, h0, c0, gy, torch.float64, mode=mode, tiles=tiles, resident=resident, fuse=fuse)
    for k, v in want.items():
        assert rel(got[k], v) < 1e-10, k
    assert rel(got["db_hh"], want["db"]) < 1e-10


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2), (torch.float16, 1e-2)])
def test_low_precision_within_issue_bounds(dtype, tol):
    """fp32 accumulation and fp32 cell state keep the relative error within the issue's bounds."""
    w, x, h0, c0, gy = one_layer_case(4, 3, 3, 8, seed=5)
    want = reference_case(w, x, h0, c0, gy)
    got = triton_case(w, x, h0, c0, gy, dtype, mode="auto", tiles=(2, 4))
    for k, v in want.items():
        assert torch.isfinite(got[k].float()).all(), k
        assert rel(got[k], v) < tol, (k, rel(got[k], v))
    assert got["y"].dtype == dtype and got["c"].dtype == dtype


@pytest.mark.parametrize("bidirectional,batch_first,bias", [(True, True, False), (False, False, True)])
def test_stack_matches_torch_lstm(bidirectional, batch_first, bias):
    """Two layers composed in Python give torch.nn.LSTM's outputs, states and gradients (float64)."""
    torch.manual_seed(3)
    T, B, I, H = 3, 2, 3, 4
    m = torch.nn.LSTM(I, H, num_layers=2, bias=bias, batch_first=batch_first, bidirectional=bidirectional,
                      dtype=torch.float64)  # fmt: skip
    D = 2 if bidirectional else 1
    x = torch.randn((B, T, I) if batch_first else (T, B, I), dtype=torch.float64)
    h0 = torch.randn(2 * D, B, H, dtype=torch.float64)
    c0 = torch.randn(2 * D, B, H, dtype=torch.float64)
    gy = torch.randn((B, T, D * H) if batch_first else (T, B, D * H), dtype=torch.float64)

    def run(fn):
        leaf = [t.detach().clone().requires_grad_() for t in (x, h0, c0)]
        m.zero_grad()
        y, h, c = fn(*leaf)
        ((y * gy).sum() + 1.3 * h.sum() + 0.7 * c.sum()).backward()
        return [y, h, c] + [t.grad for t in leaf] + [p.grad.clone() for p in m._flat_weights]

    def theirs(x, h0, c0):
        y, (h, c) = m(x, (h0, c0))
        return y, h, c

    def ours(x, h0, c0):
        kw = dict(bias=bias, num_layers=2, dropout=0.0, training=True, bidirectional=bidirectional,
                  batch_first=batch_first)  # fmt: skip
        return tk.lstm(x, (h0, c0), m._flat_weights, **kw)

    want, got = run(theirs), run(ours)
    for a, b in zip(got, want):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def test_eval_ignores_dropout_and_no_grad_runs():
    """training=False switches dropout off; without autograd nothing is saved and the outputs are the same."""
    w, x, h0, c0, _ = one_layer_case(2, 2, 3, 4, seed=11)
    ws = w + [t.clone() for t in w]  # two layers: the second takes H = 4 inputs
    ws[4] = torch.randn(16, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    hx = (torch.cat([h0, h0]), torch.cat([c0, c0]))
    kw = {**KW, "num_layers": 2}
    a = tk.lstm(x, hx, ws, **{**kw, "dropout": 0.5, "training": False})
    with torch.no_grad():
        b = tk.lstm(x, hx, ws, **{**kw, "dropout": 0.0})
    saved = tk.lstm(x.clone().requires_grad_(), hx, ws, **{**kw, "dropout": 0.0})  # stores every step for backward
    for u, v, w in zip(a, b, saved):
        torch.testing.assert_close(u, v, rtol=0, atol=0)
        torch.testing.assert_close(u, w.detach(), rtol=0, atol=0)


def test_supported_configurations():
    w, x, h0, c0, _ = one_layer_case(2, 2, 3, 4, seed=0)
    hx = (h0, c0)
    assert tk.is_supported(x, hx, w, **KW) is False  # CPU tensors: never chosen by the dispatcher
    assert tk.unsupported_reason(x, hx, w, **KW) == "not a CUDA tensor"
    assert tk.unsupported_reason(x, hx, w, **KW, interpret=True) is None
    assert "lengths" in tk.unsupported_reason(x, hx, w, **KW, interpret=True, lengths=torch.tensor([2, 1]))
    assert "proj" in tk.unsupported_reason(x, hx, w + [torch.zeros(4, 2)], **KW, interpret=True)
    assert "mixed" in tk.unsupported_reason(x.float(), hx, w, **KW, interpret=True)
    with pytest.raises(ValueError, match="lengths"):
        tk.lstm(x, hx, w, **KW, lengths=torch.tensor([2, 1]))


def test_dispatcher_helpers():
    """why_not rules a module out at selection time; lstm_or_native falls back per call, with native's numbers."""
    w, x, h0, c0, _ = one_layer_case(3, 2, 3, 4, seed=2)
    assert "CUDA" in tk.why_not((), 0, w[0])
    assert "layer_norm" in tk.why_not(("layer_norm",), 0, w[0])
    assert "proj" in tk.why_not((), 2, w[0])
    got = tk.lstm_or_native(x, (h0, c0), w, **KW)  # CPU tensors: torch's operator runs
    want = native.lstm(x, (h0, c0), w, **KW)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_plan_refuses_impossible_persistence():
    """In the interpreter programs run one after another: a barrier among hidden tiles cannot be passed."""
    assert tk.plan(3, 12, torch.float32, "cpu", tiles=(2, 4)).persistent is False
    assert tk.plan(3, 12, torch.float32, "cpu").persistent is True
    with pytest.raises(ValueError, match="persistent"):
        tk.plan(3, 12, torch.float32, "cpu", mode="persistent", tiles=(2, 4))
    with pytest.raises(ValueError, match="powers of two"):
        tk.plan(3, 12, torch.float32, "cpu", tiles=(3, 4))
    assert tk.plan(3, 12, torch.float32, "cpu", tiles=(2, 4, 4), resident=False).resident is False


def test_gpu_plans_without_a_gpu():
    """The GPU heuristics at the issue's shapes (132 SMs, an H200): persistent where the grid fits."""
    small = tk.plan(8, 256, torch.bfloat16, "cuda", sm_count=132)
    assert small.persistent and small.resident and small.programs <= 132
    big = tk.plan(256, 1024, torch.float32, "cuda", sm_count=132)  # 4 batch tiles: weights too big to keep
    assert big.persistent and not big.resident and big.programs <= 132
    few_sms = tk.plan(256, 1024, torch.float32, "cuda", sm_count=16)
    assert not few_sms.persistent
    with pytest.raises(ValueError, match="persistent"):
        tk.plan(256, 1024, torch.float32, "cuda", mode="persistent", sm_count=16)
    with pytest.raises(ValueError, match="mode"):
        tk.plan(3, 12, torch.float32, "cpu", mode="fast")
    # float32 (tf32x3 products): resident weights spill registers and lost every tuning run on the H200, so
    # neither the heuristic nor tuning offers them; they can still be asked for
    if tk._precision(torch.float32) == "tf32x3":
        assert not tk.plan(8, 256, torch.float32, "cuda", sm_count=132).resident
        assert not any(kw.get("resident") for kw in tk.candidates(8, 256, torch.float32, "cuda", sm_count=132)
                       if "precision" not in kw)
        assert tk.plan(8, 256, torch.float32, "cuda", sm_count=132, resident=True).resident


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="TRITON_INTERPRET=1 turns triton.jit off")
def test_kernels_compile_for_the_gpu_without_one():
    """Both kernels, persistent with resident weights, build for sm_90 (ahead of time, no device needed)."""
    kernels = tk.compile_ahead(5, 2, 16, torch.bfloat16)
    assert set(kernels) == {"fwd", "bwd"}
    for k in kernels.values():
        assert len(k.asm["cubin"]) > 0 and 0 < k.metadata.shared <= tk.SMEM_BUDGET
    with pytest.raises(ValueError, match="CUDA"):
        tk.warmup(5, 2, 16, torch.float32, "cpu")


POLLS = [0, 2] if tk.HAVE_POLL else [0]  # 1 (inline PTX acquire load) cannot run in the interpreter


@pytest.mark.parametrize("poll", POLLS)
def test_barrier_kinds_give_the_same_numbers(poll):
    """tl.atomic_poll (triton >= 3.9) and the atomic spin loop give the reference's numbers."""
    w, x, h0, c0, gy = one_layer_case(3, 3, 2, 6, seed=9)
    want = reference_case(w, x, h0, c0, gy)
    got = triton_case(w, x, h0, c0, gy, torch.float64, mode="persistent", tiles=(1, 16), poll=poll)
    for k, v in want.items():
        assert rel(got[k], v) < 1e-10, k


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="TRITON_INTERPRET=1 turns triton.jit off")
def test_acquire_load_barrier_compiles_to_ld_acquire():
    """The barrier of older triton (poll=1) spins on a gpu-scope acquire load, not an atomic."""
    kernels = tk.compile_ahead(5, 2, 16, torch.bfloat16, poll=1)
    for k in kernels.values():
        assert "ld.acquire.gpu.global.b32" in k.asm["ptx"]
    with pytest.raises(ValueError, match="poll"):
        tk.plan(2, 16, torch.float64, "cpu", poll=1)


@pytest.mark.parametrize("poll", POLLS)
def test_broken_barrier_is_flagged_not_hung(poll):
    """A barrier that can never fill (it waits for 2 programs, 1 runs) times out, sets the error flag, and the
    kernel still finishes every step."""
    T, B, H = 3, 2, 4
    p = tk.plan(B, H, torch.float64, "cpu", mode="persistent")
    g = torch.Generator().manual_seed(0)
    f64 = dict(dtype=torch.float64)
    gx, w = torch.randn(T, B, 4 * H, generator=g, **f64), torch.randn(4 * H, H, generator=g, **f64)
    hs, cs = torch.zeros(T + 1, B, H, **f64), torch.zeros(T + 1, B, H, **f64)
    sync, err = torch.zeros(1, T, dtype=torch.int32), torch.zeros(1, dtype=torch.int32)
    consts = {**p.constants(T, B, H), "n_htiles": 2, "TIMEOUT_NS": 1_000_000, "SPIN_LIMIT": 5, "POLL": poll}
    tk._compiled("fwd", True)[(1, 1)](gx, w, hs, cs, torch.zeros(1), sync, err, t_start=0, n_steps=T, SAVE=False,
                                      **consts)  # fmt: skip
    assert err.item() == 1
    assert sync.tolist() == [[1, 1, 1]]  # every step was reached once
    with pytest.raises(RuntimeError, match="barrier timed out"):
        tk._raise_on_timeout(err, "forward")


def test_tuning_times_each_candidate_and_keeps_the_fastest_working_one(monkeypatch):
    """_tune (what tuned_plan runs once per GPU shape) times every candidate, logs it, skips a plan whose
    barrier times out, and returns the keywords of the fastest; interpreter, float64."""
    monkeypatch.setattr(tk, "TUNE_STEPS", 4)
    key = ("test", 2, 6)
    cands = [dict(mode="persistent"), dict(mode="stepwise"), dict(mode="persistent", tiles=(2, 8))]
    for kind in ("fwd", "bwd"):
        tk.TUNE_LOG.pop(key, None)
        kw = tk._tune(kind, 2, 6, torch.float64, torch.device("cpu"), cands, key)
        assert kw in cands
        log = tk.TUNE_LOG.pop(key)
        assert [r[0] for r in log] == [repr(tk.plan(2, 6, torch.float64, "cpu", **c)) for c in cands]
        assert all(ms is not None and ms > 0 for _, ms in log)
        best = min(range(3), key=lambda i: log[i][1])
        assert kw == cands[best]
    # layer norm times its own kernels (on the fastest persistent plans: persistent only)
    for kind in ("fwd", "bwd"):
        kw = tk._tune(kind, 2, 6, torch.float64, torch.device("cpu"), [dict(mode="persistent")], key, ln=True)
        assert kw == dict(mode="persistent")
        assert [ms is not None and ms > 0 for _, ms in tk.TUNE_LOG.pop(key)] == [True]
    # on the CPU (and with explicit keywords) there is no tuning: the heuristic / the given plan
    cpu = torch.device("cpu")
    assert repr(tk.tuned_plan("fwd", 2, 6, torch.float64, cpu)) == repr(tk.plan(2, 6, torch.float64, "cpu"))
    p = tk.tuned_plan("bwd", 2, 6, torch.float64, torch.device("cpu"), mode="stepwise", tiles=None)
    assert not p.persistent


def test_candidates_cover_the_tilings_and_fit_the_gpu():
    """The plans tuning may choose at the issue's small-batch bf16 shape: several hidden tiles, resident and
    streamed, step-wise; every persistent one fits 132 SMs."""
    cands = tk.candidates(8, 256, torch.bfloat16, "cuda", sm_count=132)
    plans = [tk.plan(8, 256, torch.bfloat16, "cuda", sm_count=132, **kw) for kw in cands]
    assert len({repr(p) for p in plans}) == len(plans) >= 5
    assert {p.BLOCK_H for p in plans} >= {8, 16, 32, 64}
    assert any(not p.persistent for p in plans) and any(p.persistent and not p.resident for p in plans)
    assert not any(p.ll for p in plans)  # LL measured slower on an H200 (docs/gpu.md): asked for only with ll=True
    assert all(p.programs <= 132 for p in plans if p.persistent)
    big = [tk.plan(256, 1024, torch.float16, "cuda", sm_count=132, **kw) for kw in
           tk.candidates(256, 1024, torch.float16, "cuda", sm_count=132)]  # fmt: skip
    assert {p.BLOCK_B for p in big} == {64, 128}


def test_tuning_also_times_the_unfused_gate_products():
    """kind='fwd' / 'bwd' (tuning) adds each persistent candidate with its gate products the other way, so that
    tuning measures both; step-wise plans get none; tf32x3 at 32+ batch rows is unfused by default (its
    forward spills more fused), so its twins are fused."""
    base = tk.candidates(8, 256, torch.bfloat16, "cuda", sm_count=132)
    fwd = tk.candidates(8, 256, torch.bfloat16, "cuda", sm_count=132, kind="fwd")
    twins = [kw for kw in fwd if kw.get("fuse") is False]
    # (the deeper-K and other-precision extras come without twins)
    plain = [kw for kw in base
             if kw.get("mode") != "stepwise" and len(kw.get("tiles", ())) < 3 and "precision" not in kw]  # fmt: skip
    assert all(kw in fwd for kw in base) and len(twins) == len(plain)
    assert tk.candidates(8, 256, torch.bfloat16, "cuda", sm_count=132, kind="bwd") == fwd
    assert all(tk.plan(8, 256, torch.bfloat16, "cuda", sm_count=132, **kw).persistent for kw in twins)
    big = tk.candidates(4096, 4096, torch.bfloat16, "cuda", sm_count=132, kind="fwd")  # (heuristic: step-wise)
    assert all(tk.plan(4096, 4096, torch.bfloat16, "cuda", sm_count=132, **kw).persistent for kw in big if "fuse" in kw)
    fp32 = tk.candidates(256, 1024, torch.float32, "cuda", sm_count=132, kind="bwd")  # unfused by default: fused twins
    assert {kw["fuse"] for kw in fp32 if "fuse" in kw} == {True}
    assert not tk.plan(256, 1024, torch.float32, "cuda", sm_count=132).fuse
    assert tk.plan(8, 256, torch.float32, "cuda", sm_count=132).fuse
    assert "four gate products" in repr(tk.plan(8, 256, torch.bfloat16, "cuda", sm_count=132, fuse=False))


def test_float32_tuning_also_times_fp32_fma_products():
    """Float32 without TF32: tuning times the persistent plans with the products in the other precision too
    (``ieee``, fp32 FMA, where the default is tf32x3), only small tiles (the sm_90 builds of larger ones
    spill); bf16 and TF32 get none, and a precision they cannot take is a clear error."""
    assert tk.FP32_PRECISION in tk.FP32_CHOICES
    other = "ieee" if tk.FP32_PRECISION == "tf32x3" else "tf32x3"
    for B, H in ((8, 256), (1, 512), (20, 656), (16, 768)):
        cands = tk.candidates(B, H, torch.float32, "cuda", sm_count=132, kind="fwd")
        fma = [kw for kw in cands if kw.get("precision") == other]
        assert fma and all(tk.plan(B, H, torch.float32, "cuda", sm_count=132, **kw).persistent for kw in fma)
        assert not any("fuse" in kw for kw in fma)  # (no twins: each would be one more kernel to compile)
        if other == "ieee":
            for kw in fma:
                p = tk.plan(B, H, torch.float32, "cuda", sm_count=132, **kw)
                assert p.BLOCK_B * p.BLOCK_H <= 512 and (not p.resident or p.BLOCK_H == 8)
                assert p.precision == "ieee" and p.constants(5, B, H)["PRECISION"] == "ieee"
                assert "products ieee (fp32 FMA)" in repr(p)
                again = tk.Plan(B, H, torch.float32, torch.device("cuda"), sm_count=132, **tk._plan_kwargs(p))
                assert repr(again) == repr(p)  # (_plan_kwargs keeps the precision: layer norm's and fuse's rebuilds)
    assert not any("precision" in kw for kw in tk.candidates(256, 1024, torch.float32, "cuda", sm_count=132))
    assert not any("precision" in kw for kw in tk.candidates(8, 256, torch.bfloat16, "cuda", sm_count=132))
    with pytest.raises(ValueError, match="only for float32 without TF32"):
        tk.plan(8, 256, torch.bfloat16, "cuda", sm_count=132, precision="ieee")
    with pytest.raises(ValueError, match="'tf32x3' or 'ieee'"):
        tk.plan(8, 256, torch.float32, "cuda", sm_count=132, precision="fp64")
    was = torch.backends.cuda.matmul.allow_tf32  # (a property of torch's module: set and restored by hand)
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        assert not any("precision" in kw for kw in tk.candidates(8, 256, torch.float32, "cuda", sm_count=132))
        with pytest.raises(ValueError, match="TF32 on"):
            tk.plan(8, 256, torch.float32, "cuda", sm_count=132, precision="ieee")
    finally:
        torch.backends.cuda.matmul.allow_tf32 = was


def test_16_bit_tuning_also_times_deeper_k_chunks():
    """16-bit streamed plans also come with K chunks of DEEP_K (more bytes in flight in the K pipeline), each
    within the shared-memory budget, with its default gate products only; float32 gets none (its builds spill)."""
    for B, H in ((8, 256), (20, 656), (16, 768), (256, 1024), (1, 512)):
        for dt in (torch.bfloat16, torch.float16):
            cands = tk.candidates(B, H, dt, "cuda", sm_count=132, kind="bwd")
            deep = [kw for kw in cands if len(kw.get("tiles", ())) == 3]
            assert deep and all(kw["tiles"][2] == tk.DEEP_K and "fuse" not in kw for kw in deep)
            for kw in deep:
                p = tk.plan(B, H, dt, "cuda", sm_count=132, **kw)
                assert p.persistent and not p.resident and p.BLOCK_K == tk.DEEP_K
                assert f"streamed by {tk.DEEP_K}" in repr(p)
                assert tk._streamed_smem(p.BLOCK_B, p.BLOCK_H, p.BLOCK_K, 2) <= tk.SMEM_BUDGET
                # each is a streamed plan of the usual list with its K chunk deepened
                usual = [tk.plan(B, H, dt, "cuda", sm_count=132, **c) for c in cands]
                assert any((u.BLOCK_B, u.BLOCK_H, u.BLOCK_K) == (*kw["tiles"][:2], 64) and u.persistent
                           and not u.resident for u in usual)  # fmt: skip
    assert not any(len(kw.get("tiles", ())) == 3 for kw in tk.candidates(20, 656, torch.float32, "cuda", sm_count=132))
    # (64 x 32 tiles, forward fused: 3 stages x (64 x 128 + 128 x 128) bf16 values = 144 KiB, as compiled for sm_90)
    assert tk._streamed_smem(64, 32, 128, 2) == 147456


def test_large_batch_tuning_also_times_a_deeper_k_pipeline():
    """At B > 16, 16-bit: each deeper-K streamed candidate also with a 4-stage K pipeline where 4 stages fit;
    ``stages`` reaches the launch options only when set (a plan without it keeps triton's default and its
    kernels' cache keys), round-trips through _plan_kwargs, and is checked."""
    cands = tk.candidates(256, 1024, torch.bfloat16, "cuda", sm_count=132, kind="bwd")
    staged = [kw for kw in cands if kw.get("stages")]
    assert staged and all(kw["stages"] == 4 and kw["tiles"][2] == tk.DEEP_K for kw in staged)
    for kw in staged:
        p = tk.plan(256, 1024, torch.bfloat16, "cuda", sm_count=132, **kw)
        assert "4-stage K pipeline" in repr(p) and tk._stage_option(p) == {"num_stages": 4}
        assert tk._streamed_smem(p.BLOCK_B, p.BLOCK_H, p.BLOCK_K, 2, 4) <= tk.SMEM_BUDGET
        assert tk._plan_kwargs(p)["stages"] == 4
        again = tk.Plan(256, 1024, torch.bfloat16, torch.device("cuda"), sm_count=132, **tk._plan_kwargs(p))
        assert repr(again) == repr(p)
    assert not any(kw.get("stages") for kw in tk.candidates(8, 256, torch.bfloat16, "cuda", sm_count=132))
    assert tk._stage_option(tk.plan(8, 256, torch.bfloat16, "cuda", sm_count=132)) == {}
    with pytest.raises(ValueError, match="2..6"):
        tk.plan(8, 256, torch.bfloat16, "cuda", sm_count=132, stages=1)


def test_warmup_and_launch_pass_the_same_launch_options(monkeypatch):
    """Triton keys a compiled kernel on its launch options: warmup (what gpu.py's workers precompile) must pass
    exactly the options a launch passes, num_stages only for a plan that sets it (recorded on a fake kernel;
    no GPU needed to build the GPU plans)."""
    real = {k: tk._compiled(k, True) for k in ("fwd", "bwd")}
    seen: dict = {"warmup": [], "launch": []}
    options = ("num_warps", "num_stages", "launch_cooperative_grid", "num_ctas")

    class Fake:
        def __init__(self, kind):
            self.arg_names, self.fn = real[kind].arg_names, real[kind].fn

        def warmup(self, *args, grid, **kw):
            seen["warmup"].append({k: v for k, v in kw.items() if k in options})

        def __getitem__(self, grid):
            return lambda *args, **kw: seen["launch"].append({k: v for k, v in kw.items() if k in options})

    monkeypatch.setattr(tk, "_compiled", lambda kind, interpret: Fake(kind))
    monkeypatch.setattr(tk, "_sm_count", lambda d: 132)
    for kw in (dict(tiles=(64, 32, 128), resident=False, stages=4), dict(tiles=(64, 32), resident=False)):
        seen["warmup"].clear()
        seen["launch"].clear()
        n = tk.warmup(8, 256, 1024, torch.bfloat16, "cuda", tune=False, inference=False, mode="persistent", **kw)
        assert n == 2
        p = tk.plan(256, 1024, torch.bfloat16, "cuda", mode="persistent", **kw)
        for kind in ("fwd", "bwd"):
            tk._launch(Fake(kind), p, (), {}, 8, 0, down=False)
        assert seen["warmup"] == seen["launch"] and len(seen["launch"]) == 2
        assert seen["launch"][0].get("num_stages") == kw.get("stages")  # (absent unless set: default cache keys)


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="TRITON_INTERPRET=1 turns triton.jit off")
def test_a_deeper_k_pipeline_builds_for_the_gpu():
    """stages=4 reaches the sm_90 build: one more stage of operand buffers in shared memory, the same kernel
    otherwise (a streamed plan, K chunks of 16 over H = 64: four chunks a step)."""
    kw = dict(mode="persistent", tiles=(16, 16, 16), resident=False, which=("bwd",))
    three = tk.compile_ahead(5, 2, 64, torch.bfloat16, **kw)["bwd"]
    four = tk.compile_ahead(5, 2, 64, torch.bfloat16, stages=4, **kw)["bwd"]
    stage = 16 * 16 * 2 + 16 * 16 * 2  # one K chunk of da (16 x 16) and of W (16 x 16), bf16
    assert four.metadata.shared == three.metadata.shared + stage
    copies = [k.asm["ttgir"].count("async_copy_global_to_local") for k in (three, four)]
    assert copies[1] > copies[0]


def test_fp32_fma_products_through_the_layer(monkeypatch):
    """``precision`` reaches both kernels' launches through tk.lstm (the constants they get), and the numbers
    are the spec's in float32 (the interpreter multiplies exactly either way)."""
    seen, launch = [], tk._launch
    monkeypatch.setattr(tk, "_launch", lambda k, p, ptrs, consts, *a, **kw: seen.append(consts["PRECISION"]) or
                        launch(k, p, ptrs, consts, *a, **kw))  # fmt: skip
    w, x, h0, c0, gy = one_layer_case(4, 3, 5, 7, seed=3)
    want = reference_case(w, x, h0, c0, gy)
    for prec in tk.FP32_CHOICES:
        seen.clear()
        got = triton_case(w, x, h0, c0, gy, torch.float32, precision=prec)
        assert seen == [prec, prec], seen  # forward and backward
        for k, v in want.items():
            assert rel(got[k], v) < 1e-5, (prec, k, rel(got[k], v))  # (the issue's float32 bound)


def test_a_given_fuse_keeps_the_tuned_tiles(monkeypatch):
    """fuse (like ln_sync) is not a tiling: asked for alone, the tuned tiles run with the gate products as asked."""
    monkeypatch.setattr(tk, "_tunes", lambda device: True)
    monkeypatch.setattr(tk, "_TUNED", {})
    dev = torch.device("cpu")
    tk._TUNED[tk.tune_key("fwd", 3, 6, torch.float64, dev)] = dict(mode="persistent", tiles=(2, 16))
    p = tk.tuned_plan("fwd", 3, 6, torch.float64, dev, fuse=False)
    assert (p.BLOCK_B, p.BLOCK_H, p.persistent, p.fuse) == (2, 16, True, False)
    assert tk.tuned_plan("fwd", 3, 6, torch.float64, dev).fuse


def test_unfused_from_a_deeper_k_plan_keeps_within_shared_memory(monkeypatch):
    """A deeper-K / 4-stage plan is tuned fused only; asked unfused (fuse=False alone, layer norm's fuse, the step
    ablation's other way), it goes back to K chunks of 64 and triton's default depth: unfused, the backward's
    pipeline holds four gates' chunks a stage (299-491 KB at 64-128 x 32 x 128, over an H100/H200 block's 227 KB)."""
    monkeypatch.setattr(tk, "_tunes", lambda d: True)
    monkeypatch.setattr(tk, "_sm_count", lambda d: 132)
    monkeypatch.setattr(tk, "_TUNED", {})
    dev = torch.device("cuda", 0)
    deep = dict(mode="persistent", tiles=(64, 32, 128), resident=False, stages=4)
    tk._TUNED[tk.tune_key("bwd", 256, 1024, torch.bfloat16, dev)] = deep
    p = tk.tuned_plan("bwd", 256, 1024, torch.bfloat16, dev, fuse=False)
    assert not p.fuse and (p.BLOCK_B, p.BLOCK_H, p.BLOCK_K, p.stages) == (64, 32, 64, None)
    fused = tk.tuned_plan("bwd", 256, 1024, torch.bfloat16, dev, fuse=True)
    assert fused.fuse and (fused.BLOCK_K, fused.stages) == (128, 4)
    # a plan of chunks of 64 keeps its tiles either way
    tk._TUNED[tk.tune_key("bwd", 256, 1024, torch.bfloat16, dev)] = dict(mode="persistent", tiles=(64, 32),
                                                                          resident=False)  # fmt: skip
    p = tk.tuned_plan("bwd", 256, 1024, torch.bfloat16, dev, fuse=False)
    assert not p.fuse and (p.BLOCK_B, p.BLOCK_H, p.BLOCK_K, p.stages) == (64, 32, 64, None)


def test_a_given_fuse_avoids_a_plan_tuning_could_not_run(monkeypatch):
    """The tuned tiles with the gate products the other way may not fit on the GPU (the unfused backward at
    128 x 32 in 16-bit asks for 245760 bytes of shared memory, over an H100's 232448): where tuning tried them
    and they could not launch, a given fuse takes the fastest tuned plan with the products as asked."""
    monkeypatch.setattr(tk, "_tunes", lambda d: True)
    monkeypatch.setattr(tk, "_sm_count", lambda d: 132)
    monkeypatch.setattr(tk, "_TUNED", {})
    monkeypatch.setattr(tk, "_PERSISTENT_RANKED", {})
    monkeypatch.setattr(tk, "TUNE_LOG", {})
    dev = torch.device("cuda", 0)
    key = tk.tune_key("bwd", 256, 1024, torch.bfloat16, dev)
    big = dict(mode="persistent", tiles=(128, 32), resident=False)
    small_unfused = dict(mode="persistent", tiles=(64, 32), resident=False, fuse=False)
    tk._TUNED[key] = big
    tk._PERSISTENT_RANKED[key] = [big, dict(mode="persistent", tiles=(64, 32), resident=False), small_unfused]
    unfused_big = tk.Plan(256, 1024, torch.bfloat16, dev, **big, fuse=False)
    tk.TUNE_LOG[key] = [(repr(tk.Plan(256, 1024, torch.bfloat16, dev, **big)), 0.5), (repr(unfused_big), None)]
    p = tk.tuned_plan("bwd", 256, 1024, torch.bfloat16, dev, fuse=False)
    assert not p.fuse and (p.BLOCK_B, p.BLOCK_H) == (64, 32), p
    # layer norm's plan, tuned on the same tiles: the plain kernel's refusal stands for it too
    tk._TUNED[(*key, "LN", None)] = big
    p = tk._plan_for("bwd", 256, 1024, torch.bfloat16, dev, {"fuse": False}, ln=True)
    assert not p.fuse and (p.BLOCK_B, p.BLOCK_H) == (64, 32), p
    # no tuned plan with the products as asked: the heuristic tiles with them
    tk._PERSISTENT_RANKED[key] = [big]
    p = tk.tuned_plan("bwd", 256, 1024, torch.bfloat16, dev, fuse=False)
    assert not p.fuse and repr(p) == repr(tk.Plan(256, 1024, torch.bfloat16, dev, fuse=False)) != repr(unfused_big)
    tk.TUNE_LOG[key] = [(repr(unfused_big), 0.7)]  # it ran: the tuned tiles, unfused
    p = tk.tuned_plan("bwd", 256, 1024, torch.bfloat16, dev, fuse=False)
    assert not p.fuse and (p.BLOCK_B, p.BLOCK_H) == (128, 32), p


def test_a_given_precision_keeps_tuning(monkeypatch):
    """precision (like fuse) is not a tiling: asked for alone, the fastest tuned persistent plan with those
    products runs (the ranking tuning kept), else the heuristic tiles with them."""
    monkeypatch.setattr(tk, "_tunes", lambda d: True)
    monkeypatch.setattr(tk, "_sm_count", lambda d: 132)
    monkeypatch.setattr(tk, "_TUNED", {})
    monkeypatch.setattr(tk, "_PERSISTENT_RANKED", {})
    dev = torch.device("cuda", 0)
    key = tk.tune_key("fwd", 8, 256, torch.float32, dev)
    if key[-1] != "tf32x3":
        pytest.skip("LSTMKIT_TRITON_FP32 changes the default precision")
    tk._TUNED[key] = dict(mode="persistent", tiles=(16, 32), resident=False)
    fma = dict(mode="persistent", tiles=(16, 16), resident=False, precision="ieee")
    tk._PERSISTENT_RANKED[key] = [tk._TUNED[key], dict(mode="persistent", tiles=(16, 8), resident=True,
                                                       precision="ieee"), fma]  # fmt: skip
    p = tk.tuned_plan("fwd", 8, 256, torch.float32, dev, precision="ieee")
    assert (p.precision, p.BLOCK_H, p.resident) == ("ieee", 8, True)  # the faster of the two FMA plans
    assert repr(tk.tuned_plan("fwd", 8, 256, torch.float32, dev, precision="tf32x3")) == repr(
        tk.tuned_plan("fwd", 8, 256, torch.float32, dev))  # fmt: skip
    p = tk.tuned_plan("fwd", 8, 256, torch.float32, dev, precision="ieee", fuse=False)
    assert (p.precision, p.BLOCK_H, p.fuse) == ("ieee", 8, False)
    monkeypatch.setattr(tk, "_PERSISTENT_RANKED", {})  # nothing ranked: the heuristic tiles, FMA products
    p = tk.tuned_plan("fwd", 8, 256, torch.float32, dev, precision="ieee")
    assert p.precision == "ieee" and repr(p) == repr(tk.plan(8, 256, torch.float32, dev, precision="ieee"))


def test_dispatcher_routes_gpu_calls_to_the_triton_kernels(monkeypatch):
    """impl='auto' on a GPU, the cluster kernels' routing off (tests/test_cluster_lstm.py::test_dispatch has it
    on, the default): plain bfloat16 -> the Triton kernels (per call, native fallback); float32 and float16 ->
    cuDNN; variants (layer norm too) -> variant_layer; projections with variants -> the torch loop (None)."""
    from types import SimpleNamespace

    from lstmkit import kernels
    from lstmkit.kernels import cluster_lstm, route

    monkeypatch.setattr(cluster_lstm, "ROUTE", False)
    monkeypatch.setattr(route, "TUNE", False)  # (the fixed policy; with timing on, tests/test_route.py)

    gpu = lambda dt: SimpleNamespace(is_cuda=True, dtype=dt, device=torch.device("cuda"))  # noqa: E731
    assert kernels.select_lstm("auto", (), like=gpu(torch.bfloat16)) is tk.lstm_or_native
    assert kernels.select_lstm("auto", (), like=gpu(torch.float16)) is native.lstm
    assert kernels.select_lstm("auto", (), like=gpu(torch.float32)) is native.lstm
    assert kernels.select_lstm("auto", (), proj_size=4, like=gpu(torch.bfloat16)) is native.lstm
    assert kernels.select_lstm("auto", ("peephole", "zoneout"), like=gpu(torch.float32)) is tk.variant_layer
    assert kernels.select_lstm("auto", ("layer_norm",), like=gpu(torch.bfloat16)) is tk.variant_layer
    assert kernels.select_lstm("triton", ("layer_norm", "zoneout"), like=gpu(torch.bfloat16)) is tk.variant_layer
    assert kernels.select_lstm("triton", ("cell_clip",), like=gpu(torch.float16)) is tk.variant_layer
    assert kernels.select_lstm("auto", ("layer_norm",), proj_size=3, like=gpu(torch.float32)) is None
    with pytest.raises(ValueError, match="proj"):
        kernels.select_lstm("triton", ("layer_norm",), proj_size=3, like=gpu(torch.bfloat16))


def test_impl_triton_module_is_built_anywhere_and_refused_per_call_off_the_gpu():
    """``LSTM(..., impl="triton")`` is built on the CPU and then moved (``.to("cuda")``), as every model is: the
    name is checked at construction, whether the kernel can run at the call (run 5 on the H200 failed here)."""
    from lstmkit.nn import LSTM

    m = LSTM(4, 4, layer_norm=True, impl="triton")
    with pytest.raises(ValueError, match="not on a CUDA device.*impl='auto'"):
        m(torch.randn(2, 1, 4))
    with pytest.raises(ValueError, match="impl must be one of"):
        LSTM(4, 4, impl="cudnn")


@pytest.mark.parametrize("fuse", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_ll_exchange_gives_the_same_bits(dtype, fuse):
    """The LL exchange (h_t / da_t packed with a ready flag into 32- or 64-bit words, no barrier) decodes to
    exactly the values the barrier path reads: outputs and every gradient are bit-identical."""
    w, x, h0, c0, gy = one_layer_case(4, 3, 5, 12, seed=21)
    # (resident weights: the backward forms dh with four products either way, so fused or not the sums agree)
    plain = triton_case(w, x, h0, c0, gy, dtype, mode="persistent", fuse=fuse)
    ll = triton_case(w, x, h0, c0, gy, dtype, mode="persistent", ll=True, fuse=fuse)
    for k, v in plain.items():
        assert torch.equal(ll[k], v), k


def test_ll_packing_round_trips_and_is_refused_where_it_cannot_run():
    g = torch.Generator().manual_seed(0)
    for dt, xs in ((torch.bfloat16, torch.int32), (torch.float16, torch.int32), (torch.float32, torch.int64)):
        v = torch.randn(3, 7, generator=g).to(dt)
        words = tk._pack(v, xs)
        assert words.dtype == xs and bool((words & 1).all())
        shift = 32 if xs == torch.int64 else 16
        back = (words >> shift).to(torch.int32 if xs == torch.int64 else torch.int16).view(dt)
        assert torch.equal(back, v)
    with pytest.raises(ValueError, match="ll=True"):
        tk.plan(3, 12, torch.float64, "cpu", mode="persistent", ll=True)  # no 64-bit value + flag word
    with pytest.raises(ValueError, match="ll=True"):
        tk.plan(8, 256, torch.bfloat16, "cuda", mode="persistent", resident=False, ll=True, sm_count=132)


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="TRITON_INTERPRET=1 turns triton.jit off")
def test_ll_kernels_spin_on_volatile_loads_without_a_counter_barrier():
    kernels = tk.compile_ahead(16, 8, 64, torch.bfloat16, mode="persistent", resident=True, ll=True)
    for k in kernels.values():
        ptx = k.asm["ptx"]
        assert "ld.volatile.global" in ptx
        assert "atom.global.gpu.acq_rel.add" not in ptx and "red.release" not in ptx


def test_a_launch_with_an_argument_the_kernel_does_not_take_is_an_error():
    """The interpreter ignores unknown keyword arguments (the GPU does not): _launch refuses them everywhere."""
    p = tk.plan(2, 4, torch.float64, "cpu")
    with pytest.raises(TypeError, match="eps"):
        tk._launch(tk._compiled("bwd", True), p, (), {"eps": 1e-5}, 1, 0, down=True)


@pytest.mark.parametrize("T,B,I,H,mode,tiles,resident", CASES)
def test_padded_hidden_units_change_no_number(monkeypatch, T, B, I, H, mode, tiles, resident):
    """On a GPU the hidden units are padded to a multiple of 16 (aligned rows); here to 8 on the CPU. The
    kernels then run 4 x 8 or 4 x 16 gate columns, and the real units' outputs and gradients still equal the
    NumPy reference's at 1e-10 (the extra units have zero weights and stay exactly 0)."""
    monkeypatch.setitem(tk.ALIGN_UNITS, "cpu", 8)
    widths = []
    apply = tk._Recurrence.apply
    monkeypatch.setattr(tk._Recurrence, "apply", lambda gx, *a: widths.append(gx.shape[-1]) or apply(gx, *a))
    w, x, h0, c0, gy = one_layer_case(T, B, I, H, seed=T * 100 + H + 1)
    want = reference_case(w, x, h0, c0, gy)
    got = triton_case(w, x, h0, c0, gy, torch.float64, mode=mode, tiles=tiles, resident=resident)
    assert widths == [4 * (-(-H // 8) * 8)]
    for k, v in want.items():
        assert rel(got[k], v) < 1e-10, k
    assert got["y"].is_contiguous() and got["y"].shape == (T, B, H)


@pytest.mark.parametrize("align", [1, 8])
def test_outputs_are_their_own_tensors_with_fewer_copies(monkeypatch, align):
    """One layer, aligned (1) or padded (8): y, h_n and c_n can be modified in place and the gradients still
    equal the spec's, though the padded layer's y is copied once (not twice) and h_n / c_n of one layer are
    views of the layer's own h_T / c_T (not stacked copies); h_n never aliases y."""
    monkeypatch.setitem(tk.ALIGN_UNITS, "cpu", align)
    T, B, I, H = 3, 2, 4, 5
    w, x, h0, c0, gy = one_layer_case(T, B, I, H, seed=11)
    want = reference_case(w, x, h0, c0, gy)
    leaf = [t.clone().requires_grad_() for t in (x, h0, c0, *w)]
    y, h, c = tk.lstm(leaf[0], (leaf[1], leaf[2]), leaf[3:], **KW)
    assert h.data_ptr() != y[-1].data_ptr() and not torch.equal(h, torch.zeros_like(h))
    # contiguous, as torch.nn.LSTM's (cuDNN refuses a strided hx: the state goes back in at the next call)
    assert y.is_contiguous() and h.is_contiguous() and c.is_contiguous() and h.shape == (1, B, H)
    h_before = h.detach().clone()
    ((y * gy).sum() + 1.3 * h.sum() + 0.7 * c.sum()).backward(retain_graph=True)
    grads = [t.grad.clone() for t in leaf]
    y.mul_(0.0)  # in place, after the graph was used: neither h_n nor the saved state changes
    assert torch.equal(h.detach(), h_before)
    for t in leaf:
        t.grad = None
    y2, h2, c2 = tk.lstm(leaf[0], (leaf[1], leaf[2]), leaf[3:], **KW)
    h2.mul_(2.0)  # in place before backward: allowed, as with torch.nn.LSTM
    c2.add_(1.0)
    ((y2 * gy).sum() + 0.65 * h2.sum() + 0.7 * c2.sum()).backward()
    for g, t, k in zip(grads, leaf, ("dx", "dh0", "dc0", "dw_ih", "dw_hh", "db")):
        assert rel(g, want[k]) < 1e-10 and rel(t.grad, want[k]) < 1e-10, k


def test_pad_recurrent_is_the_two_pads_in_one():
    """stack.pad_recurrent (one pad op) equals pad_gates then pad_dim, forward and gradient."""
    from lstmkit.kernels import stack

    w = torch.randn(4 * 5, 5, dtype=torch.float64, requires_grad=True)
    one = stack.pad_recurrent(w, 8)
    two = stack.pad_dim(stack.pad_gates(w, 0, 5, 8), 1, 8)
    assert one.shape == (32, 8) and torch.equal(one, two)
    g = torch.randn(32, 8, dtype=torch.float64)
    assert torch.equal(torch.autograd.grad(one, w, g)[0], torch.autograd.grad(two, w, g)[0])


def test_no_grad_calls_save_nothing_for_backward(monkeypatch):
    """Under torch.no_grad() the forward kernel runs without saving gates and cell states (SAVE=False), even
    when the weights require gradients (a custom Function's needs_input_grad ignores grad mode)."""
    saves = []
    launch = tk._launch
    monkeypatch.setattr(tk, "_launch", lambda k, p, ptrs, consts, *a, **kw: saves.append(consts.get("SAVE")) or
                        launch(k, p, ptrs, consts, *a, **kw))  # fmt: skip
    w, x, h0, c0, _ = one_layer_case(3, 2, 3, 5, seed=0)
    w = [t.requires_grad_() for t in w]
    with torch.no_grad():
        y0, h, _ = tk.lstm(x, (h0, c0), w, **KW)
    y, _, _ = tk.lstm(x, (h0, c0), w, **KW)
    assert saves == [False, True]
    assert torch.equal(y0, y.detach()) and y.requires_grad and not y0.requires_grad
    y0.mul_(2)  # the no-grad output is not h_n's storage
    assert torch.equal(h[0], y[-1].detach())


def test_step_ablation_runs_its_variants():
    """The GPU diagnostic (barrier, exchange read, the rest, and the gate products the other way) runs its four
    kernels; here in the interpreter, where its times mean nothing, only that every variant compiles and
    launches."""
    out = tk.step_ablation(2, 8, torch.float32, "cpu", T=3)
    assert set(out) == {"plan", "full", "no barrier", "no barrier, no h read", "gate products the other way"}
    assert all(v > 0 for k, v in out.items() if k != "plan")


def test_a_refused_tuning_candidate_is_logged_and_skipped(monkeypatch, caplog):
    """A plan the device refuses (on a GPU: too much shared memory, a grid that cannot be co-resident) is never
    chosen, and why is logged: a GPU-only failure must not cost a device session to diagnose."""
    monkeypatch.setattr(tk, "TUNE_STEPS", 3)
    launch = tk._launch

    def refuse_stepwise(kernel, p, *a, **kw):
        if not p.persistent:
            raise RuntimeError("out of resources: shared memory")
        return launch(kernel, p, *a, **kw)

    monkeypatch.setattr(tk, "_launch", refuse_stepwise)
    key = ("test-refused", 2, 6)
    with caplog.at_level("WARNING", logger=tk.__name__):
        kw = tk._tune("fwd", 2, 6, torch.float64, torch.device("cpu"), [dict(mode="stepwise"), {}], key)
    assert kw == {}
    assert [ms is None for _, ms in tk.TUNE_LOG.pop(key)] == [True, False]
    assert "refused" in caplog.text and "out of resources" in caplog.text
