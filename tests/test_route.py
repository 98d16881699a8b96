"""impl="auto" on a GPU: the plain call runs on the fastest path that covers it, timed on the first call of each kind
(kernels/route.py). No GPU here: the timing logic runs on CPU tensors, with scripted clocks where the choice is
asserted (never a timed assertion) and the host's clock where only what the timing leaves behind is checked."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import pytest
import torch
from torch import _VF

from lstmkit import kernels
from lstmkit.kernels import cluster_lstm as cl
from lstmkit.kernels import native, route
from lstmkit.kernels import triton_lstm as tk

KW = dict(bias=True, num_layers=1, dropout=0.0, training=False, bidirectional=False, batch_first=False)


@pytest.fixture(autouse=True)
def _fresh(monkeypatch):
    route.reset()
    monkeypatch.setattr(route, "TUNE", True)
    yield
    route.reset()


def _call(T=5, B=3, I=4, H=6, layers=1, dirs=1, grad=False, seed=0, **kw):
    g = torch.Generator().manual_seed(seed)
    m = torch.nn.LSTM(I, H, num_layers=layers, bidirectional=dirs == 2, **({"dropout": kw["dropout"]} if kw.get(
        "dropout") else {}))  # fmt: skip
    for p in m.parameters():
        with torch.no_grad():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        p.requires_grad_(grad)
    x = torch.randn(T, B, I, generator=g)
    hx = (torch.randn(layers * dirs, B, H, generator=g), torch.randn(layers * dirs, B, H, generator=g))
    args = {**KW, "num_layers": layers, "bidirectional": dirs == 2, **kw}
    return m, x, hx, args


def _on_backward(t: torch.Tensor, fn):
    """``t`` unchanged, its gradient passed through ``fn`` on the way back (a counter, or a wrong backward)."""

    class OnBackward(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.view_as(x)

        @staticmethod
        def backward(ctx, g):
            return fn(g)

    return OnBackward.apply(t)


class _Script:
    """Candidates whose "times" are scripted: each call records its name; ``_sample`` returns the script's time
    for the candidate that ran in it."""

    def __init__(self, times, monkeypatch, fail=(), exc=RuntimeError):
        self.times, self.calls, self.fail, self.exc = times, [], set(fail), exc
        self.last = None
        for name in ("cluster", "triton", "native"):
            monkeypatch.setattr(route, f"_{name}", self._fn(name))
        monkeypatch.setattr(route, "_sample", self._sample)

    def _fn(self, name):
        def fn(input, hx, weights, **kw):
            self.calls.append(name)
            self.last = name
            if name in self.fail:
                raise self.exc(f"{name}: launch failed")
            return native.lstm(input, hx, weights, **kw)

        return fn

    def _sample(self, fn, device):
        fn()
        return self.times[self.last]

    def cands(self, *names):
        return {n: getattr(route, f"_{n}") for n in names}


def test_impl_auto_sends_plain_gpu_calls_to_the_router_and_keeps_the_fixed_policy_without_it(monkeypatch):
    """With timing on (the default), every plain float32 / bfloat16 / float16 GPU module without projections goes
    through route.lstm; LSTMKIT_ROUTE_TUNE=0 keeps run 6's fixed policy; variants, projections, float64 and the CPU
    are untouched."""
    pytest.importorskip("triton")
    gpu = lambda dt: SimpleNamespace(is_cuda=True, dtype=dt, device=torch.device("cuda"))  # noqa: E731
    for dt in (torch.float32, torch.bfloat16, torch.float16):
        assert kernels.select_lstm("auto", (), like=gpu(dt)) is route.lstm
    assert kernels.select_lstm("auto", (), like=gpu(torch.float64)) is native.lstm
    assert kernels.select_lstm("auto", (), proj_size=2, like=gpu(torch.bfloat16)) is native.lstm
    assert kernels.select_lstm("auto", ("peephole",), like=gpu(torch.bfloat16)) in (cl.variant_layer,
                                                                                       tk.variant_layer)  # fmt: skip
    assert kernels.select_lstm("auto", (), like=torch.zeros(1)) is native.lstm
    assert kernels.select_lstm("triton", (), like=gpu(torch.float32)) is tk.lstm_or_native
    monkeypatch.setattr(route, "TUNE", False)
    monkeypatch.setattr(cl, "ROUTE", True)
    assert kernels.select_lstm("auto", (), like=gpu(torch.float32)) is native.lstm
    assert kernels.select_lstm("auto", (), like=gpu(torch.bfloat16)) is cl.lstm_or_next
    assert kernels.select_lstm("auto", (), like=gpu(torch.float16)) is cl.lstm_or_native


def test_the_static_policy_is_run_6s(monkeypatch):
    """route.static (timing off, or a call that may not be timed) is what impl="auto" did before: bf16 -> the
    cluster routing (then Triton, then cuDNN), fp16 -> the cluster routing or cuDNN, fp32 -> cuDNN."""
    _, x, hx, kw = _call()
    w = [torch.zeros(24, 4), torch.zeros(24, 6)]
    monkeypatch.setattr(cl, "ROUTE", True)
    assert route.static(x, hx, [t.bfloat16() for t in w], kw) is cl.lstm_or_next
    assert route.static(x, hx, [t.half() for t in w], kw) is cl.lstm_or_native
    assert route.static(x, hx, w, kw) is native.lstm
    monkeypatch.setattr(cl, "ROUTE", False)
    assert route.static(x, hx, [t.bfloat16() for t in w], kw) is tk.lstm_or_native
    assert route.static(x, hx, [t.half() for t in w], kw) is native.lstm


def test_nothing_is_timed_off_the_gpu_with_timing_off_or_under_autocast(monkeypatch):
    """A CPU call, or any call with LSTMKIT_ROUTE_TUNE=0, runs the static policy, with torch's numbers."""
    m, x, hx, kw = _call()
    assert not route.may_time(x)
    monkeypatch.setattr(route, "tune", lambda *a, **k: pytest.fail("timed a call that may not be"))
    out, h, c = route.lstm(x, hx, m._flat_weights, **kw)
    want, (hw, cw) = m(x, hx)
    assert torch.equal(out, want) and torch.equal(h, hw) and torch.equal(c, cw)
    fake = SimpleNamespace(is_cuda=True)
    monkeypatch.setattr(route, "_capturing", lambda: False)
    assert route.may_time(fake)
    monkeypatch.setattr(route, "TUNE", False)
    assert not route.may_time(fake)
    monkeypatch.setattr(route, "TUNE", True)
    monkeypatch.setattr(route, "_autocast_on", lambda: True)
    assert not route.may_time(fake)
    monkeypatch.setattr(route, "_autocast_on", lambda: False)
    monkeypatch.setattr(route, "_capturing", lambda: True)
    assert not route.may_time(fake)
    with torch.autocast("cpu"):  # (CPU autocast is not CUDA's)
        assert not route._autocast_on()


