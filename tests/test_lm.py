"""lstmkit.tasks.lm: training, exact resume, evaluation, generation, bad input, DDP, the CLI."""

import json
import math
import os
import socket
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lstmkit.cli import main as cli
from lstmkit.data.text import Vocab
from lstmkit.tasks import lm
from lstmkit.train import read_metrics

TEXT = "".join(f"def f{i % 7}(x):\n    return x + {i % 10}\n" for i in range(120))


@pytest.fixture
def corpus(tmp_path):
    p = tmp_path / "code.txt"
    p.write_text(TEXT)
    return p


def tiny(corpus, tmp_path, **kw) -> lm.LMConfig:
    base = dict(
        data=str(corpus), out=str(tmp_path / "run"), emsize=8, hidden=16, layers=2, batch_size=4, bptt=8,
        epochs=2, optimizer="sgd", lr=1.0, schedule="paper", decay_after=1, clip=0.5, max_minutes=0.0,
        log_every=1, samples=0, eval_batch_size=2, valid_fraction=0.1, test_fraction=0.1,
    )  # fmt: skip
    base.update(kw)
    return lm.LMConfig(**base)


def train_losses(out) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in read_metrics(Path(out) / "metrics.jsonl") if r["kind"] == "train"]


@pytest.mark.parametrize("sampling", ["sequential", "random"])
def test_resume_mid_epoch_equals_uninterrupted(corpus, tmp_path, sampling):
    full = tiny(corpus, tmp_path, out=str(tmp_path / "full"), dropout=0.3, sampling=sampling)
    s = lm.train(full)
    steps = lm.LMTask(full, lm.load_corpus(corpus, valid_fraction=0.1, test_fraction=0.1),
                      lm.build_vocab(lm.load_corpus(corpus, valid_fraction=0.1, test_fraction=0.1), full),
                      torch.device("cpu")).steps_per_epoch()  # fmt: skip
    assert s["global_step"] == 2 * steps
    cut = steps + steps // 2  # killed in the middle of epoch 2
    part = replace(full, out=str(tmp_path / "part"), max_steps=cut)
    assert lm.train(part)["stopped_early"]
    resumed = lm.train(replace(part, max_steps=0), resume=True)
    assert resumed["global_step"] == 2 * steps
    a, b = train_losses(full.out), train_losses(part.out)
    assert [st for st, _ in b] == list(range(1, 2 * steps + 1))
    assert a == b  # bit-for-bit: model, optimizer, schedule, RNG (dropout) and data position restored
    assert (Path(part.out) / "curves.png").stat().st_size > 0
    assert (Path(part.out) / "metrics.csv").read_text().startswith("kind,epoch,step,lr,loss")
    assert [r["lr"] for r in read_metrics(Path(part.out) / "metrics.jsonl") if r["kind"] == "valid"][-1] == 0.5


def test_a_resumed_run_keeps_the_gpu_paths_impl_auto_chose(corpus, tmp_path):
    """impl="auto" times the GPU paths on a process's first call of each kind (kernels/route.py); the checkpoint
    keeps the choices, so a resumed run runs on the paths (and with the rounding) of the run it continues."""
    from lstmkit.kernels import route

    route.reset()
    m = torch.nn.LSTM(4, 4)
    x, hx = torch.zeros(3, 2, 4), (torch.zeros(1, 2, 4), torch.zeros(1, 2, 4))
    fake_kind = route.key(x, hx, m._flat_weights, dict(bias=True, num_layers=1, dropout=0.0, training=True,
                                                       bidirectional=False, batch_first=False))  # fmt: skip
    route._CHOICE[fake_kind] = "triton"
    try:
        part = tiny(corpus, tmp_path, out=str(tmp_path / "part"), max_steps=3)
        lm.train(part)
        assert torch.load(Path(part.out) / "last.pt", weights_only=False)["route"] == {
            "version": route.STATE_VERSION, "choices": {fake_kind: "triton"}}  # fmt: skip
        route.reset()  # (a new process)
        lm.train(replace(part, max_steps=4), resume=True)
        assert route.chosen(fake_kind) == "triton"
    finally:
        route.reset()


def test_paper_loss_scale_equivalence():
    """lr 1 and clip 5 on the time-summed, batch-averaged loss == lr T and clip 5/T on the per-token mean."""
    torch.manual_seed(0)
    T, B, V = 20, 3, 11
    model = lm.RNNLM(V, 6, 6, 2, init_range=0.1)
    x, y = torch.randint(0, V, (T, B)), torch.randint(0, V, (T, B))
    results = []
    for scale, lr, clip in (("sum", 1.0, 5.0), ("mean", float(T), 5.0 / T)):
        m = lm.RNNLM(V, 6, 6, 2)
        m.load_state_dict(model.state_dict())
        logits, _ = m(x)
        ce = F.cross_entropy(logits.view(-1, V), y.view(-1), reduction="none").view(T, B)
        loss = ce.sum(0).mean() if scale == "sum" else ce.mean()
        (loss * 50).backward()  # a large gradient, so clipping is active
        torch.nn.utils.clip_grad_norm_(m.parameters(), clip)
        with torch.no_grad():
            for p in m.parameters():
                p -= lr * p.grad
        results.append(m.state_dict())
    for k in results[0]:
        torch.testing.assert_close(results[0][k], results[1][k], rtol=1e-5, atol=1e-6)


def test_model_init_range_and_tying():
    m = lm.RNNLM(30, 12, 12, 2, tie_weights=True, init_range=0.05)
    assert m.decoder.weight is m.encoder.weight
    assert all(p.abs().max() <= 0.05 for p in m.parameters())
    assert isinstance(m.rnn, torch.nn.LSTM) and type(m.rnn).__module__.startswith("lstmkit")
    with pytest.raises(ValueError, match="emsize == hidden"):
        lm.RNNLM(30, 8, 12, 1, tie_weights=True)
    assert lm.PTB_SMALL["lr"] == 20.0 and lm.PTB_SMALL["clip"] == 0.25 and lm.PTB_SMALL["epochs"] == 13


