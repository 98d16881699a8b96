"""lstmkit.train: schedules, optimizers, metric logs and plots, atomic checkpoints (fit itself: test_lm.py)."""

import math

import pytest
import torch

from lstmkit.train import (
    LRSchedule,
    MetricsLog,
    TrainConfig,
    load_checkpoint,
    make_optimizer,
    plot_metrics,
    read_metrics,
    save_checkpoint,
)


def test_paper_schedule_zaremba_small():
    s = LRSchedule(TrainConfig(lr=1.0, schedule="paper", decay_factor=2.0, decay_after=4))
    assert [s.start_epoch(e) for e in range(13)] == [1, 1, 1, 1, 0.5, 0.25, 0.125, 2**-4, 2**-5, 2**-6, 2**-7,
                                                     2**-8, 2**-9]  # fmt: skip


def test_plateau_schedule_divides_after_patience():
    s = LRSchedule(TrainConfig(lr=1.0, schedule="plateau", decay_factor=4.0, patience=1))
    for loss, lr in ((3.0, 1.0), (2.0, 1.0), (2.5, 1.0), (2.5, 0.25), (1.0, 0.25)):
        s.after_validation(loss)
        assert s.start_epoch(0) == lr
    s2 = LRSchedule(TrainConfig(lr=1.0, schedule="plateau"))
    s2.load_state_dict(s.state_dict())
    assert s2.state_dict() == s.state_dict()
    constant = LRSchedule(TrainConfig(lr=0.3, schedule="constant"))
    assert constant.start_epoch(10) == 0.3
    with pytest.raises(ValueError, match="unknown schedule"):
        LRSchedule(TrainConfig(schedule="cosine"))


def test_make_optimizer():
    p = [torch.nn.Parameter(torch.zeros(2))]
    assert isinstance(make_optimizer(p, TrainConfig(optimizer="adam", lr=1e-3)), torch.optim.Adam)
    assert isinstance(make_optimizer(p, TrainConfig()), torch.optim.SGD)
    with pytest.raises(ValueError, match="unknown optimizer"):
        make_optimizer(p, TrainConfig(optimizer="lbfgs"))


def test_metrics_log_truncate_and_plot(tmp_path):
    m = MetricsLog(tmp_path)
    for step in range(1, 6):
        m.write({"kind": "train", "epoch": 1, "step": step, "lr": 1.0, "loss": 1.0 / step, "ppl": math.e})
    m.write({"kind": "valid", "epoch": 1, "step": 5, "lr": 1.0, "loss": 0.5, "ppl": 1.6, "bpc": 0.7})
    m.truncate_after(3)
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert (tmp_path / "metrics.csv").read_text().count("\n") == 4  # header + 3 rows
    png = plot_metrics(tmp_path / "metrics.jsonl", tmp_path / "c.png")
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_checkpoint_atomic_and_no_overwrite(tmp_path):
    path = tmp_path / "a" / "ck.pt"
    save_checkpoint({"x": 1}, path)
    with pytest.raises(FileExistsError):
        save_checkpoint({"x": 2}, path, overwrite=False)
    save_checkpoint({"x": 3}, path)
    assert load_checkpoint(path) == {"x": 3}
    assert [p.name for p in path.parent.iterdir()] == ["ck.pt"]  # no temporary files left
    with pytest.raises(FileNotFoundError, match="train first"):
        load_checkpoint(tmp_path / "none.pt")
