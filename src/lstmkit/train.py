"""The one model-agnostic training loop, and what every task shares: atomic checkpoints, seeding,
RNG state, progress bars, learning-rate schedules, metric logs and plots.

:func:`fit` runs any :class:`Task` (something that yields batches, computes a loss and evaluates)
with SGD or Adam, gradient-norm clipping, a schedule (the step decay of Zaremba et al. 2014: constant
``lr``, then divided by ``decay_factor`` each epoch after epoch ``decay_after``; or divide on a
validation plateau), validation each epoch, the best checkpoint kept, metrics to JSONL + CSV and a
PNG plot, and exact resumption (model, optimizer, schedule, RNG, position in the data). Under
``torchrun`` it wraps the model in DistributedDataParallel; rank 0 writes.

Checkpoints are written atomically: to a temporary file in the same folder, flushed to disk, then
renamed over the target (``os.replace`` is atomic on POSIX and Windows), so a run killed at any
moment leaves either the old checkpoint or the new one, never a torn file.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import random
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from lstmkit.kernels import route

__all__ = [
    "save_checkpoint",
    "load_checkpoint",
    "seed_everything",
    "rng_state",
    "set_rng_state",
    "progress",
    "TrainConfig",
    "Task",
    "LRSchedule",
    "MetricsLog",
    "make_optimizer",
    "plot_metrics",
    "distributed",
    "fit",
]

log = logging.getLogger(__name__)


def save_checkpoint(obj: Any, path: str | os.PathLike, *, overwrite: bool = True) -> Path:
    """``torch.save`` ``obj`` to ``path`` atomically (temporary file, fsync, rename).

    With ``overwrite=False`` an existing file is an error instead of being replaced.
    """
    path = Path(path)
    if not overwrite and path.exists():
        raise FileExistsError(f"{path} exists; pass overwrite=True (or --overwrite) to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 -> the permissions a plain open() would give
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """Load what :func:`save_checkpoint` wrote; a clear error when the file is missing."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist; train first or check the path")
    return torch.load(path, map_location=map_location, weights_only=False)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Every RNG state a resumed run needs to continue bit-for-bit."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def progress(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "", enable: bool | None = None):
    """A tqdm progress bar on an interactive terminal (or when ``enable=True``); silent otherwise."""
    from tqdm.auto import tqdm

    if enable is None:
        enable = sys.stderr.isatty()
    return tqdm(iterable, total=total, desc=desc, disable=not enable, dynamic_ncols=True, leave=True)


# ----------------------------------------------------------------------------------------------
# The loop


@dataclass
class TrainConfig:
    """What the loop needs; tasks subclass it to add their own fields (CLI flags are the field names)."""

    epochs: int = 13  # passes over the training data
    optimizer: str = "sgd"  # "sgd" (the paper's) or "adam"
    lr: float = 20.0  # initial learning rate (20 on the per-token mean loss = the paper's 1 on the time-summed loss)
    weight_decay: float = 0.0  # L2 penalty passed to the optimizer
    schedule: str = "paper"  # "paper" (divide each epoch after decay_after), "plateau", or "constant"
    decay_factor: float = 2.0  # lr divisor of the schedules
    decay_after: int = 4  # paper schedule: epochs 1..decay_after at the initial lr
    patience: int = 0  # plateau schedule: validations without improvement before dividing
    clip: float = 0.25  # max global gradient norm (0: off); 0.25 on the mean loss = the paper's 5 over 20 steps
    max_steps: int = 0  # stop (and checkpoint) after this many optimizer steps in all (0: no limit)
    max_minutes: float = 0.0  # stop (validate, checkpoint) after this much training time (0: no limit)
    log_every: int = 100  # steps between metric rows (and the only host syncs of the loss)
    checkpoint_every: int = 0  # steps between mid-epoch checkpoints (0: at epoch ends and stops only)
    seed: int = 0  # seeds init, dropout and data order


class Task(Protocol):
    """What :func:`fit` trains. ``model`` is the module to optimize; ``net`` below is the model or its
    DDP wrapper (call ``net``, not ``model``, in ``loss`` so gradients are averaged across ranks)."""

    model: torch.nn.Module

    def steps_per_epoch(self) -> int: ...

    def batches(self, epoch: int, start: int) -> Iterator[Any]:
        """The batches of ``epoch`` (0-based) from batch ``start`` on; deterministic given the epoch."""

    def loss(self, net: torch.nn.Module, batch: Any) -> tuple[torch.Tensor, int]:
        """Mean loss of ``batch`` (a scalar tensor with grad) and the number of predictions it averages."""

    def start_epoch(self, epoch: int) -> None:
        """Reset per-epoch state (e.g. the carried hidden state)."""

    def evaluate(self, split: str = "valid") -> dict[str, float]:
        """Metrics on a split; must hold ``loss`` (mean nats per prediction)."""

    def state_dict(self) -> dict[str, Any]:
        """Task state a resumed run needs (e.g. the carried hidden state)."""

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def checkpoint_extra(self) -> dict[str, Any]:
        """Anything else a checkpoint should hold (config, vocabulary, ...)."""


