"""Train one network on one memory task until it is solved, checking a fixed fresh test set.

    train stream --batch--> model --loss--> Adam step        (every batch: fresh sequences)
    every eval_every sequences: test set (test stream, drawn once) -> wrong count
    stop when wrong <= max_wrong ("solved") or after max_sequences

"Training sequences to solve" is the number of training sequences seen when the check first
passes; with checks every ``eval_every`` sequences it is exact to within ``eval_every``.

Solved criteria, after Hochreiter & Schmidhuber 1997 (who counted the most recent training
sequences of their online learner; here they are fresh test sequences instead):

* adding: |error| < 0.04 is right; solved when at most 1 of 2,560 test sequences is wrong.
* temporal order: right when the probability of the true class is above 0.7 (the paper's "all
  outputs within 0.3 of the one-hot target", with a softmax read-out); solved at 0 of 2,000 wrong.
* copy: right when all ten recalled symbols are the argmax; solved at most 1 of 2,560 wrong.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ...train import progress, seed_everything
from . import data
from .models import MemoryNet, count_parameters, matched_hidden

__all__ = ["TASKS", "TaskSpec", "MemoryConfig", "Result", "task_spec", "build_model", "evaluate", "train"]

log = logging.getLogger(__name__)

#: Hochreiter & Schmidhuber 1997, training sequences until solved (tables 7 and 9).
PAPER_SEQUENCES = {("adding", 100): 74_000, ("adding", 500): 209_000, ("adding", 1000): 853_000,
                   ("order4", 100): 31_390, ("order8", 100): 571_100}  # fmt: skip


@dataclass(frozen=True)
class TaskSpec:
    """What the loop needs to know about a task."""

    name: str
    input_size: int
    output_size: int
    readout: str  # "last" or "all"
    make: Callable[[np.random.Generator, int], data.Batch]
    loss: Callable[[Tensor, data.Batch], Tensor]
    correct: Callable[[Tensor, data.Batch], Tensor]  # (B,) bool
    n_test: int
    max_wrong: int


def _adding_correct(y: Tensor, b: data.Batch) -> Tensor:
    return (y.squeeze(-1) - b.target).abs() < 0.04


def _order_correct(y: Tensor, b: data.Batch) -> Tensor:
    return y.softmax(-1).gather(1, b.target.unsqueeze(1)).squeeze(1) > 0.7


def _copy_loss(y: Tensor, b: data.Batch) -> Tensor:
    return F.cross_entropy(y.flatten(0, 1), b.target.flatten())  # (T*B, 9) vs (T*B,)


def _copy_correct(y: Tensor, b: data.Batch) -> Tensor:
    recall = y[-data.COPY_SYMBOLS :].argmax(-1)  # (10, B)
    return (recall == b.target[-data.COPY_SYMBOLS :]).all(0)


TASKS = ("adding", "order4", "order8", "copy")


def task_spec(name: str, T: int) -> TaskSpec:
    """The :class:`TaskSpec` of ``name`` (one of :data:`TASKS`) at minimal length / delay ``T``."""
    if name == "adding":
        return TaskSpec(name, 2, 1, "last", lambda r, n: data.adding_batch(r, n, T),
                        lambda y, b: F.mse_loss(y.squeeze(-1), b.target), _adding_correct, 2560, 1)  # fmt: skip
    if name in ("order4", "order8"):
        k = int(name[-1])
        return TaskSpec(name, 8, k, "last", lambda r, n: data.temporal_order_batch(r, n, k, T),
                        lambda y, b: F.cross_entropy(y, b.target), _order_correct, 2000, 0)  # fmt: skip
    if name == "copy":
        return TaskSpec(name, data.COPY_DELIMITER + 1, data.COPY_ALPHABET + 1, "all",
                        lambda r, n: data.copy_batch(r, n, T), _copy_loss, _copy_correct, 2560, 1)  # fmt: skip
    raise ValueError(f"unknown memory task {name!r}; choose one of {TASKS}")


@dataclass
class MemoryConfig:
    """One run: a task at one T, one model, one optimiser budget."""

    task: str = "adding"  # adding | order4 | order8 | copy
    T: int = 100  # minimal sequence length (adding, temporal order) or copy delay
    model: str = "lstm"  # lstm | gru | rnn
    hidden: int = 16  # LSTM hidden size; the GRU / RNN get the hidden size with the same parameter count
    batch_size: int = 32  # sequences per Adam step
    lr: float = 1e-2  # Adam learning rate, constant
    clip: float = 1.0  # gradient-norm clipping
    forget_bias: str = "chrono"  # LSTM forget-gate / GRU update-gate bias init: "chrono", a number, or "none"
    max_sequences: int = 100_000  # training budget in sequences
    eval_every: int = 2_560  # check the test set every this many training sequences
    n_test: int | None = None  # test-set size (None: the task's, 2,560 or 2,000)
    ragged: str = "lengths"  # "lengths" (LSTM lengths= / torch packing) or "gather" (same numbers, faster on CPU)
    seed: int = 0  # one seed: model init and both data streams
    threads: int = 1  # torch threads (the models are tiny; more rarely helps)


@dataclass
class Result:
    """What a run measured; ``history`` rows are (sequences, train loss, test loss, test wrong fraction)."""

    config: dict
    parameters: int
    hidden: int
    solved: bool
    sequences: int  # training sequences seen when solved (or the whole budget)
    test_wrong: int
    n_test: int
    test_loss: float
    seconds: float
    paper_sequences: int | None
    history: list[tuple[int, float, float, float]] = field(default_factory=list)

    @property
    def test_error(self) -> float:
        return self.test_wrong / self.n_test


def _parse_bias(value: str) -> float | str | None:
    if value in ("chrono", "none"):
        return None if value == "none" else "chrono"
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"forget_bias must be 'chrono', 'none' or a number, got {value!r}") from None


def build_model(config: MemoryConfig, spec: TaskSpec | None = None) -> MemoryNet:
    """The network of ``config`` (seeded by ``config.seed``)."""
    spec = spec or task_spec(config.task, config.T)
    hidden = matched_hidden(config.model, config.hidden, spec.input_size, spec.output_size)
    seed_everything(config.seed)
    return MemoryNet(config.model, spec.input_size, hidden, spec.output_size, readout=spec.readout,
                     forget_bias=_parse_bias(config.forget_bias), t_max=config.T + config.T // 10,
                     ragged=config.ragged)  # fmt: skip


@torch.no_grad()
def evaluate(model: MemoryNet, spec: TaskSpec, test: data.Batch, chunk: int = 512) -> tuple[int, float]:
    """(wrong count, mean loss) of ``model`` on ``test``, in chunks to bound memory."""
    model.eval()
    wrong, loss_sum = 0, 0.0
    for s in range(0, len(test), chunk):
        idx = slice(s, s + chunk)
        L = test.lengths[idx]
        T_max = int(L.max())
        target = test.target[:, idx] if spec.readout == "all" else test.target[idx]
        b = data.Batch(test.x[:T_max, idx], L, target)
        y = model(b.x, b.lengths)
        wrong += int((~spec.correct(y, b)).sum())
        loss_sum += float(spec.loss(y, b)) * len(b)
    model.train()
    return wrong, loss_sum / len(test)


def train(
    config: MemoryConfig, *, model: MemoryNet | None = None, show_progress: bool | None = None
) -> tuple[Result, MemoryNet]:
    """Train until solved or out of budget; returns the :class:`Result` and the trained model."""
    if config.batch_size < 1 or config.max_sequences < 1 or config.eval_every < 1:
        raise ValueError("batch_size, max_sequences and eval_every must all be positive")
    spec = task_spec(config.task, config.T)
    n_test = config.n_test or spec.n_test
    max_wrong = spec.max_wrong if config.n_test is None else math.floor(spec.max_wrong * n_test / spec.n_test)
    torch.set_num_threads(config.threads)
    model = model or build_model(config, spec)
    train_rng, test_rng = data.streams(config.seed)
    test = spec.make(test_rng, n_test)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    seen, next_check, losses, history = 0, config.eval_every, [], []
    solved, wrong, test_loss = False, n_test, math.nan
    start = time.perf_counter()
    bar = progress(total=config.max_sequences, desc=f"{config.task} T={config.T} {config.model}", enable=show_progress)
    while seen < config.max_sequences:
        b = spec.make(train_rng, config.batch_size)
        loss = spec.loss(model(b.x, b.lengths), b)  # scalar
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip)
        opt.step()
        seen += len(b)
        losses.append(loss.item())
        bar.update(len(b))
        if seen >= next_check or seen >= config.max_sequences:
            next_check += config.eval_every
            wrong, test_loss = evaluate(model, spec, test)
            history.append((seen, float(np.mean(losses)), test_loss, wrong / n_test))
            log.debug("%d sequences: train loss %.3g, test loss %.3g, %d/%d wrong",
                      seen, np.mean(losses), test_loss, wrong, n_test)  # fmt: skip
            bar.set_postfix(loss=f"{test_loss:.3g}", wrong=f"{wrong}/{n_test}")
            losses = []
            if wrong <= max_wrong:  # the test set only ever decides when to stop
                solved = True
                break
    bar.close()
    hidden = getattr(getattr(model, "rnn", None), "hidden_size", 0)
    result = Result(
        config=asdict(config), parameters=count_parameters(model), hidden=hidden, solved=solved,
        sequences=seen, test_wrong=wrong, n_test=n_test, test_loss=test_loss, seconds=time.perf_counter() - start,
        paper_sequences=PAPER_SEQUENCES.get((config.task, config.T)), history=history,
    )  # fmt: skip
    return result, model
