"""``lstmkit memory``: train on a memory task, or draw the gradient-flow and gate plots.

    lstmkit memory adding --T 100 --model lstm [--out run.pt]     adding problem (1997 exp. 4)
    lstmkit memory order --classes 4 --model gru                  temporal order (exp. 6a / 6b)
    lstmkit memory copy --T 20 --model rnn                        copy 10 symbols across T blanks
    lstmkit memory plots --T 100 --out-dir docs/img               gradient flow + gates PNGs

Task flags are the :class:`MemoryConfig` field names with dashes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from pathlib import Path

from ...train import load_checkpoint, save_checkpoint
from .experiment import MemoryConfig, Result, build_model, train

__all__ = ["register", "save_run", "load_run", "format_result"]

log = logging.getLogger(__name__)


def save_run(path: str | Path, config: MemoryConfig, result: Result, model) -> Path:
    """Checkpoint a trained run: config, result and weights, written atomically."""
    return save_checkpoint({"config": dataclasses.asdict(config), "result": dataclasses.asdict(result),
                            "state_dict": model.state_dict()}, path)  # fmt: skip


def load_run(path: str | Path):
    """(config, model) from :func:`save_run`'s file."""
    ckpt = load_checkpoint(path)
    known = {f.name for f in dataclasses.fields(MemoryConfig)}
    dropped = sorted(set(ckpt["config"]) - known)
    if dropped:  # fields of older versions (the plateau schedule's lr_decay, patience)
        log.warning("%s: ignoring config fields this version does not have: %s", path, ", ".join(dropped))
    config = MemoryConfig(**{k: v for k, v in ckpt["config"].items() if k in known})
    model = build_model(config)
    model.load_state_dict(ckpt["state_dict"])
    return config, model


def format_result(r: Result) -> str:
    c = r.config
    paper = f", 1997 paper: {r.paper_sequences:,}" if r.paper_sequences else ""
    verdict = f"solved after {r.sequences:,} training sequences" if r.solved else f"NOT solved in {r.sequences:,}"
    return (f"{c['task']} T={c['T']} {c['model']} ({r.parameters} parameters, hidden {r.hidden}): {verdict}{paper}; "
            f"test {r.test_wrong}/{r.n_test} wrong, loss {r.test_loss:.3g}; {r.seconds:.1f} s")  # fmt: skip


def _add_config_args(p: argparse.ArgumentParser, skip: tuple[str, ...]) -> None:
    defaults = MemoryConfig()
    for f in dataclasses.fields(MemoryConfig):
        if f.name in skip:
            continue
        default = getattr(defaults, f.name)
        kind = int if f.name == "n_test" else type(default)
        p.add_argument("--" + f.name.replace("_", "-"), type=kind, default=default, help=f"(default: {default})")


def _config(args: argparse.Namespace, task: str) -> MemoryConfig:
    names = {f.name for f in dataclasses.fields(MemoryConfig)} - {"task"}
    return MemoryConfig(task=task, **{n: getattr(args, n) for n in names if hasattr(args, n)})


def _run_task(args: argparse.Namespace) -> int:
    task = args.memory_task if args.memory_task != "order" else f"order{args.classes}"
    if args.memory_task == "order" and args.classes not in (4, 8):
        raise ValueError(f"--classes must be 4 (experiment 6a) or 8 (6b), got {args.classes}")
    config = _config(args, task)
    result, model = train(config)
    print(format_result(result))
    if args.out:
        save_run(args.out, config, result, model)
    if args.json:
        Path(args.json).write_text(json.dumps(dataclasses.asdict(result), indent=1))
    return 0


def _run_plots(args: argparse.Namespace) -> int:
    import torch

    from .plots import make_plots

    torch.set_num_threads(args.threads)
    paths, _ = make_plots(T=args.T, out_dir=args.out_dir, lstm=args.lstm, rnn=args.rnn,
                       max_sequences=args.max_sequences, seed=args.seed)  # fmt: skip
    for p in paths:
        print(p)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("memory", help="long-range memory tasks: adding, temporal order, copy; gradient plots")
    sub = p.add_subparsers(dest="memory_task", metavar="TASK", required=True)
    for name, help_ in (("adding", "adding problem (Hochreiter & Schmidhuber 1997, experiment 4)"),
                        ("order", "temporal order (1997, experiments 6a: --classes 4, 6b: --classes 8)"),
                        ("copy", "copy 10 symbols of 8 across T blank steps")):  # fmt: skip
        q = sub.add_parser(name, help=help_)
        _add_config_args(q, skip=("task",))
        if name == "order":
            q.add_argument("--classes", type=int, default=4, help="4 (experiment 6a) or 8 (6b)")
        q.add_argument("--out", default=None, help="write a checkpoint (config, result, weights) here")
        q.add_argument("--json", default=None, help="write the result (with the test history) as JSON here")
        q.set_defaults(func=_run_task)
    q = sub.add_parser("plots", help="gradient flow (RNN vs LSTM, init vs trained) and LSTM gates, as PNGs")
    q.add_argument("--T", type=int, default=100, help="adding-problem length (default: 100)")
    q.add_argument("--out-dir", default="docs/img", help="where the PNGs go (default: docs/img)")
    q.add_argument("--lstm", default=None, help="trained LSTM checkpoint from 'memory adding --out' (else: train one)")
    q.add_argument("--rnn", default=None, help="trained RNN checkpoint (else: train one)")
    q.add_argument("--max-sequences", type=int, default=100_000, help="budget when training here (default: 100000)")
    q.add_argument("--seed", type=int, default=0, help="(default: 0)")
    q.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    q.set_defaults(func=_run_plots)