def test_the_fastest_candidate_is_chosen_once_per_kind_and_remembered(monkeypatch, caplog):
    """Each candidate runs once untimed, then REPEATS times interleaved; the fastest median wins; the next call of
    the same kind (a length in the same power-of-two bucket) runs it without timing; another kind is timed."""
    s = _Script({"cluster": 3.0, "triton": 1.0, "native": 2.0}, monkeypatch)
    m, x, hx, kw = _call(T=35)
    k = route.key(x, hx, m._flat_weights, kw)
    with caplog.at_level("INFO", logger="lstmkit.kernels.route"):
        chosen = route.tune(k, s.cands("cluster", "triton", "native"), x, hx, m._flat_weights, kw)
    assert chosen == "triton"
    # (cuDNN first: the reference every other path's output is compared with)
    assert s.calls == ["native"] * 2 + ["cluster"] * 2 + ["triton"] * 2 + ["native", "cluster", "triton"] * (
        route.REPEATS - 1)  # fmt: skip
    assert "triton 1.000 ms" in caplog.text and "-> triton" in caplog.text
    (row,) = route.decisions()
    assert row["chosen"] == "triton" and row["ms"] == {"cluster": 3.0, "triton": 1.0, "native": 2.0}
    assert row["T_max"] == 64 and row["batch"] == 3 and row["hidden_size"] == 6 and row["static"] == "native"
    # the router now runs triton for that kind without timing, for T = 33..64
    monkeypatch.setattr(route, "_why_not_time", lambda x: None)
    monkeypatch.setattr(route, "_covers", lambda name, *a: True)
    monkeypatch.setattr(route, "tune", lambda *a, **k: pytest.fail("timed a kind already timed"))
    s.calls.clear()
    m2, x2, hx2, _ = _call(T=64)
    out, h, c = route.lstm(x2, hx2, m._flat_weights, **kw)
    assert s.calls == ["triton"] and torch.equal(out, native.lstm(x2, hx2, m._flat_weights, **kw)[0])
    assert route.key(x2, hx2, m._flat_weights, kw) == k
    assert route.key(_call(T=65)[1], hx, m._flat_weights, kw) != k
    assert route.key(_call(T=32)[1], hx, m._flat_weights, kw) != k
    assert route.key(x.transpose(0, 1), hx, m._flat_weights, {**kw, "batch_first": True}) != k  # (its own kind)


def test_the_static_choice_is_kept_unless_another_is_margin_faster(monkeypatch):
    """No switch on noise: the static policy's own choice (fp32: cuDNN) stays unless another candidate is at least
    MARGIN faster."""
    m, x, hx, kw = _call()
    k = route.key(x, hx, m._flat_weights, kw)
    s = _Script({"triton": 0.97, "native": 1.0}, monkeypatch)
    assert route.tune(k, s.cands("triton", "native"), x, hx, m._flat_weights, kw) == "native"
    route.reset()
    s = _Script({"triton": 0.90, "native": 1.0}, monkeypatch)
    assert route.tune(k, s.cands("triton", "native"), x, hx, m._flat_weights, kw) == "triton"
    route.reset()
    s = _Script({"triton": 1.5, "native": 1.0}, monkeypatch)
    assert route.tune(k, s.cands("triton", "native"), x, hx, m._flat_weights, kw) == "native"


