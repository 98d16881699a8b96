"""Benchmark: the LSTM forecaster vs naive, seasonal naive, ETS and ARIMA on the classic series
statsmodels ships with, with the LSTM's setting chosen on tuning windows only; writes docs/forecast.md.

Protocol, per series (k held-out windows of horizon H, the last one ending with the data)::

    |--- training ---|[ t0 ] .. [ t_{k-1} ]|[ w0 ][ w1 ] .. [ w_{k-1} ]|
                      tuning windows        held-out windows (reported)

1. every setting of :data:`GRID` is backtested on the tuning windows (the series cut before the
   first held-out origin, ``lstmkit.tasks.forecast.tune``); the lowest mean MASE wins;
2. the chosen setting, the library's default setting (no tuning) and the four baselines are
   backtested once on the held-out windows; that table is the result.

    flock /tmp/lstmkit-bench.lock python benchmarks/forecast_classic.py            # all five series
    python benchmarks/forecast_classic.py --datasets nile --stage tune --no-write  # tuning windows only

Single-threaded BLAS and torch (set before NumPy loads): on a shared 2-core machine multi-threaded
OpenBLAS makes statsmodels' small state-space fits several times slower.
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- benchmark:start -->", "<!-- benchmark:end -->"
BASELINES = ("naive", "snaive", "ets", "arima")

# The declared grid: every combination is a candidate (the library defaults for every other field).
# context 0 is the automatic max(2 x season, 3 x horizon, 24); "2x" doubles it.
GRID = {
    "mode": ("autoregressive", "direct"),
    "scaling": ("window+level", "window", "last"),
    "context": ("auto", "2x"),
}


def _machine() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        name = next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")), "")
    except OSError:
        name = ""
    return f"{name or platform.processor() or 'unknown CPU'}, {os.cpu_count()} cores"


def candidates(horizon: int, season: int, grid: dict = GRID) -> list:
    """ForecastConfigs of every combination of ``grid`` (the default setting first when it is in the grid)."""
    from lstmkit.tasks.forecast import ForecastConfig

    auto = ForecastConfig(horizon=horizon).resolved_context(season)
    out = []
    for combo in itertools.product(*grid.values()):
        kw = dict(zip(grid, combo))
        if "context" in kw:
            kw["context"] = {"auto": 0, "2x": 2 * auto}[kw["context"]]
        out.append(ForecastConfig(horizon=horizon, **kw))
    return out


def label(cfg, season: int) -> str:
    """Short name of a candidate: its grid fields."""
    ctx = cfg.resolved_context(season)
    return f"{'AR' if cfg.mode == 'autoregressive' else 'direct'}, {cfg.scaling}, context {ctx}"


def _verdict(s: dict, season: int) -> str:
    lstm = s["lstm"]["mase"]
    ref = "snaive" if season > 1 else "naive"
    what = "seasonal naive" if season > 1 else "naive (= seasonal naive, no season)"
    parts = []
    if ref in s:
        parts.append(("beats " if lstm < s[ref]["mase"] else "**loses to** ") + what)
    if "ets" in s:
        parts.append(("beats" if lstm < s["ets"]["mase"] else "**loses to**") + " ETS")
    if "arima" in s:
        parts.append(("beats" if lstm < s["arima"]["mase"] else "**loses to**") + " ARIMA")
    return ", ".join(parts)


def _cells(vals: list[float], fmt: str) -> list[str]:
    best = min(vals)
    return [f"**{v:{fmt}}**" if v == best else f"{v:{fmt}}" for v in vals]


def render(rows: list[dict], seconds: float, argv: list[str]) -> str:
    """The Markdown section between the benchmark markers."""
    from lstmkit.data.series import BUILTIN
    from lstmkit.tasks.forecast import ForecastConfig

    base = [b for b in BASELINES if b in rows[0]["held"].summary()]
    methods = ["lstm", "default", *base]
    names = {"lstm": "lstm (tuned)", "default": "lstm (default)"}
    cmd = "flock /tmp/lstmkit-bench.lock python benchmarks/forecast_classic.py" + (" " + " ".join(argv) if argv else "")
    g = rows[0]["grid"]
    lines = [
        START,
        "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {_machine()} (shared with other jobs), "
        f"torch and BLAS on 1 thread, {seconds / 60:.1f} minutes wall-clock in all:",
        "",
        f"    {cmd}",
        "",
        f"Grid ({len(candidates(12, 12, g))} settings per series, every combination): "
        + "; ".join(f"`{k}` in {', '.join(map(str, v))}" for k, v in g.items())
        + ". Tuning windows: k, like the held-out ones.",
        "",
        "Library defaults (the `lstm (default)` column, and every field outside the grid): "
        f"`{ {k: v for k, v in dataclasses.asdict(ForecastConfig()).items() if k not in ('horizon', 'quantiles')} }`"
        "; context 0 means max(2 x season, 3 x horizon, 24).",
        "",
        "### Held-out windows: MASE (lower is better; bold: best)",
        "",
        "| series | steps | horizon | season | k | " + " | ".join(names.get(m, m) for m in methods)
        + " | verdict, tuned LSTM |",
        "|---|---|---|---|---|" + "---|" * len(methods) + "---|",
    ]
    summ = []
    for r in rows:
        s = dict(r["held"].summary())
        s["default"] = r["default"].summary()["lstm"]
        summ.append(s)
        h = r["held"]
        lines.append(
            f"| {r['name']} | {r['steps']} | {h.horizon} | {h.season} | {h.windows} | "
            + " | ".join(_cells([s[m]["mase"] for m in methods], ".3f"))
            + f" | {_verdict({k: v for k, v in s.items() if k != 'default'}, h.season)} |"
        )
    head = ["| series | " + " | ".join(names.get(m, m) for m in methods) + " |", "|---|" + "---|" * len(methods)]
    lines += ["", "### Held-out windows: sMAPE %", "", *head]
    for r, s in zip(rows, summ):
        lines.append(f"| {r['name']} | " + " | ".join(_cells([s[m]["smape"] for m in methods], ".2f")) + " |")
    lines += ["", "### Held-out windows: interval coverage (nominal 0.80 / 0.95)", "", *head]
    for r, s in zip(rows, summ):
        lines.append(f"| {r['name']} | " + " | ".join(f"{s[m]['cov80']:.2f} / {s[m]['cov95']:.2f}" for m in methods)
                     + " |")  # fmt: skip
    lines += [
        "",
        "### Tuning: the chosen setting, and what each step took",
        "",
        "| series | tuning windows (from .. to) | chosen setting | tuning MASE chosen / default / snaive / ets "
        "| seconds: tuning / held-out LSTM tuned + default / baselines / all |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        t, h = r["tune"], r["held"]
        ts = t.results[t.chosen]
        tb = next(x for x in t.results if x is not None).summary()
        ref = "snaive" if h.season > 1 else "naive"
        first, last = _origin_range(r, t)
        base_s = sum(h.seconds[b] for b in base)
        lines.append(
            f"| {r['name']} | {t.windows} ({first} .. {last}) | {label(t.best, h.season)} | "
            f"{t.scores[t.chosen]:.3f} / {t.scores[0]:.3f} / {tb[ref]['mase']:.3f} / "
            f"{tb['ets']['mase'] if 'ets' in tb else float('nan'):.3f} | "
            f"{sum(t.seconds):.0f} / {h.seconds['lstm']:.0f} + {r['default'].seconds['lstm']:.0f} / {base_s:.0f} / "
            f"{r['seconds']:.0f} |"
        )
        assert ts is not None
    lines += ["", "Mean MASE of every candidate on the tuning windows (bold: chosen; -: context too long):",
              "", "| setting | " + " | ".join(r["name"] for r in rows) + " |", "|---|" + "---|" * len(rows)]
    for i in range(len(rows[0]["tune"].configs)):
        cfg = rows[0]["tune"].configs[i]
        ctx = "auto" if cfg.context == 0 else "2x auto"
        cells = []
        for r in rows:
            sc = r["tune"].scores[i]
            c = "-" if sc == float("inf") else f"{sc:.3f}"
            cells.append(f"**{c}**" if i == r["tune"].chosen else c)
        mode = "AR" if cfg.mode == "autoregressive" else "direct"
        lines.append(f"| {mode}, {cfg.scaling}, context {ctx} | " + " | ".join(cells) + " |")
    lines += ["", "Models ETS and ARIMA chose at the first held-out origin (AICc on the history before it):", ""]
    for r in rows:
        for k, v in r["held"].specs.items():
            lines.append(f"- {r['name']}, {k.split('/')[0]}: `{v}`")
    lines += ["", "Series: " + "; ".join(f"{r['name']}: {BUILTIN[r['name']].what}" for r in rows) + ".", "", END]
    return "\n".join(lines)


def _origin_range(r: dict, t) -> tuple[str, str]:
    """Dates of the first tuning origin and the first held-out origin."""
    res = next(x for x in t.results if x is not None)
    o_t = res.origins[next(iter(res.origins))][0]
    o_h = r["held"].origins[next(iter(r["held"].origins))][0]
    times = r["time"]
    if times is None:
        return str(o_t), str(o_h)
    return str(times[o_t].date())[:7], str(times[o_h - 1].date())[:7]


def write_docs(section: str, path: Path) -> None:
    text = path.read_text() if path.exists() else "# Forecasting\n\n" + START + "\n" + END + "\n"
    if START in text and END in text:
        text = text[: text.index(START)] + section + text[text.index(END) + len(END) :]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", default="co2,sunspots,elnino,nile,unemp")
    p.add_argument("--baselines", default=",".join(BASELINES))
    p.add_argument("--stage", choices=("tune", "all"), default="all",
                   help="tune: tuning windows only (the held-out ones are never read); all: then held-out")
    p.add_argument("--out", default=str(ROOT / "docs" / "forecast.md"))
    p.add_argument("--img", default=str(ROOT / "docs" / "img"), help="folder for forecast_<series>.png")
    p.add_argument("--json", default=None, help="also write every number to this JSON file")
    p.add_argument("--write", action=argparse.BooleanOptionalAction, default=True, help="update --out and --img")
    args = p.parse_args(argv)
    argv = list(sys.argv[1:] if argv is None else argv)

    import torch

    from lstmkit.data.series import BUILTIN, builtin_series
    from lstmkit.tasks.forecast import BacktestConfig, ForecastConfig, backtest, tune
    from lstmkit.tasks.forecast.plot import plot_backtest

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)
    t_all = time.perf_counter()
    rows = []
    for name in args.datasets.split(","):
        t0 = time.perf_counter()
        b = BUILTIN[name]
        data = builtin_series(name)
        cands = candidates(b.horizon, data.season)
        t = tune(data, cands, holdout=b.windows, baselines=args.baselines)
        print(f"{name}: tuning MASE " + ", ".join(f"[{label(c, data.season)}] {s:.3f}" for c, s in zip(cands, t.scores))
              + f" -> {label(t.best, data.season)}", flush=True)  # fmt: skip
        row = {"name": name, "steps": len(data.series[0]), "tune": t, "grid": GRID, "time": data.series[0].time,
               "season": data.season}
        if args.stage == "all":
            row["held"] = backtest(data, t.best, BacktestConfig(windows=b.windows, baselines=args.baselines))
            default = ForecastConfig(horizon=b.horizon)
            row["default"] = row["held"] if default == t.best else backtest(
                data, default, BacktestConfig(windows=b.windows, baselines="")
            )
            print(row["held"].table(), flush=True)
            print(f"default setting: MASE {row['default'].summary()['lstm']['mase']:.3f}", flush=True)
            if args.write:
                methods = ["lstm"] + (["ets"] if "ets" in row["held"].forecasts else [])
                plot_backtest(row["held"], data, data.series[0], Path(args.img) / f"forecast_{name}.png", methods)
        row["seconds"] = time.perf_counter() - t0
        rows.append(row)
    seconds = time.perf_counter() - t_all
    if args.json:
        Path(args.json).write_text(json.dumps([_jsonable(r) for r in rows], indent=1, default=str))
    if args.stage == "tune":
        return 0
    section = render(rows, seconds, argv)
    print(section)
    if args.write:
        write_docs(section, Path(args.out))
        print(f"wrote {args.out}")
    return 0


def _jsonable(r: dict) -> dict:
    t = r["tune"]
    out = {"name": r["name"], "steps": r["steps"], "seconds": r["seconds"],
           "tune": {"scores": t.scores, "chosen": t.chosen, "seconds": t.seconds, "windows": t.windows,
                    "configs": [label(c, r["season"]) for c in t.configs],
                    "baselines": next(x for x in t.results if x is not None).summary()}}  # fmt: skip
    if "held" in r:
        out["held"] = r["held"].summary()
        out["default"] = r["default"].summary()["lstm"]
        out["held_seconds"] = r["held"].seconds
    return out


if __name__ == "__main__":
    raise SystemExit(main())
