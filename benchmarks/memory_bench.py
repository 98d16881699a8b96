"""Long-range memory benchmark: the 1997 LSTM experiments, LSTM vs GRU vs tanh RNN, and the plots.

    flock /tmp/lstmkit-bench.lock python benchmarks/memory_bench.py --only adding100 adding500 ...
    python benchmarks/memory_bench.py --tables-only        # rebuild docs/memory.md's tables

Every run writes ``<out-dir>/<name>.json`` (and ``.pt`` for the adding runs the plots need); a run
whose JSON exists is skipped, so groups can be run one at a time under the shared lock. The tables
in ``docs/memory.md`` (between the ``memory-bench`` markers) are rebuilt from all JSONs present.

Groups (each model gets the same budget of training sequences within a group):

    adding100   adding T=100, budget 74,000 (the 1997 count): lstm, gru, rnn; lstm seeds 1, 2;
                lstm with ragged="lengths" (lstmkit's lengths= path) to show it gives the same run
    adding500   adding T=500, budget 209,000 (the 1997 count): lstm, gru, rnn
    adding1000  adding T=1000, budget 128,000 (15% of the 1997 853,000, for the shared CPUs): lstm, gru, rnn
    order       temporal order 6a and 6b (T=100), budget 100,000: lstm, gru, rnn
    copy        copy, T=20 blanks, hidden 64, budget 300,000: lstm, gru, rnn
    ablation    adding T=100, budget 74,000: lstm and gru with torch's default gate biases (no chrono
                init); the tanh rnn with learning rate 0.001 instead of 0.01
    ragged      time of one forward+backward, lstmkit lengths= (packing) vs padded + gather
    plots       gradient flow and gates PNGs at T=100 and 500 from the adding runs' checkpoints
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

from lstmkit.tasks.memory import MemoryConfig, make_plots, save_run, train
from lstmkit.tasks.memory.cli import format_result
from lstmkit.tasks.memory.experiment import PAPER_SEQUENCES

log = logging.getLogger("memory_bench")

MODELS = ("lstm", "gru", "rnn")
GROUPS = ("adding100", "adding500", "adding1000", "order", "copy", "ablation", "ragged", "plots")
BEGIN, END = "<!-- memory-bench:begin -->", "<!-- memory-bench:end -->"


def runs(group: str) -> dict[str, MemoryConfig]:
    """name -> config of each training run in ``group``."""
    fast = dict(ragged="gather")
    out = {}
    if group.startswith("adding"):
        T = int(group[len("adding") :])
        budget = {100: 74_000, 500: 209_000, 1000: 128_000}[T]
        for m in MODELS:
            out[f"adding_T{T}_{m}"] = MemoryConfig(task="adding", T=T, model=m, max_sequences=budget, **fast)
        if T == 100:
            for s in (1, 2):
                out[f"adding_T100_lstm_seed{s}"] = MemoryConfig(T=100, seed=s, max_sequences=budget, **fast)
            out["adding_T100_lstm_lengths"] = MemoryConfig(T=100, max_sequences=budget, ragged="lengths")
    elif group == "order":
        for k in (4, 8):
            for m in MODELS:
                cfg = MemoryConfig(task=f"order{k}", T=100, model=m, max_sequences=100_000, **fast)
                out[f"order{k}_T100_{m}"] = cfg
    elif group == "ablation":
        for m in ("lstm", "gru"):
            cfg = MemoryConfig(T=100, model=m, max_sequences=74_000, forget_bias="none", **fast)
            out[f"adding_T100_{m}_default-init"] = cfg
        out["adding_T100_rnn_lr1e-3"] = MemoryConfig(T=100, model="rnn", max_sequences=74_000, lr=1e-3, **fast)
    elif group == "copy":
        for m in MODELS:
            out[f"copy_T20_{m}"] = MemoryConfig(task="copy", T=20, model=m, hidden=64, max_sequences=300_000)
    return out


def run_group(group: str, out_dir: Path) -> None:
    for name, config in runs(group).items():
        path = out_dir / f"{name}.json"
        if path.exists():
            log.info("%s: done already (%s)", name, path)
            continue
        result, model = train(config)
        log.info("%s", format_result(result))
        if config.task == "adding":
            save_run(out_dir / f"{name}.pt", config, result, model)
        path.write_text(json.dumps(dataclasses.asdict(result), indent=1))


def time_ragged(out_dir: Path, repeats: int = 3) -> None:
    """Forward+backward of the LSTM network on a padded adding batch of 32: lengths= against gather."""
    from lstmkit.tasks.memory import adding_batch, build_model, streams

    rows = []
    for T in (100, 500, 1000):
        batch = adding_batch(streams(0)[0], 32, T)
        times = {}
        for ragged in ("lengths", "gather"):
            model = build_model(MemoryConfig(T=T, ragged=ragged))
            start = time.perf_counter()
            for _ in range(repeats):
                model(batch.x, batch.lengths).sum().backward()
            times[ragged] = (time.perf_counter() - start) / repeats
        rows.append({"T": T, **times})
        log.info("T=%d: lengths= %.3f s, gather %.3f s per forward+backward", T, times["lengths"], times["gather"])
    (out_dir / "ragged_timing.json").write_text(json.dumps(rows, indent=1))


def plots(out_dir: Path, img_dir: Path) -> None:
    summary = {}
    for T in (100, 500):
        lstm, rnn = out_dir / f"adding_T{T}_lstm.pt", out_dir / f"adding_T{T}_rnn.pt"
        if not (lstm.exists() and rnn.exists()):
            log.warning("plots for T=%d need the adding%d group's checkpoints; skipped", T, T)
            continue
        start = time.perf_counter()
        _, lags = make_plots(T=T, out_dir=img_dir, lstm=lstm, rnn=rnn)
        summary[str(T)] = {"lags": lags, "seconds": time.perf_counter() - start}
    (out_dir / "gradient_flow.json").write_text(json.dumps(summary, indent=1))


# -- tables ----------------------------------------------------------------------------------------


def _load(out_dir: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(out_dir.glob("*.json"))
            if p.stem not in ("ragged_timing", "gradient_flow")}  # fmt: skip


def tables(out_dir: Path) -> str:
    results = _load(out_dir)
    head = "| task | T | model | params | solved | training sequences | 1997 paper | test wrong | test loss | wall s |"
    lines = [head, "|---|---|---|---|---|---|---|---|---|---|"]
    order = {"adding": 0, "order4": 1, "order8": 2, "copy": 3}
    key = lambda kv: (order[kv[1]["config"]["task"]], kv[1]["config"]["T"], kv[0])
    for name, r in sorted(results.items(), key=key):
        c = r["config"]
        model = c["model"] + ("" if name.endswith(c["model"]) else f" ({name.split(c['model'] + '_')[-1]})")
        seqs = f"{r['sequences']:,}" if r["solved"] else f"> {r['sequences']:,} (budget)"
        paper = f"{r['paper_sequences']:,}" if r["paper_sequences"] else ""
        lines.append(f"| {c['task']} | {c['T']} | {model} | {r['parameters']:,} | {'yes' if r['solved'] else 'no'} | "
                     f"{seqs} | {paper} | {r['test_wrong']}/{r['n_test']} | {r['test_loss']:.3g} | "
                     f"{r['seconds']:.0f} |")  # fmt: skip
    out = ["### Runs", "", *lines, ""]
    verdicts = []
    for T in (100, 500, 1000):
        r, paper = results.get(f"adding_T{T}_lstm"), PAPER_SEQUENCES[("adding", T)]
        if r is None:
            verdicts.append(f"- adding T={T}: not run.")
        elif r["solved"] and r["sequences"] < paper:
            verdicts.append(f"- adding T={T}: **beaten**, LSTM solved after {r['sequences']:,} training sequences "
                            f"against 1997's {paper:,} ({paper / r['sequences']:.1f}x "
                            f"fewer), {r['test_wrong']}/{r['n_test']} test sequences wrong.")  # fmt: skip
        else:
            how = "solved after" if r["solved"] else "not solved in"
            verdicts.append(f"- adding T={T}: **not matched**: LSTM {how} {r['sequences']:,} sequences "
                            f"against 1997's {paper:,}.")  # fmt: skip
    out += ["### Against the 1997 table (adding problem)", "", *verdicts, ""]
    ragged = out_dir / "ragged_timing.json"
    if ragged.exists():
        out += ["### Variable lengths: lstmkit `lengths=` (packing) against padded run + gather", "",
                "| T (batch 32, LSTM hidden 16) | `lengths=` s | gather s | ratio |", "|---|---|---|---|"]  # fmt: skip
        for row in json.loads(ragged.read_text()):
            out.append(f"| {row['T']} | {row['lengths']:.3f} | {row['gather']:.3f} | "
                       f"{row['lengths'] / row['gather']:.0f}x |")  # fmt: skip
        out.append("")
    grads = out_dir / "gradient_flow.json"
    if grads.exists():
        out += ["### Gradient norms at lags 0, T/2, T-1 (mean over 64 test sequences)", "",
                "| T | network | ‖dL/dh_t‖ | ‖dh_T/dh_t‖_F | ‖dL/dc_t‖ (LSTM) |", "|---|---|---|---|---|"]  # fmt: skip
        summary = json.loads(grads.read_text())
        for T, g in summary.items():
            for label, v in g["lags"].items():
                if label == "gates":
                    continue
                fmt = lambda xs: " / ".join(f"{x:.1e}" for x in xs)
                out.append(f"| {T} | {label} | {fmt(v['dL_dh'])} | {fmt(v.get('dhT_dh', []))} | "
                           f"{fmt(v['dL_dc']) if 'dL_dc' in v else ''} |")  # fmt: skip
        out.append("")
        out += ["### Trained LSTM gates on 256 adding test sequences", "",
                "| T | most open input gate at the marked steps (median) | elsewhere (median / max) "
                "| per-unit mean forget gate (min / max) |", "|---|---|---|---|"]  # fmt: skip
        for T, g in summary.items():
            if "gates" in g["lags"]:
                v = g["lags"]["gates"]
                out.append(f"| {T} | {v['i_at_marks']:.2f} | {v['i_elsewhere']:.3f} / {v['i_elsewhere_max']:.3f} | "
                           f"{v['f_unit_min']:.3f} / {v['f_unit_max']:.4f} |")  # fmt: skip
        out.append("")
    return "\n".join(out)


def write_docs(docs: Path, out_dir: Path) -> None:
    text = docs.read_text() if docs.exists() else f"{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        raise ValueError(f"{docs} lacks the {BEGIN} ... {END} markers the tables go between")
    note = "<!-- generated by benchmarks/memory_bench.py; do not edit by hand -->"
    block = f"{BEGIN}\n{note}\n\n{tables(out_dir)}\n{END}"
    docs.write_text(re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: block, text, flags=re.S))


def machine() -> str:
    try:
        cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        name = next(line.split(":", 1)[1].strip() for line in cpu.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        name = platform.processor()
    return f"{name}, {os.cpu_count()} cores, torch {torch.__version__}; training runs use 1 thread"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", nargs="+", choices=GROUPS, default=list(GROUPS), help="groups to run (default: all)")
    p.add_argument("--out-dir", default="runs/memory", help="JSON results and checkpoints (default: runs/memory)")
    p.add_argument("--img-dir", default="docs/img", help="where the PNGs go (default: docs/img)")
    p.add_argument("--docs", default="docs/memory.md", help="the note whose tables are rebuilt")
    p.add_argument("--tables-only", action="store_true", help="only rebuild the tables from existing JSONs")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)  # tiny models; more threads only spin against the other jobs on 2 cores
    if not args.tables_only:
        log.info("machine: %s", machine())
        for group in args.only:
            start = time.perf_counter()
            if group == "ragged":
                time_ragged(out_dir)
            elif group == "plots":
                plots(out_dir, Path(args.img_dir))
            else:
                run_group(group, out_dir)
            log.info("group %s took %.0f s", group, time.perf_counter() - start)
    write_docs(Path(args.docs), out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