def test_the_static_choice_for_bfloat16_is_the_triton_kernels_outside_the_cluster_policy(monkeypatch):
    """bf16 past the cluster routing's limits: the static choice (the one the margin protects) is the Triton
    kernels, and the cluster kernels must be MARGIN faster to take the call."""
    m, x, hx, kw = _call(B=20)
    w = [t.detach().bfloat16() for t in m._flat_weights]
    monkeypatch.setattr(cl, "_route_reason", lambda *a: "batch 20 > 16")
    cands = {"cluster": None, "triton": None, "native": None}
    assert route._static_name(x, hx, w, kw, cands) == "triton"
    monkeypatch.setattr(cl, "_route_reason", lambda *a: None)
    assert route._static_name(x, hx, w, kw, cands) == "cluster"
    assert route._static_name(x, hx, [t.float() for t in w], kw, {"triton": None, "native": None}) == "native"


def test_a_candidate_that_fails_while_timed_is_left_out_with_a_warning(monkeypatch):
    m, x, hx, kw = _call()
    x, hx, w = x.bfloat16(), (hx[0].bfloat16(), hx[1].bfloat16()), [t.detach().bfloat16() for t in m._flat_weights]
    k = route.key(x, hx, w, kw)
    s = _Script({"cluster": 0.1, "triton": 1.0, "native": 2.0}, monkeypatch, fail=("cluster",))
    monkeypatch.setattr(cl, "_FAILED", set())
    monkeypatch.setattr(cl, "_route_reason", lambda *a: None)  # (the static choice would be the cluster kernels)
    with pytest.warns(RuntimeWarning, match="cluster kernels failed.*launch failed"):
        assert route.tune(k, s.cands("cluster", "triton", "native"), x, hx, w, kw) == "triton"
    assert "cluster" not in route.decisions()[0]["ms"]
    assert len(cl._FAILED) == 1  # (the static policy will not try that configuration either)
    route.reset()
    s = _Script({"triton": 1.0, "native": 2.0}, monkeypatch, fail=("native",))
    with pytest.raises(RuntimeError, match="native: launch failed"):  # (torch's own error is the user's)
        route.tune(k, s.cands("triton", "native"), x, hx, w, kw)
    assert route.decisions() == []


def test_a_chosen_kernel_that_fails_later_falls_back_to_cudnn(monkeypatch):
    """... not to the static policy, which for bf16 would send the call to the Triton kernels that just failed."""
    m, x, hx, kw = _call()
    s = _Script({"triton": 1.0, "native": 2.0}, monkeypatch)
    monkeypatch.setattr(route, "_why_not_time", lambda x: None)
    monkeypatch.setattr(route, "_covers", lambda name, *a: name != "cluster")
    monkeypatch.setattr(route, "candidates", lambda *a: s.cands("triton", "native"))
    route.lstm(x, hx, m._flat_weights, **kw)
    assert route.decisions()[0]["chosen"] == "triton"
    s.fail.add("triton")
    s.calls.clear()
    with pytest.warns(RuntimeWarning, match="triton kernels failed"):
        out, _, _ = route.lstm(x, hx, m._flat_weights, **kw)
    assert s.calls == ["triton", "native"] and torch.equal(out, m(x, hx)[0])
    assert route._CHOICE == {}
    # the next call of that kind is timed again, without the failed kernel (one candidate left: not timed at all)
    monkeypatch.setattr(route, "candidates", lambda *a: s.cands("triton", "native"))
    s.calls.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out, _, _ = route.lstm(x, hx, m._flat_weights, **kw)
    assert s.calls == ["native"] and torch.equal(out, m(x, hx)[0])


def test_a_single_candidate_is_not_timed_and_lengths_go_to_torch(monkeypatch):
    m, x, hx, kw = _call()
    monkeypatch.setattr(route, "_why_not_time", lambda x: None)
    monkeypatch.setattr(route, "tune", lambda *a, **k: pytest.fail("timed a call only one path covers"))
    monkeypatch.setattr(route, "_covers", lambda name, *a: name == "native")
    out, _, _ = route.lstm(x, hx, m._flat_weights, **kw)
    assert torch.equal(out, m(x, hx)[0])
    assert route._CHOICE == {route.key(x, hx, m._flat_weights, kw): "native"}  # (not asked again)
    lengths = torch.tensor([5, 3, 2])
    out, _, _ = route.lstm(x, hx, m._flat_weights, **kw, lengths=lengths)
    assert torch.equal(out, native.lstm(x, hx, m._flat_weights, **kw, lengths=lengths)[0])