def test_cli_train_eval_generate(corpus, tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["lm", "train", "--data", str(corpus), "--out", str(out), "--hidden", "16", "--emsize", "8",
            "--layers", "1", "--batch-size", "4", "--bptt", "8", "--epochs", "1", "--max-minutes", "0",
            "--samples", "1", "--sample-length", "20", "--prefix", "def", "--log-every", "5"]  # fmt: skip
    assert cli(args) == 0
    text = capsys.readouterr().out
    assert "best valid loss" in text and "bits/char" in text and "--- sample 1" in text and "\ndef" in text
    best = out / "best.pt"
    assert cli(["lm", "eval", "--checkpoint", str(best), "--split", "test"]) == 0
    line = capsys.readouterr().out
    assert line.startswith("test: loss") and "perplexity" in line
    m = lm.evaluate(best, split="test")
    assert math.isclose(m["ppl"], math.exp(m["loss"])) and math.isclose(m["bpc"], m["loss"] / math.log(2))
    gen = ["lm", "generate", "--checkpoint", str(best), "--prefix", "def f", "--length", "30", "--seed", "3"]
    assert cli(gen) == 0
    a = capsys.readouterr().out
    assert cli(gen) == 0
    assert capsys.readouterr().out == a  # same seed, same sample
    assert cli([*gen, "--top-k", "3"]) == 0
    model, vocab, _ = lm.load_model(best)
    g1 = lm.generate(model, vocab, "def f", 30, greedy=True)
    assert g1 == lm.generate(model, vocab, "def f", 30, greedy=True) and g1.startswith("def f") and len(g1) == 35
    assert lm.generate(model, vocab, "x", 30, seed=1) == lm.generate(model, vocab, "x", 30, seed=1)
    assert a.startswith("def f")
    # never overwrite an existing checkpoint unless asked
    before = best.read_bytes()
    assert cli(args) == 2
    assert "exists; pass --resume" in capsys.readouterr().err and best.read_bytes() == before
    assert cli([*args, "--overwrite", "--samples", "0"]) == 0


def test_word_level(tmp_path):
    d = tmp_path / "words"
    d.mkdir()
    for s, n in (("train", 60), ("valid", 8), ("test", 8)):
        (d / f"ptb.{s}.txt").write_text("".join(f" the cat sat on mat {i % 5} \n" for i in range(n)) + " a dog \n")
    cfg = tiny(d, tmp_path, level="word", epochs=1)
    s = lm.train(cfg)
    assert s["vocab_size"] == 14  # 12 words + <eos> + <unk>
    m = lm.evaluate(Path(cfg.out) / "best.pt", split="test")
    assert "bpc" not in m and m["ppl"] > 1
    model, vocab, _ = lm.load_model(Path(cfg.out) / "best.pt")
    assert lm.generate(model, vocab, "the zebra", 5, greedy=True).startswith("the zebra ")  # unknown word -> <unk>


def test_bad_input_errors(corpus, tmp_path, capsys):
    assert cli(["lm", "train", "--data", str(tmp_path / "missing.txt")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty.txt").write_text("")
    assert cli(["lm", "train", "--data", str(tmp_path / "empty.txt")]) == 2
    assert "is empty" in capsys.readouterr().err
    (tmp_path / "bad.txt").write_bytes(TEXT.encode() + b"\xc3\x28")
    assert cli(["lm", "train", "--data", str(tmp_path / "bad.txt")]) == 2
    assert "not valid utf-8" in capsys.readouterr().err
    cfg = tiny(corpus, tmp_path, epochs=1, max_steps=3)
    lm.train(cfg)
    other = tmp_path / "other.txt"
    other.write_text(TEXT.upper())
    with pytest.raises(ValueError, match="not in the vocabulary"):
        lm.evaluate(Path(cfg.out) / "last.pt", data=str(other), split="valid")
    with pytest.raises(ValueError, match="vocabulary mismatch"):
        lm.train(replace(cfg, data=str(other)), resume=True)
    model, vocab, _ = lm.load_model(Path(cfg.out) / "last.pt")
    with pytest.raises(ValueError, match=r"the prefix has 1 character\(s\) not in the vocabulary \('Z'\)"):
        lm.generate(model, vocab, "Zdef", 5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, cfg_json: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))  # fmt: skip
    torch.set_num_threads(1)
    lm.train(lm.LMConfig(**json.loads(cfg_json)), show_progress=False)
    # trained and left the group: skip the interpreter's teardown, where gloo's threads have (rarely, under load)
    # aborted a worker after its work was done; a failure above still raises through mp.spawn
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def test_ddp_step_equals_single_process_step(corpus, tmp_path):
    import torch.multiprocessing as mp

    single = tiny(corpus, tmp_path, out=str(tmp_path / "single"), max_steps=1, clip=0.05)
    lm.train(single)
    ddp = replace(single, out=str(tmp_path / "ddp"))
    mp.spawn(_ddp_worker, args=(2, _free_port(), json.dumps(ddp.__dict__)), nprocs=2, join=True)
    a = torch.load(Path(single.out) / "last.pt", weights_only=False)
    b = torch.load(Path(ddp.out) / "last.pt", weights_only=False)
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a["task"]["hidden"][0], b["task"]["hidden"][0])  # columns gathered in order
    assert Vocab.from_dict(a["vocab"]).itos == Vocab.from_dict(b["vocab"]).itos
