"""lstmkit.tasks.memory: the generators' distribution facts, the models, the loop and the CLI, tiny."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lstmkit import cli
from lstmkit.tasks import memory
from lstmkit.tasks.memory import data

# -- adding problem --------------------------------------------------------------------------------


def _adding(n=2000, T=40, seed=0):
    return data.adding_batch(np.random.default_rng(seed), n, T)


def test_adding_lengths_markers_and_targets_follow_the_1997_definition():
    T, b = 40, _adding()
    L = b.lengths.numpy()
    assert L.min() == T and L.max() == T + T // 10  # both ends of [T, T + T/10] occur
    assert b.x.shape == (L.max(), 2000, 2)
    values, markers = b.x[..., 0].numpy(), b.x[..., 1].numpy()
    assert np.all(np.abs(values) <= 1.0)
    p1, p2 = b.marks[:, 0].numpy(), b.marks[:, 1].numpy()
    assert set(p1) == set(range(10))  # X1 uniform over the first ten pairs
    assert p2.min() == 0 and p2.max() == T // 2 - 1 and np.all(p1 != p2)  # X2 within the first T/2
    assert np.any(p2 < p1) and np.any(p2 > p1)
    for j in range(len(b)):
        m = markers[:, j]
        assert sorted(np.flatnonzero(m == 1.0)) == sorted([p1[j], p2[j]])
        assert m[L[j] - 1] == -1.0 and (m[0] == -1.0) == (0 not in (p1[j], p2[j]))
        assert np.count_nonzero(m) == 2 + 1 + (0 not in (p1[j], p2[j]))
        assert np.all(b.x[L[j] :, j].numpy() == 0.0)  # padding is zero
    x1, x2 = values[p1, np.arange(2000)], values[p2, np.arange(2000)]
    assert np.all(x1[p1 == 0] == 0.0) and np.all(x2[p2 == 0] == 0.0)  # the paper's rule for a marked first pair
    np.testing.assert_allclose(b.target.numpy(), 0.5 + (x1 + x2) / 4, atol=1e-6)
    assert 0.0 <= b.target.min() and b.target.max() <= 1.0
    assert abs(float(b.target.mean()) - 0.5) < 0.02 and abs(float(b.target.var()) - 1 / 24) < 0.005


def test_generators_are_deterministic_by_seed_and_train_test_streams_are_disjoint():
    a, b, c = _adding(50, seed=1), _adding(50, seed=1), _adding(50, seed=2)
    assert torch.equal(a.x, b.x) and torch.equal(a.target, b.target)
    assert not torch.equal(a.target, c.target)
    train_rng, test_rng = data.streams(0)
    train_again, _ = data.streams(0)
    tr, te = data.adding_batch(train_rng, 200, 20), data.adding_batch(test_rng, 200, 20)
    assert torch.equal(tr.x, data.adding_batch(train_again, 200, 20).x)
    train_keys = {tuple(tr.x[:20, j, 0].tolist()) for j in range(200)}
    assert not train_keys & {tuple(te.x[:20, j, 0].tolist()) for j in range(200)}
    # the stream a run trains on never produces its test set, however long it runs
    spec = memory.task_spec("order4", 20)
    trs, tes = data.streams(3)
    test = spec.make(tes, 64)
    for _ in range(5):
        assert not torch.equal(spec.make(trs, 64).x[:20], test.x[:20])


def test_adding_rejects_too_short_T():
    with pytest.raises(ValueError, match="T >= 20"):
        data.adding_batch(np.random.default_rng(0), 4, 10)


# -- temporal order and copy -----------------------------------------------------------------------


@pytest.mark.parametrize("classes", [4, 8])
def test_temporal_order_layout_windows_and_labels(classes):
    b = data.temporal_order_batch(np.random.default_rng(0), 500, classes, T=100)
    sym = b.x.argmax(-1).numpy()  # (T_max, B)
    L = b.lengths.numpy()
    assert L.min() >= 100 and L.max() <= 110
    assert torch.all(b.x.sum(-1)[: L.min()] == 1)  # one-hot where valid
    windows = data.TEMPORAL_WINDOWS[classes]
    for j in range(len(b)):
        s = sym[: L[j], j]
        assert s[0] == 0 and s[-1] == 1  # E ... B
        xy = np.flatnonzero(s >= 6)
        assert len(xy) == len(windows) and np.all(np.isin(s[1:-1][s[1:-1] < 6], [2, 3, 4, 5]))
        for pos, (lo, hi) in zip(xy, windows):
            assert lo <= pos + 1 <= hi  # the paper's 1-based windows
        bits = s[xy] - 6
        assert b.target[j] == int("".join(map(str, bits)), 2)
    assert set(b.target.tolist()) == set(range(classes))


def test_copy_layout():
    T = 7
    b = data.copy_batch(np.random.default_rng(0), 16, T)
    inp = b.x.argmax(-1)  # (T + 20, B)
    assert b.x.shape == (T + 20, 16, 10) and torch.all(b.lengths == T + 20)
    assert torch.all((inp[:10] >= 1) & (inp[:10] <= 8))
    assert torch.all(inp[10 + T - 1] == data.COPY_DELIMITER)
    assert torch.all(inp[10 : 10 + T - 1] == 0) and torch.all(inp[-10:] == 0)
    assert torch.equal(b.target[-10:], inp[:10]) and torch.all(b.target[:-10] == 0)


# -- models ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("ragged", ["lengths", "gather"])
@pytest.mark.parametrize("model", ["lstm", "gru", "rnn"])
def test_models_have_matched_sizes_and_read_each_sequence_at_its_own_end(model, ragged):
    torch.manual_seed(0)
    H = memory.matched_hidden(model, 16, 2, 1)
    net = memory.MemoryNet(model, 2, H, 1, forget_bias="chrono", t_max=22, ragged=ragged)
    lstm_params = memory.count_parameters(memory.MemoryNet("lstm", 2, 16, 1))
    assert abs(memory.count_parameters(net) - lstm_params) / lstm_params < 0.05
    b = _adding(5, T=20)
    y = net(b.x, b.lengths)  # (5, 1)
    for j in range(5):
        alone = net(b.x[: b.lengths[j], j : j + 1])  # the unpadded sequence by itself
        torch.testing.assert_close(y[j], alone[0], rtol=1e-5, atol=1e-6)
    # the step-by-step unroll of the analysis is the same network
    x = memory.fixed_length(b, 20)
    torch.testing.assert_close(memory.unroll(net, x).y, net(x), rtol=1e-5, atol=1e-6)
    net.readout = "all"  # every step's output: h is zero on the padding either way
    assert torch.all(net(b.x, b.lengths)[b.lengths.max() - 1, b.lengths < b.lengths.max()] == net.out.bias)


def test_chrono_init_opens_the_carousel():
    torch.manual_seed(0)
    net = memory.MemoryNet("lstm", 2, 8, 1, forget_bias="chrono", t_max=100)
    b_f = (net.rnn.bias_ih_l0 + net.rnn.bias_hh_l0)[8:16]
    b_i = (net.rnn.bias_ih_l0 + net.rnn.bias_hh_l0)[:8]
    assert torch.all(b_f >= 0) and torch.all(b_f <= np.log(99)) and torch.allclose(b_i, -b_f)


# -- gradient flow ---------------------------------------------------------------------------------


def test_gradient_flow_vanishes_in_the_rnn_not_in_the_lstm_cell():
    b = data.adding_batch(data.streams(0)[1], 8, 30)
    x = memory.fixed_length(b, 30)
    res = {m: memory.gradient_flow(memory.build_model(memory.MemoryConfig(model=m, T=30, hidden=8)), x, b.target)
           for m in ("lstm", "rnn")}  # fmt: skip
    for r in res.values():
        assert all(len(v) == 30 and np.all(np.isfinite(v)) for v in r.values())
    assert res["rnn"]["dhT_dh"][0] == pytest.approx(np.sqrt(memory.matched_hidden("rnn", 8, 2, 1)))  # identity
    assert res["rnn"]["dL_dh"][-1] < 1e-3 * res["rnn"]["dL_dh"][0]  # vanished over 29 steps
    assert res["lstm"]["dL_dc"][-1] > 100 * res["rnn"]["dL_dh"][-1]  # the carousel keeps it


def test_gate_summary_reads_the_lstm_gates():
    b = data.adding_batch(data.streams(0)[1], 16, 20)
    net = memory.build_model(memory.MemoryConfig(T=20, hidden=8))
    g = memory.gate_summary(net, memory.fixed_length(b, 20), b.marks)
    assert set(g) == {"i_at_marks", "i_elsewhere", "i_elsewhere_max", "f_unit_min", "f_unit_max"}
    assert 0 < g["i_elsewhere"] <= g["i_elsewhere_max"] < 1 and 0 < g["f_unit_min"] <= g["f_unit_max"] < 1
    with pytest.raises(ValueError, match="LSTM only"):
        memory.gate_summary(memory.build_model(memory.MemoryConfig(T=20, model="rnn")), b.x[:20], b.marks)


# -- the loop --------------------------------------------------------------------------------------


class _Oracle(torch.nn.Module):
    """Reads the answer off the adding input: the loop must call it solved at the first check."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.readout = "last"

    def forward(self, x, lengths):
        return (0.5 + (x[..., 0] * (x[..., 1] == 1)).sum(0) / 4 + 0 * self.w).unsqueeze(-1)