def make_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}; choose 'sgd' or 'adam'")


class LRSchedule:
    """The learning rate per epoch.

    * ``paper``: ``lr`` for epochs 1..k, then ``lr / factor ** (epoch - k)`` (Zaremba et al. 2014, k=4, factor 2);
    * ``plateau``: divide by ``factor`` when validation has not improved for ``patience + 1`` epochs;
    * ``constant``.
    """

    def __init__(self, cfg: TrainConfig) -> None:
        if cfg.schedule not in ("paper", "plateau", "constant"):
            raise ValueError(f"unknown schedule {cfg.schedule!r}; choose 'paper', 'plateau' or 'constant'")
        if cfg.decay_factor <= 0:
            raise ValueError(f"decay_factor must be > 0, got {cfg.decay_factor}")
        self.kind, self.lr0, self.factor, self.after, self.patience = (
            cfg.schedule, cfg.lr, cfg.decay_factor, cfg.decay_after, cfg.patience,
        )  # fmt: skip
        self.lr, self.best, self.bad = cfg.lr, math.inf, 0

    def start_epoch(self, epoch: int) -> float:
        """The learning rate of ``epoch`` (0-based)."""
        if self.kind == "paper":
            self.lr = self.lr0 / self.factor ** max(0, epoch + 1 - self.after)
        return self.lr

    def after_validation(self, loss: float) -> None:
        if self.kind != "plateau":
            return
        if loss < self.best:
            self.best, self.bad = loss, 0
            return
        self.bad += 1
        if self.bad > self.patience:
            self.lr /= self.factor
            self.bad = 0
            log.info("plateau: lr -> %.4g", self.lr)

    def state_dict(self) -> dict[str, Any]:
        return {"lr": self.lr, "best": self.best, "bad": self.bad}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.lr, self.best, self.bad = state["lr"], state["best"], state["bad"]


CSV_FIELDS = ("kind", "epoch", "step", "lr", "loss", "ppl", "bpc", "tok_s", "elapsed")