def test_timing_a_training_call_leaves_no_gradient_and_draws_the_same_dropout(monkeypatch):
    """Timing runs the backward too where the call trains (torch.autograd.grad: no parameter's .grad is touched),
    and without dropout: no random number is drawn, so dropout between layers draws what it would have drawn
    without the timing (on a GPU, cuDNN's dropout state is not reseeded either: the generators are not set)."""
    m, x, hx, kw = _call(T=4, B=2, layers=2, grad=True, dropout=0.5, training=True)
    x.requires_grad_(True)
    backward = []

    seen = []

    def slow(input, hx, weights, **kw):
        seen.append(kw["dropout"])
        out, h, c = native.lstm(input, hx, weights, **kw)
        return _on_backward(out, lambda g: backward.append(1) or g), h, c

    set_calls = []
    monkeypatch.setattr(torch, "set_rng_state", lambda *a: set_calls.append(a))

    k = route.key(x, hx, m._flat_weights, kw)
    assert k[10] and k[11]  # (grad, dropout)
    torch.manual_seed(7)
    want = native.lstm(x, hx, m._flat_weights, **kw)[0]
    torch.manual_seed(7)
    route.tune(k, {"triton": slow, "native": native.lstm}, x, hx, m._flat_weights, kw)
    got = native.lstm(x, hx, m._flat_weights, **kw)[0]
    assert torch.equal(got, want)
    assert len(backward) == 1 + route.REPEATS  # (every call of the candidate was differentiated)
    assert seen == [0.0] * (1 + route.REPEATS) and set_calls == []  # (no dropout, no generator set)
    assert all(p.grad is None for p in m.parameters()) and x.grad is None
    with torch.no_grad():
        assert not route.key(x, hx, m._flat_weights, kw)[10]


def test_long_calls_are_timed_fewer_times():
    assert route._repeats(0.5) == route.REPEATS
    assert route._repeats(400.0) == 2
    assert route._repeats(5000.0) == 1


