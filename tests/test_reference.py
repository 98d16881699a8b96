"""The NumPy reference: hand-written BPTT against central finite differences (float64), converters,
and the pieces of the NumPy character LM."""

from __future__ import annotations

import numpy as np
import pytest

from lstmkit import reference as ref

GRAD_RTOL = 1e-6  # relative error bound of the gradient check (issue: below 1e-6)


def rel_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(a) + np.linalg.norm(b), 1e-300))


def random_problem(seed: int, proj: bool = False):
    rng = np.random.default_rng(seed)
    T, B, I, H, Q = rng.integers(1, 6), rng.integers(1, 4), rng.integers(1, 5), rng.integers(1, 6), rng.integers(1, 4)
    params = ref.init_lstm_params(I, H, Q, rng, scale=0.5)
    for k in (2, 5, 8, 11, 13):  # non-zero biases
        params[k][:] = rng.standard_normal(params[k].shape) * 0.5
    p = ref.params_to_dict(params)
    if proj:
        P = int(rng.integers(1, H + 1))
        p["W_hr"] = rng.standard_normal((H, P)) * 0.5
        for g in "ifco":
            p[f"W_h{g}"] = rng.standard_normal((P, H)) * 0.5
        p["W_hq"] = rng.standard_normal((P, Q)) * 0.5
    xs = [rng.standard_normal((B, I)) for _ in range(T)]
    h_size = p["W_hi"].shape[0]
    state = (rng.standard_normal((B, h_size)), rng.standard_normal((B, H)))
    weights = {"Y": rng.standard_normal((T * B, Q)), "H": rng.standard_normal((B, h_size)),
               "C": rng.standard_normal((B, H))}  # fmt: skip
    return p, xs, state, weights


def loss_of(p, xs, state, w) -> float:
    """A scalar that touches every output: <wY, Y> + <wH, H_T> + <wC, C_T>."""
    hs, (H, C), _ = ref.layer_forward(xs, state, p)
    Y = np.concatenate([h @ p["W_hq"] + p["b_q"] for h in hs])
    return float((w["Y"] * Y).sum() + (w["H"] * H).sum() + (w["C"] * C).sum())


