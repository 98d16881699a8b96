"""The pictures of docs/memory.md: gradient flow (tanh RNN vs LSTM, at init and trained) and gates.

    make_plots(T=100) -> docs/img/memory_gradflow_T100.png, docs/img/memory_gates_T100.png

Trained networks come from checkpoints (``lstmkit memory adding --out``) or are trained here with
:func:`lstmkit.tasks.memory.train`; the "init" curves use the same seed's untrained weights. The
sequences analysed come from the test stream, so none was seen in training.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from . import data
from .analysis import fixed_length, gate_summary, gradient_flow, plot_gates, plot_gradient_flow
from .experiment import MemoryConfig, build_model, train

__all__ = ["make_plots", "lag_summary"]

log = logging.getLogger(__name__)


def lag_summary(res: dict[str, np.ndarray], lags: tuple[int, ...]) -> dict[str, list[float]]:
    """The curves of :func:`gradient_flow` read at a few lags (for tables)."""
    return {k: [float(v[min(lag, len(v) - 1)]) for lag in lags] for k, v in res.items()}


def make_plots(
    T: int = 100,
    out_dir: str | Path = "docs/img",
    *,
    lstm=None,
    rnn=None,
    max_sequences: int = 100_000,
    seed: int = 0,
    n_sequences: int = 64,
) -> tuple[list[Path], dict[str, dict[str, list[float]]]]:
    """Write the gradient-flow and gate PNGs for the adding problem at ``T``.

    Returns their paths and a summary: per curve ("LSTM, trained", ...) the norms at lags 0, T/2
    and T-1, and under "gates" the trained LSTM's :func:`gate_summary` on 256 test sequences.

    ``lstm`` / ``rnn``: a checkpoint path, a trained :class:`MemoryNet`, or None (train one here).
    """
    from .cli import load_run

    out_dir = Path(out_dir)
    trained = {}
    for name, given in (("lstm", lstm), ("rnn", rnn)):
        config = MemoryConfig(task="adding", T=T, model=name, max_sequences=max_sequences, seed=seed)
        if isinstance(given, (str, Path)):
            config, given = load_run(given)
        elif given is None:
            log.info("training %s on adding T=%d for the plots", name, T)
            _, given = train(config)
        trained[name] = (config, given)
    _, test_rng = data.streams(seed + 1)
    batch = data.adding_batch(test_rng, n_sequences, T)
    x = fixed_length(batch, T)  # (T, B, 2)
    curves = {}
    for name, (config, model) in trained.items():
        curves[f"{name.upper()}, init"] = gradient_flow(build_model(config), x, batch.target)
        curves[f"{name.upper()}, trained"] = gradient_flow(model, x, batch.target)
    lags = {label: lag_summary(res, (0, T // 2, T - 1)) for label, res in curves.items()}
    for label, summary in lags.items():
        log.info("%s: %s at lags (0, T/2, T-1)", label, summary)
    grad_png = plot_gradient_flow(curves, out_dir / f"memory_gradflow_T{T}.png",
                                  title=f"Adding problem, T = {T}: gradient norms against the lag")  # fmt: skip
    one = data.adding_batch(test_rng, 64, T)
    # shown: the first sequence whose marks are T/4 or more apart and not on the first pair (a documented pick)
    pick = int(((one.marks > 0).all(dim=1) & ((one.marks[:, 0] - one.marks[:, 1]).abs() >= T // 4)).nonzero()[0])
    one = data.Batch(one.x[: one.lengths[pick], pick : pick + 1], one.lengths[pick : pick + 1],
                     one.target[pick : pick + 1], one.marks[pick : pick + 1])  # fmt: skip
    gates_png = plot_gates(trained["lstm"][1], one.x, one.marks[0], out_dir / f"memory_gates_T{T}.png",
                           title=f"Trained LSTM, adding problem T = {T}: input and forget gates "
                                 f"(red: the marked steps, target {float(one.target[0]):.3f})")  # fmt: skip
    many = data.adding_batch(test_rng, 256, T)
    lags["gates"] = gate_summary(trained["lstm"][1], fixed_length(many, T), many.marks)
    return [grad_png, gates_png], lags