def test_variant_layers_time_the_cluster_kernels_against_the_triton_kernels(monkeypatch):
    """A variant layer (cluster_lstm.variant_layer, what impl="auto" runs per layer for variants on a GPU) that both
    kernels cover is timed once per kind, in place of the cluster routing's batch limits; the Triton kernels'
    own error is the caller's (the module then runs its loop); a failed cluster launch is left out and
    remembered as the fixed policy remembers it."""
    from lstmkit.nn.variants import Variants

    calls = []
    times = {"cluster": 2.0, "triton": 1.0}

    def fake(name):
        def fn(gx, *a, **k):
            calls.append(name)
            if name in fail:
                raise RuntimeError(f"{name} failed")
            return gx[..., : gx.shape[-1] // 4] * 2, None, None

        return fn

    fail = set()
    last = {}
    monkeypatch.setattr(cl, "_variant_layer", lambda *a, **k: (last.update(n="cluster"), fake("cluster")(*a))[1])
    monkeypatch.setattr(tk, "variant_layer", lambda *a, **k: (last.update(n="triton"), fake("triton")(*a))[1])
    monkeypatch.setattr(route, "_sample", lambda fn, device: (fn(), times[last["n"]])[1])
    monkeypatch.setattr(route, "_why_not_time", lambda x: None)
    monkeypatch.setattr(cl, "_variant_reason", lambda *a: None)
    monkeypatch.setattr(cl, "_runnable_reason", lambda *a: None)
    monkeypatch.setattr(cl, "_FAILED", set())
    v = Variants.build(peephole=True)
    gx = torch.randn(5, 20, 4 * 16, dtype=torch.bfloat16, requires_grad=True)
    z = torch.zeros(20, 16, dtype=torch.bfloat16)
    w = torch.zeros(64, 16, dtype=torch.bfloat16, requires_grad=True)
    y, _, _ = cl.variant_layer(gx, z, z, w, v, {}, {}, None)
    # (the Triton kernels first: the reference the cluster kernels' output is compared with)
    assert calls == ["triton", "triton", "cluster", "cluster"] + ["triton", "cluster"] * (route.REPEATS - 1) + [
        "triton"]  # fmt: skip
    (row,) = route.decisions()
    assert row["kind"] == "variant layer" and row["static"] == "triton" and row["chosen"] == "triton"  # (20 > 16)
    assert row["grad"] and row["variants"] == v and gx.grad is None and w.grad is None
    calls.clear()
    cl.variant_layer(gx, z, z, w, v, {}, {}, None)
    assert calls == ["triton"]  # (remembered)
    # the cluster kernels faster by more than the margin: chosen, for another kind (a shorter length)
    route.reset()
    times.update(cluster=0.5)
    cl.variant_layer(gx[:2], z, z, w, v, {}, {}, None)
    assert route.decisions()[0]["chosen"] == "cluster" and route.decisions()[0]["T_max"] == 2
    # a cluster launch that fails while timed: left out, remembered in cluster_lstm._FAILED, one warning
    route.reset()
    fail.add("cluster")
    with pytest.warns(RuntimeWarning, match="cluster LSTM kernels failed"):
        cl.variant_layer(gx, z, z, w, v, {}, {}, None)
    assert route.decisions()[0]["ms"].keys() == {"triton"} and len(cl._FAILED) == 1
    # the Triton kernels' own error (e.g. kernels.Unsupported) reaches the caller
    route.reset()
    fail.add("triton")
    monkeypatch.setattr(cl, "_FAILED", set())
    with pytest.raises(RuntimeError, match="triton failed"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cl.variant_layer(gx, z, z, w, v, {}, {}, None)


def test_the_router_runs_the_chosen_kernel_with_the_calls_own_arguments(monkeypatch):
    """End to end on CPU tensors (the Triton kernels in the interpreter, float64): a two-layer bidirectional
    batch-first training call with a given state through route.lstm, timed and then run on whichever path won,
    gives torch's numbers and gradients, and the timing left no gradient behind."""
    pytest.importorskip("triton")
    monkeypatch.setattr(route, "_why_not_time", lambda x: None)
    monkeypatch.setattr(route, "REPEATS", 2)
    real_covers = route._covers
    monkeypatch.setattr(route, "_covers", lambda name, *a: name != "cluster" and (name != "triton" or tk.HAVE_TRITON))
    m, x, hx, kw = _call(T=3, B=2, I=5, H=4, layers=2, dirs=2, grad=True, batch_first=True, training=True)
    m = m.double()
    x = x.double().transpose(0, 1).contiguous().requires_grad_()
    hx = tuple(h.double().requires_grad_() for h in hx)
    w = m._flat_weights
    for chosen in ("triton", "native"):
        route.reset()
        last = [None]
        monkeypatch.setattr(route, "_sample", lambda fn, device, c=chosen, last=last: (fn(), 1.0 if c == last[0]
                                                                                        else 2.0)[1])  # fmt: skip
        for name in ("triton", "native"):
            monkeypatch.setattr(route, f"_{name}", _tagged(getattr(route, f"_{name}"), name, last))
        out, h, c = route.lstm(x, hx, w, **kw)
        assert route.decisions()[0]["chosen"] == chosen and route.decisions()[0]["batch_first"]
        assert x.grad is None and all(p.grad is None for p in m.parameters())
        want, hw, cw = _VF.lstm(x, hx, w, True, 2, 0.0, True, True, True)  # (torch.nn.LSTM's own call, training)
        for a, b in ((out, want), (h, hw), (c, cw)):
            assert torch.allclose(a, b, atol=1e-10, rtol=0)
        g = [torch.autograd.grad((t * (i + 1)).sum(), [x, *hx, *w], retain_graph=True) for i, t in enumerate(
            (out, h, c))]  # fmt: skip
        gw = [torch.autograd.grad((t * (i + 1)).sum(), [x, *hx, *w], retain_graph=True) for i, t in enumerate(
            (want, hw, cw))]  # fmt: skip
        for ga, gb in zip(g, gw):
            for a, b in zip(ga, gb):
                assert torch.allclose(a, b, atol=1e-10, rtol=0)
        monkeypatch.setattr(route, "_triton", route.__dict__["_triton"].inner)
        monkeypatch.setattr(route, "_native", route.__dict__["_native"].inner)
    assert real_covers("cluster", x, hx, w, kw) is False  # (the CPU: the cluster kernels never cover a call)


def _tagged(fn, name, last):
    def tagged(*a, **k):
        last[0] = name
        return fn(*a, **k)

    tagged.inner = fn
    return tagged


def test_timing_touches_no_hook_gradient_or_graph_of_the_callers():
    """The timed calls run on detached aliases of the call's tensors: a non-leaf input that retains its gradient
    gets none, no tensor or parameter hook fires, no parameter's .grad is set."""
    m, x0, hx, kw = _call(grad=True, training=True)
    x0.requires_grad_(True)
    x = x0 * 1.0  # (a non-leaf, as an embedding's output is)
    x.retain_grad()
    fired = []
    x.register_hook(lambda g: fired.append("input"))
    for p in m.parameters():
        p.register_hook(lambda g: fired.append("parameter"))
    k = route.key(x, hx, m._flat_weights, kw)
    route.tune(k, {"triton": native.lstm, "native": native.lstm}, x, hx, m._flat_weights, kw)
    assert fired == [] and x.grad is None and x0.grad is None and all(p.grad is None for p in m.parameters())


def test_evaluation_with_gradients_on_is_not_timed(monkeypatch):
    """model.eval() without torch.no_grad(): cuDNN has no backward in evaluation mode, our kernels have, so timing
    a forward only could choose a path the caller's backward then fails on: the static policy runs instead."""
    m, x, hx, kw = _call(grad=True)
    assert not kw["training"]
    monkeypatch.setattr(route, "_why_not_time", lambda x: None)
    monkeypatch.setattr(route, "tune", lambda *a, **k: pytest.fail("timed an evaluation call with gradients"))
    out, _, _ = route.lstm(x, hx, m._flat_weights, **kw)
    assert torch.equal(out, m(x, hx)[0]) and route._CHOICE == {}


def test_nothing_is_timed_under_compiler_tracing_or_deterministic_algorithms(monkeypatch):
    fake = SimpleNamespace(is_cuda=True)
    monkeypatch.setattr(route, "_capturing", lambda: pytest.fail("asked about capture while compiling"))
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert not route.may_time(fake)  # (asked first: the capture query breaks a fullgraph trace)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: False)
    monkeypatch.setattr(route, "_capturing", lambda: False)
    assert route.may_time(fake)
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    assert not route.may_time(fake)
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", False)
    monkeypatch.setattr(torch, "are_deterministic_algorithms_enabled", lambda: True)
    assert not route.may_time(fake)


def test_a_candidate_raising_any_exception_is_left_out(monkeypatch):
    """Triton's compile errors (OutOfResources, CompilationError) are not RuntimeErrors."""
    triton_errors = pytest.importorskip("triton.errors")

    class CompilationError(triton_errors.TritonError):
        pass

    m, x, hx, kw = _call()
    k = route.key(x, hx, m._flat_weights, kw)
    s = _Script({"triton": 0.5, "native": 1.0}, monkeypatch, fail=("triton",), exc=CompilationError)
    with pytest.warns(RuntimeWarning, match="triton kernels failed.*CompilationError"):
        assert route.tune(k, s.cands("triton", "native"), x, hx, m._flat_weights, kw) == "native"
    # remembered for the kinds of the same batch and size (another length bucket does not try it again)
    assert ("triton", route._coarse(k)) in route._FAILED
    assert route._coarse(route.key(_call(T=100)[1], hx, m._flat_weights, kw)) == route._coarse(k)


def test_out_of_memory_while_timing_keeps_the_static_choice_untimed(monkeypatch, caplog):
    m, x, hx, kw = _call()
    k = route.key(x, hx, m._flat_weights, kw)
    s = _Script({"triton": 0.5, "native": 1.0}, monkeypatch, fail=("triton",), exc=route._OOM)
    with caplog.at_level("WARNING", logger="lstmkit.kernels.route"):
        assert route.tune(k, s.cands("triton", "native"), x, hx, m._flat_weights, kw) == "native"
    assert "out of memory" in caplog.text and route._CHOICE == {k: "native"}
    assert route._FAILED == set() and route.decisions() == []  # (not a failure of the path: nothing remembered)


def test_a_variant_layer_the_triton_kernels_cannot_run_goes_to_the_cluster_kernels(monkeypatch):
    """Where the Triton kernels raise kernels.Unsupported and the cluster kernels run the call, the cluster kernels
    take it (the fixed policy would have sent the module to its loop past 16 rows)."""
    from lstmkit.kernels import Unsupported
    from lstmkit.nn.variants import Variants

    def triton(*a, **k):
        raise Unsupported("too large for int32 offsets")

    monkeypatch.setattr(cl, "_variant_layer", lambda gx, *a, **k: (gx[..., :16] * 3, None, None))
    monkeypatch.setattr(tk, "variant_layer", triton)
    monkeypatch.setattr(route, "_why_not_time", lambda x: None)
    monkeypatch.setattr(cl, "_variant_reason", lambda *a: None)
    monkeypatch.setattr(cl, "_runnable_reason", lambda *a: None)
    monkeypatch.setattr(cl, "_FAILED", set())
    gx = torch.randn(5, 20, 64, dtype=torch.bfloat16)
    z = torch.zeros(20, 16, dtype=torch.bfloat16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (no warning: the Triton kernels' refusal is not a failure)
        y, _, _ = cl.variant_layer(gx, z, z, torch.zeros(64, 16, dtype=torch.bfloat16), Variants.build(peephole=True),
                                   {}, {}, None)  # fmt: skip
    assert torch.equal(y, gx[..., :16] * 3)
    (row,) = route.decisions()
    assert row["chosen"] == "cluster" and row["ms"].keys() == {"cluster"} and row["static"] == "triton"


def test_timing_under_activation_checkpointing(monkeypatch):
    """torch.utils.checkpoint (non-reentrant) drops what the forward saves and recomputes it in the backward: the
    timing's own backward must not trigger that (it would re-enter the call being timed). Gradients are torch's."""
    from torch.utils.checkpoint import checkpoint

    monkeypatch.setattr(route, "_why_not_time", lambda x: None)
    monkeypatch.setattr(route, "candidates", lambda *a: {"triton": route._triton, "native": route._native})
    monkeypatch.setattr(route, "_triton", native.lstm)
    monkeypatch.setattr(route, "_covers", lambda name, *a: True)
    m, x, hx, kw = _call(grad=True, training=True)
    x.requires_grad_(True)
    w = m._flat_weights
    out = checkpoint(lambda x_: route.lstm(x_, hx, w, **kw)[0], x, use_reentrant=False)
    g = torch.autograd.grad(out.sum(), [x, *w])
    want = torch.autograd.grad(native.lstm(x, hx, w, **kw)[0].sum(), [x, *w])
    assert len(route.decisions()) == 1 and all(torch.allclose(a, b) for a, b in zip(g, want))


def test_a_candidate_failing_in_a_later_sample_is_dropped_and_oom_there_keeps_the_static_choice(monkeypatch):
    m, x, hx, kw = _call()
    k = route.key(x, hx, m._flat_weights, kw)
    for exc, want in ((RuntimeError, "native"), (route._OOM, "native")):
        route.reset()
        s = _Script({"triton": 0.5, "native": 1.0}, monkeypatch, exc=exc)
        real = s._fn("triton")
        n = {"calls": 0}

        def flaky(*a, real=real, s=s, n=n, exc=exc, **k):
            n["calls"] += 1
            if n["calls"] == 3:  # (its untimed call and first sample pass, the second sample fails)
                s.last = "triton"
                raise exc("triton: failed in a later sample")
            return real(*a, **k)

        monkeypatch.setattr(route, "_triton", flaky)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert route.tune(k, s.cands("triton", "native"), x, hx, m._flat_weights, kw) == want
        if exc is RuntimeError:
            assert route.decisions()[0]["ms"].keys() == {"native"} and ("triton", route._coarse(k)) in route._FAILED
        else:  # (out of memory: the static choice, untimed, and nothing remembered as failed)
            assert route.decisions() == [] and route._CHOICE == {k: "native"} and not route._FAILED


def test_a_chosen_kernel_raising_a_triton_error_later_runs_on_cudnn(monkeypatch):
    triton_errors = pytest.importorskip("triton.errors")

    class CompilationError(triton_errors.TritonError):
        pass

    m, x, hx, kw = _call()
    s = _Script({"triton": 1.0, "native": 2.0}, monkeypatch, exc=CompilationError)
    monkeypatch.setattr(route, "_why_not_time", lambda x: None)
    monkeypatch.setattr(route, "_covers", lambda name, *a: name != "cluster")
    monkeypatch.setattr(route, "candidates", lambda *a: s.cands("triton", "native"))
    route.lstm(x, hx, m._flat_weights, **kw)
    s.fail.add("triton")
    with pytest.warns(RuntimeWarning, match="CompilationError"):
        out, _, _ = route.lstm(x, hx, m._flat_weights, **kw)
    assert torch.equal(out, m(x, hx)[0])


def test_a_graph_capture_runs_the_path_chosen_before_it(monkeypatch):
    """Under CUDA-graph capture nothing is timed, but a kind chosen in the eager calls before keeps its path (the
    captured graph rounds as the eager warm-up did); a kind not chosen yet takes the static policy."""
    s = _Script({"triton": 1.0, "native": 2.0}, monkeypatch)
    monkeypatch.setattr(route, "_covers", lambda name, *a: True)
    monkeypatch.setattr(route, "_why_not_time", lambda x: "capturing")
    m, x, hx, kw = _call()
    route._CHOICE[route.key(x, hx, m._flat_weights, kw)] = "triton"
    route.lstm(x, hx, m._flat_weights, **kw)
    assert s.calls == ["triton"]
    monkeypatch.setattr(route, "_why_not_time", lambda x: "autocast")  # (any other reason: the static policy)
    route.lstm(x, hx, m._flat_weights, **kw)
    assert s.calls == ["triton"]


def test_the_float32_settings_are_part_of_the_kind(monkeypatch):
    m, x, hx, kw = _call()
    k = route.key(x, hx, m._flat_weights, kw)
    rnn = torch.backends.cudnn.rnn
    monkeypatch.setattr(rnn, "fp32_precision", "ieee" if rnn.fp32_precision != "ieee" else "tf32")
    assert route.key(x, hx, m._flat_weights, kw) != k
    assert route.key(x.bfloat16(), hx, m._flat_weights, kw)[-1] is None  # (16-bit calls: not read)


def test_loading_choices_keeps_valid_keys_and_moves_them_to_the_current_gpu(monkeypatch):
    m, x, hx, kw = _call()
    k = route.key(x, hx, m._flat_weights, kw)
    on_gpu = (torch.device("cuda", 0),) + k[1:]
    vk = ("variant layer", torch.device("cuda", 0), torch.bfloat16, 8, 20, 16, None, False, True, "mbarrier")
    state = {"version": route.STATE_VERSION, "choices": {k: "triton", on_gpu: "cluster", vk: "cluster",
                                                        ("cuda:0", "old layout"): "triton", k[:-1]: "native"}}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    route.load_state_dict(state)
    here = torch.device("cuda", 3)
    assert route._CHOICE == {k: "triton", (here,) + k[1:]: "cluster", vk[:1] + (here,) + vk[2:]: "cluster"}
    route.reset()
    route.load_state_dict({"choices": {k: "triton"}})  # (no version: another layout, ignored)
    assert route._CHOICE == {}


def test_a_path_whose_output_disagrees_with_the_reference_is_never_chosen(monkeypatch, caplog):
    """The router compares each path's first output with the reference path's (cuDNN; for variant layers the
    Triton kernels) on the call being timed: a kernel wrong on this machine is left out however fast, with a
    warning; paths that agree record how far they landed (decisions()'s rel_diff)."""
    m, x, hx, kw = _call()
    k = route.key(x, hx, m._flat_weights, kw)
    s = _Script({"cluster": 0.1, "triton": 0.5, "native": 1.0}, monkeypatch)
    monkeypatch.setattr(cl, "_FAILED", set())
    wrong = s._fn("cluster")
    monkeypatch.setattr(route, "_cluster", lambda *a, **k_: tuple(t * 1.5 for t in wrong(*a, **k_)))
    noisy = s._fn("triton")
    monkeypatch.setattr(route, "_triton", lambda *a, **k_: tuple(t * (1 + 1e-3) for t in noisy(*a, **k_)))
    with pytest.warns(RuntimeWarning, match="cluster kernels failed.*differ from the native path's by 0.5"):
        assert route.tune(k, s.cands("cluster", "triton", "native"), x, hx, m._flat_weights, kw) == "triton"
    (row,) = route.decisions()
    assert row["ms"].keys() == {"triton", "native"} and row["rel_diff"]["cluster"] == pytest.approx(0.5)
    assert row["rel_diff"]["triton"] == pytest.approx(1e-3, rel=1e-2)
    # remembered for this kind only (rounding apart depends on the length and the weights), not as a launch failure
    assert route._FAILED == {("cluster", k)} and not cl._FAILED
    # not finite where the reference is: left out too
    route.reset()
    monkeypatch.setattr(route, "_triton", lambda *a, **k_: tuple(t * float("nan") for t in noisy(*a, **k_)))
    with pytest.warns(RuntimeWarning, match="triton kernels failed"):
        assert route.tune(k, s.cands("triton", "native"), x, hx, m._flat_weights, kw) == "native"


def test_a_path_whose_gradients_disagree_is_never_chosen(monkeypatch):
    """A training call's timing compares the gradients too: a path with a right forward and a wrong backward is
    left out."""

    def bad(input, hx, weights, **kw):
        out, h, c = native.lstm(input, hx, weights, **kw)
        return _on_backward(out, lambda g: g * 3), h, c

    m, x, hx, kw = _call(grad=True, training=True)
    k = route.key(x, hx, m._flat_weights, kw)
    monkeypatch.setattr(route, "_sample", lambda fn, device: (fn(), 1.0)[1])
    with pytest.warns(RuntimeWarning, match="triton kernels failed.*gradients differ"):
        assert route.tune(k, {"triton": bad, "native": native.lstm}, x, hx, m._flat_weights, kw) == "native"
    assert route.decisions()[0]["rel_diff"]["triton"] == pytest.approx(2.0, rel=1e-6)


def test_the_agreement_check_skips_what_has_no_scale():
    """A reference tensor that is exactly zero (no scale to be relative to) or not finite (beyond the dtype's range
    on the reference path too) holds the other path to nothing; a finite reference holds it to finite values."""
    ref = [torch.ones(4), torch.zeros(3), torch.full((2,), float("inf"))]
    rel: dict = {}
    route._agree("native", ref, "native", kept := [], rel)
    route._agree("triton", [torch.ones(4), torch.full((3,), 1e-8), torch.zeros(2)], "native", kept, rel)
    assert rel == {"triton": 0.0}
    with pytest.raises(route.Disagreement, match="differ from the native path's by inf"):
        route._agree("cluster", [torch.full((4,), float("nan")), torch.zeros(3), torch.zeros(2)], "native", kept, rel)
    with pytest.raises(route.Disagreement, match="by inf"):  # (not finite where the reference is zero)
        route._agree("cluster", [torch.ones(4), torch.full((3,), float("nan")), torch.zeros(2)], "native", kept, rel)
    # a gradient one path gives and the other does not (where it is not zero): a disagreement
    with pytest.raises(route.Disagreement, match="by 1"):
        route._agree("cluster", [torch.ones(4), torch.zeros(3), None], "native", [torch.ones(4), None,
                                                                                   torch.ones(2)], rel)  # fmt: skip
    route._agree("cluster", [torch.ones(4), None], "native", [torch.ones(4), torch.zeros(3)], rel)  # (zero: fine)
    # the bound is the reference's dtype's
    with pytest.raises(route.Disagreement):
        route._agree("cluster", [torch.ones(4).bfloat16() * 1.1], "native", [torch.ones(4)], rel)  # (0.1 > 2e-2)


def test_out_of_memory_after_a_disagreement_does_not_keep_the_path_that_disagreed(monkeypatch):
    """The static choice disagreed with cuDNN, then a later candidate ran out of memory: cuDNN is kept, not it."""
    m, x, hx, kw = _call()
    k = route.key(x, hx, m._flat_weights, kw)
    s = _Script({"cluster": 0.1, "triton": 0.5, "native": 1.0}, monkeypatch, fail=("triton",), exc=route._OOM)
    monkeypatch.setattr(cl, "_FAILED", set())
    wrong = s._fn("cluster")
    monkeypatch.setattr(route, "_cluster", lambda *a, **k_: tuple(t * 2 for t in wrong(*a, **k_)))
    monkeypatch.setattr(route, "_static_name", lambda *a: "cluster")
    with pytest.warns(RuntimeWarning, match="cluster kernels failed"):
        assert route.tune(k, s.cands("cluster", "triton", "native"), x, hx, m._flat_weights, kw) == "native"
    assert route._CHOICE == {k: "native"}


def test_a_layer_norm_variant_layer_is_not_held_to_the_triton_kernels_numbers(monkeypatch):
    """At its default gains a long layer-norm module is chaotic: two correct paths round apart past any useful bound,
    so variant layers with layer norm are timed without the agreement check; other variants keep it."""
    from lstmkit.nn.variants import Variants

    seen = []

    def spy(*a, **k):
        seen.append(k.get("reference"))
        return "triton"

    monkeypatch.setattr(route, "choose", spy)
    monkeypatch.setattr(tk, "variant_layer", lambda gx, *a, **k: (gx[..., :16], None, None))
    monkeypatch.setattr(route, "_why_not_time", lambda x: None)
    monkeypatch.setattr(cl, "_variant_reason", lambda *a: None)
    monkeypatch.setattr(cl, "_runnable_reason", lambda *a: None)
    gx = torch.randn(5, 20, 64, dtype=torch.bfloat16)
    z = torch.zeros(20, 16, dtype=torch.bfloat16)
    w = torch.zeros(64, 16, dtype=torch.bfloat16)
    for v in (Variants.build(layer_norm=True), Variants.build(peephole=True)):
        cl.variant_layer(gx, z, z, w, v, {"layernorm_ih_weight": torch.ones(64)} if v.layer_norm else {}, {}, None)
    assert seen == [None, "triton"]