def test_loop_stops_when_solved_and_counts_sequences():
    config = memory.MemoryConfig(T=20, batch_size=8, eval_every=32, max_sequences=10_000, n_test=128)
    result, _ = memory.train(config, model=_Oracle())
    assert result.solved and result.sequences == 32 and result.test_wrong == 0 and result.n_test == 128


def test_lstm_learns_the_adding_problem_a_little():
    result, _ = memory.train(memory.MemoryConfig(T=20, max_sequences=2560, eval_every=640, n_test=256))
    assert not result.solved and result.sequences == 2560 and len(result.history) == 4
    assert result.test_loss < 0.9 / 24  # below the best constant prediction, Var(target) = 1/24


@pytest.mark.parametrize("task", ["order4", "order8", "copy"])
@pytest.mark.parametrize("model", ["lstm", "rnn"])
def test_every_task_and_model_runs_end_to_end(task, model):
    cfg = memory.MemoryConfig(task=task, T=20, model=model, batch_size=8, max_sequences=16, eval_every=16, n_test=32)
    result, net = memory.train(cfg)
    assert result.sequences == 16 and 0 <= result.test_wrong <= 32 and np.isfinite(result.test_loss)


# -- CLI, checkpoints, plots -----------------------------------------------------------------------


def test_cli_trains_saves_and_plots(tmp_path, capsys):
    base = ["--T", "20", "--max-sequences", "32", "--eval-every", "32", "--n-test", "32", "--batch-size", "16"]
    for model in ("lstm", "rnn"):
        args = ["memory", "adding", "--model", model, *base, "--out", str(tmp_path / f"{model}.pt")]
        assert cli.main([*args, "--json", str(tmp_path / f"{model}.json")]) == 0
    assert "adding T=20 lstm" in capsys.readouterr().out
    assert json.loads((tmp_path / "lstm.json").read_text())["sequences"] == 32
    config, model = memory.load_run(tmp_path / "lstm.pt")
    assert config.T == 20 and model.model == "lstm"
    rc = cli.main(["memory", "plots", "--T", "20", "--lstm", str(tmp_path / "lstm.pt"), "--rnn",
                   str(tmp_path / "rnn.pt"), "--out-dir", str(tmp_path)])  # fmt: skip
    assert rc == 0
    for name in ("memory_gradflow_T20.png", "memory_gates_T20.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"


def test_cli_user_errors(capsys):
    assert cli.main(["memory", "order", "--classes", "5", "--max-sequences", "8"]) == 2
    assert cli.main(["memory", "adding", "--T", "5"]) == 2
    assert "T >= 20" in capsys.readouterr().err


def test_public_api_is_pinned():
    expected = {"adding_batch", "temporal_order_batch", "copy_batch", "streams", "MemoryNet", "MemoryConfig",
                "train", "evaluate", "gradient_flow", "gate_summary", "make_plots", "register"}  # fmt: skip
    assert expected <= set(memory.__all__)
    assert all(hasattr(memory, name) for name in memory.__all__)