class MetricsLog:
    """Rows of metrics appended to ``metrics.jsonl`` and ``metrics.csv`` (one row a line, flushed)."""

    def __init__(self, folder: Path, enabled: bool = True) -> None:
        self.jsonl, self.csv, self.enabled = folder / "metrics.jsonl", folder / "metrics.csv", enabled

    def reset(self) -> None:
        if self.enabled:
            self.jsonl.unlink(missing_ok=True)
            self.csv.unlink(missing_ok=True)

    def truncate_after(self, step: int) -> None:
        """Drop rows past ``step`` (a resumed run rewrites what the killed one logged after its checkpoint)."""
        if not (self.enabled and self.jsonl.exists()):
            return
        rows = [r for r in read_metrics(self.jsonl) if r["step"] <= step]
        self.reset()
        for r in rows:
            self.write(r)

    def write(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.jsonl, "a") as f:
            f.write(json.dumps(row) + "\n")
        new = not self.csv.exists()
        with open(self.csv, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow(row)


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_metrics(jsonl: str | os.PathLike, png: str | os.PathLike, title: str = "") -> Path:
    """Training and validation loss against steps, as a PNG (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(jsonl)
    fig, ax = plt.subplots(figsize=(7, 4))
    for kind, style in (("train", "-"), ("valid", "o-")):
        pts = [(r["step"], r["loss"]) for r in rows if r["kind"] == kind]
        if pts:
            ax.plot(*zip(*pts), style, label=kind)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats per token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return Path(png)


def distributed() -> tuple[int, int]:
    """``(rank, world_size)``: (0, 1) unless a process group is initialized."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _metrics_row(kind: str, epoch: int, step: int, lr: float, loss: float, **extra: float) -> dict[str, Any]:
    row = {"kind": kind, "epoch": epoch, "step": step, "lr": lr, "loss": loss, "ppl": math.exp(min(loss, 50.0))}
    row.update(extra)
    return row


def fit(
    task: Task,
    cfg: TrainConfig,
    out_dir: str | os.PathLike,
    *,
    resume: bool = False,
    overwrite: bool = False,
    show_progress: bool | None = None,
) -> dict[str, Any]:
    """Train ``task.model`` per ``cfg``; checkpoints and metrics go to ``out_dir``.

    Files: ``last.pt`` (everything to resume), ``best.pt`` (best validation loss), ``metrics.jsonl``,
    ``metrics.csv`` and ``curves.png``. An existing checkpoint is an error unless ``resume`` or
    ``overwrite``. Returns a summary: steps, epochs, best validation metrics, tokens/s, wall time.
    """
    out = Path(out_dir)
    last, best_path = out / "last.pt", out / "best.pt"
    rank, world = distributed()
    writer = rank == 0
    say = log.info if writer else log.debug  # one rank speaks
    model = task.model
    net: torch.nn.Module = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        net = DDP(model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(params, cfg)
    sched = LRSchedule(cfg)
    metrics = MetricsLog(out, enabled=writer)
    epoch, step, gstep, best = 0, 0, 0, math.inf
    if resume:
        ck = load_checkpoint(last)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["schedule"])
        task.load_state_dict(ck["task"])
        set_rng_state(ck["rng"])
        route.load_state_dict(ck.get("route", {}))  # (the GPU paths impl="auto" timed and chose: the same again)
        epoch, step, gstep, best = ck["epoch"], ck["step_in_epoch"], ck["global_step"], ck["best_loss"]
        metrics.truncate_after(gstep)
        say("resumed from %s at epoch %d, step %d", last, epoch + 1, step)
    else:
        existing = [p for p in (last, best_path) if p.exists()]
        if existing and not overwrite:
            raise ValueError(
                f"{existing[0]} exists; pass --resume to continue that run, --overwrite to replace it, "
                f"or another --out"
            )
        if writer:
            out.mkdir(parents=True, exist_ok=True)
            metrics.reset()

    def save(path: Path, epoch_: int, step_: int) -> None:
        task_state = task.state_dict()  # on every rank: it may gather across ranks
        if not writer:
            return
        save_checkpoint(
            {
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "schedule": sched.state_dict(),
                "task": task_state,
                "rng": rng_state(),
                "route": route.state_dict(),
                "epoch": epoch_,
                "step_in_epoch": step_,
                "global_step": gstep,
                "best_loss": best,
                "train_config": asdict(cfg),
                **task.checkpoint_extra(),
            },
            path,
        )

    def validate(epoch_: int) -> dict[str, float]:
        nonlocal best
        m = task.evaluate("valid")
        metrics.write(_metrics_row("valid", epoch_ + 1, gstep, sched.lr, **m, elapsed=time.perf_counter() - t0))
        say(
            "epoch %d  valid loss %.4f  ppl %.2f%s", epoch_ + 1, m["loss"], math.exp(min(m["loss"], 50)),
            f"  bpc {m['bpc']:.3f}" if "bpc" in m else "",
        )  # fmt: skip
        if m["loss"] < best:
            best = m["loss"]
            save(best_path, epoch_ + 1, 0)
        return m

    t0 = time.perf_counter()
    n_tokens_total, stopped, last_valid = 0, False, None
    steps_per_epoch = task.steps_per_epoch()
    while epoch < cfg.epochs and not stopped:
        lr = sched.start_epoch(epoch) if step == 0 else sched.lr
        for g in opt.param_groups:
            g["lr"] = lr
        if step == 0:
            task.start_epoch(epoch)
        model.train()
        bar = progress(total=steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}", enable=show_progress and writer)
        bar.update(step)
        loss_sum, n_sum, t_win = 0, 0, time.perf_counter()
        for batch in task.batches(epoch, step):
            loss, n = task.loss(net, batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.clip > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.clip, foreach=True)
            opt.step()
            loss_sum = loss.detach() * n + loss_sum  # stays on the device until the log step
            n_sum += n
            step += 1
            gstep += 1
            bar.update(1)
            end_of_epoch = step >= steps_per_epoch
            stop = (cfg.max_steps and gstep >= cfg.max_steps) or (
                cfg.max_minutes and time.perf_counter() - t0 >= cfg.max_minutes * 60
            )
            if gstep % cfg.log_every == 0 or end_of_epoch or stop:
                mean = float(loss_sum) / max(n_sum, 1)  # the one host sync per log row
                tok_s = n_sum * world / max(time.perf_counter() - t_win, 1e-9)
                n_tokens_total += n_sum * world
                row = _metrics_row("train", epoch + 1, gstep, lr, mean, tok_s=tok_s, elapsed=time.perf_counter() - t0)
                metrics.write(row)
                bar.set_postfix(loss=f"{mean:.3f}", ppl=f"{row['ppl']:.2f}", tok_s=f"{tok_s:.0f}", refresh=False)
                if not bar.disable:
                    log.debug("step %d loss %.4f", gstep, mean)
                else:
                    say(
                        "epoch %d step %d/%d  loss %.4f  ppl %.2f  %.0f tok/s  lr %.4g",
                        epoch + 1, step, steps_per_epoch, mean, row["ppl"], tok_s, lr,
                    )  # fmt: skip
                loss_sum, n_sum, t_win = 0, 0, time.perf_counter()
            if end_of_epoch:
                break
            if stop:
                stopped = True
                save(last, epoch, step)
                break
            if cfg.checkpoint_every and gstep % cfg.checkpoint_every == 0:
                save(last, epoch, step)
        bar.close()
        if stopped:
            say("stopped after %d steps (max_steps=%s, max_minutes=%s)", gstep, cfg.max_steps, cfg.max_minutes)
            last_valid = validate(epoch)
            break
        last_valid = validate(epoch)
        sched.after_validation(last_valid["loss"])
        epoch, step = epoch + 1, 0
        save(last, epoch, step)
    wall = time.perf_counter() - t0
    if writer and metrics.jsonl.exists():
        plot_metrics(metrics.jsonl, out / "curves.png")
    return {
        "global_step": gstep,
        "epochs_done": epoch,
        "stopped_early": bool(stopped),
        "best_valid_loss": best,
        "last_valid": last_valid,
        "tokens_per_s": n_tokens_total / wall if wall > 0 else 0.0,
        "wall_s": wall,
        "out_dir": str(out),
    }