def numeric_grad(f, x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    g = np.zeros_like(x)
    it = np.nditer(x, flags=["multi_index"])
    for _ in it:
        i = it.multi_index
        old = x[i]
        x[i] = old + eps
        fp = f()
        x[i] = old - eps
        fm = f()
        x[i] = old
        g[i] = (fp - fm) / (2 * eps)
    return g


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("proj", [False, True])
def test_bptt_matches_finite_differences(seed, proj):
    p, xs, state, w = random_problem(seed, proj)
    hs, final, cache = ref.layer_forward(xs, state, p)
    dhs = [w["Y"][t * len(xs[0]) : (t + 1) * len(xs[0])] @ p["W_hq"].T for t in range(len(xs))]
    grads, dxs, (dH0, dC0) = ref.layer_backward(dhs, cache, (w["H"], w["C"]))
    f = lambda: loss_of(p, xs, state, w)
    for name, g in grads.items():
        assert rel_error(g, numeric_grad(f, p[name])) < GRAD_RTOL, name
    for t, x in enumerate(xs):
        assert rel_error(dxs[t], numeric_grad(f, x)) < GRAD_RTOL, f"x_{t}"
    assert rel_error(dH0, numeric_grad(f, state[0])) < GRAD_RTOL
    assert rel_error(dC0, numeric_grad(f, state[1])) < GRAD_RTOL


@pytest.mark.parametrize("seed", range(4))
def test_seed_backward_gives_every_parameter(seed):
    """backward() of the 14-parameter seed model, d2l calling convention, against finite differences."""
    p, xs, state, w = random_problem(seed)
    params = ref.params_from_dict(p)
    Y, (H, C), cache = ref.forward(xs, state, params)
    Y2, (H2, C2) = ref.lstm(xs, state, params)
    np.testing.assert_array_equal(Y, Y2)
    assert Y.shape == (len(xs) * xs[0].shape[0], params[-1].shape[0])
    dparams, dxs, (dH0, dC0) = ref.backward(w["Y"], cache, params, (w["H"], w["C"]))
    assert len(dparams) == 14
    f = lambda: loss_of(ref.params_to_dict(params), xs, state, w)
    for name, g, arr in zip(ref.PARAM_NAMES, dparams, params):
        assert g.shape == arr.shape
        assert rel_error(g, numeric_grad(f, arr)) < GRAD_RTOL, name
    assert rel_error(dC0, numeric_grad(f, state[1])) < GRAD_RTOL


def test_forward_follows_the_equations_by_hand():
    """One step of one unit, computed from the equations with scalars."""
    rng = np.random.default_rng(3)
    params = ref.init_lstm_params(1, 1, 1, rng, scale=1.0)
    p = ref.params_to_dict(params)
    x, h0, c0 = 0.3, -0.2, 0.7
    s = lambda z: 1 / (1 + np.exp(-z))
    pre = {g: x * p[f"W_x{g}"][0, 0] + h0 * p[f"W_h{g}"][0, 0] + p[f"b_{g}"][0] for g in "ifco"}
    c1 = s(pre["f"]) * c0 + s(pre["i"]) * np.tanh(pre["c"])
    h1 = s(pre["o"]) * np.tanh(c1)
    Y, (H, C) = ref.lstm([np.array([[x]])], (np.array([[h0]]), np.array([[c0]])), params)
    assert C[0, 0] == pytest.approx(c1, abs=1e-15)
    assert H[0, 0] == pytest.approx(h1, abs=1e-15)
    assert Y[0, 0] == pytest.approx(h1 * p["W_hq"][0, 0] + p["b_q"][0], abs=1e-15)


def test_converters_round_trip_and_gate_order():
    rng = np.random.default_rng(1)
    p = ref.params_to_dict(ref.init_lstm_params(3, 4, 2, rng, scale=1.0)[:12])
    p["W_hr"] = rng.standard_normal((4, 2))
    for g in "ifco":
        p[f"W_h{g}"] = rng.standard_normal((2, 4))
    sd = ref.to_torch(p, layer=1, reverse=True)
    assert set(sd) == {f"{k}_l1_reverse" for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")}
    assert sd["weight_ih_l1_reverse"].shape == (16, 3)
    assert sd["weight_hr_l1_reverse"].shape == (2, 4)
    # rows 8..12 are gate g, the candidate, which the seed names c
    np.testing.assert_array_equal(sd["weight_ih_l1_reverse"][8:12], p["W_xc"].T)
    back = ref.from_torch(sd, layer=1, reverse=True)
    for k, v in p.items():
        np.testing.assert_array_equal(back[k], v)
    with pytest.raises(ValueError, match="weight_ih_l0"):
        ref.from_torch(sd, layer=0)


def test_softmax_cross_entropy_gradient():
    rng = np.random.default_rng(0)
    logits, targets = rng.standard_normal((7, 5)), rng.integers(0, 5, 7)
    loss, d = ref.softmax_cross_entropy(logits, targets)
    f = lambda: ref.softmax_cross_entropy(logits, targets)[0]
    assert rel_error(d, numeric_grad(f, logits)) < GRAD_RTOL
    assert loss == pytest.approx(
        -np.mean(np.log(np.exp(logits) / np.exp(logits).sum(1, keepdims=True))[np.arange(7), targets])
    )


def test_clip_and_sgd_and_one_hot():
    g = [np.full(4, 3.0), np.full(1, 4.0)]  # norm sqrt(36 + 16)
    norm = ref.clip_gradients(g, 1.0)
    assert norm == pytest.approx(np.sqrt(52))
    assert np.sqrt(sum((x**2).sum() for x in g)) == pytest.approx(1.0)
    p = [np.ones(2)]
    ref.sgd(p, [np.array([0.5, -1.0])], lr=2.0)
    np.testing.assert_array_equal(p[0], [0.0, 3.0])
    np.testing.assert_array_equal(ref.one_hot(np.array([2, 0]), 3), [[0, 0, 1], [1, 0, 0]])
    assert ref.perplexity(np.log(7.0)) == pytest.approx(7.0)


def test_char_lm_learns_and_generates():
    text = "abcabcabd" * 60
    cfg = ref.CharLMConfig(hidden=16, seq_len=8, batch_size=4, lr=2.0, minutes=0.08, log_every=10, init_scale=0.3)
    lines = []
    params, vocab, history = ref.train_char_lm(text, cfg, prefix="abc", log=lines.append)
    assert vocab == ["a", "b", "c", "d"]
    assert history[-1] < history[0]  # perplexity falls
    assert history[-1] < 2.0  # the text is nearly deterministic (perplexity 4 = guessing)
    assert lines[-1].startswith("sample: abc")
    greedy = ref.generate("ab", 6, params, vocab)
    assert greedy.startswith("abcab")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        ref.generate("xyz", 3, params, vocab)


def test_char_lm_rejects_short_text():
    with pytest.raises(ValueError, match="at least"):
        ref.train_char_lm("abc", ref.CharLMConfig())


def test_reference_demo_cli_runs(tmp_path, capsys):
    f = tmp_path / "t.txt"
    f.write_text("hello world, " * 300, encoding="utf-8")
    assert ref.main(["--data", str(f), "--minutes", "0.03", "--hidden", "8", "--log-every", "5"]) == 0
    out = capsys.readouterr().out
    assert "perplexity" in out and "sample:" in out
    with pytest.raises(FileNotFoundError):
        ref.main(["--data", str(tmp_path / "missing.txt")])
