"""Benchmark: the LSTM forecaster vs naive, seasonal naive, ETS and ARIMA on the classic series
statsmodels ships with, in one rolling-origin backtest per series; writes the table into docs/forecast.md.

    flock /tmp/lstmkit-bench.lock python benchmarks/forecast_classic.py            # all five series
    python benchmarks/forecast_classic.py --datasets nile --baselines naive,ets --no-write   # a quick look

Single-threaded BLAS and torch (set before NumPy loads): on a shared 2-core machine multi-threaded
OpenBLAS makes statsmodels' small state-space fits several times slower.
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import logging  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- benchmark:start -->", "<!-- benchmark:end -->"
BASELINES = ("naive", "snaive", "ets", "arima")


def _machine() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        name = next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")), "")
    except OSError:
        name = ""
    return f"{name or platform.processor() or 'unknown CPU'}, {os.cpu_count()} cores"


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


def render(results: list, seconds: float, argv: list[str], config) -> str:
    """The Markdown section: settings, one table for MASE, one for sMAPE, coverage, verdicts."""
    from lstmkit.data.series import BUILTIN

    methods = ["lstm", *[b for b in BASELINES if b in results[0][0].summary()]]
    cmd = "flock /tmp/lstmkit-bench.lock python benchmarks/forecast_classic.py" + (" " + " ".join(argv) if argv else "")
    lines = [
        START,
        "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {_machine()} (shared with other jobs), "
        f"torch and BLAS on 1 thread, in {seconds / 60:.1f} minutes wall-clock for everything below:",
        "",
        f"    {cmd}",
        "",
        "LSTM, one configuration for every series (horizon per row; context 0 means max(2 x season, 3 x horizon, "
        f"24)): `{ {k: v for k, v in dataclasses.asdict(config).items() if k not in ('horizon', 'quantiles')} }`.",
        "",
        "| series | steps | horizon | season | windows | " + " | ".join(f"MASE {m}" for m in methods)
        + " | LSTM 80% / 95% coverage | verdict (MASE) |",
        "|---|---|---|---|---|" + "---|" * len(methods) + "---|---|",
    ]
    for r, n in results:
        s = r.summary()
        best = min(s[m]["mase"] for m in methods)
        cells = [f"**{s[m]['mase']:.3f}**" if s[m]["mase"] == best else f"{s[m]['mase']:.3f}" for m in methods]
        lines.append(
            f"| {r.name} | {n} | {r.horizon} | {r.season} | {r.windows} | " + " | ".join(cells)
            + f" | {s['lstm']['cov80']:.2f} / {s['lstm']['cov95']:.2f} | {_verdict(s, r.season)} |"
        )
    lines += ["", "| series | " + " | ".join(f"sMAPE % {m}" for m in methods) + " |", "|---|" + "---|" * len(methods)]
    for r, _ in results:
        s = r.summary()
        best = min(s[m]["smape"] for m in methods)
        cells = [f"**{s[m]['smape']:.2f}**" if s[m]["smape"] == best else f"{s[m]['smape']:.2f}" for m in methods]
        lines.append(f"| {r.name} | " + " | ".join(cells) + " |")
    lines += ["", "Interval coverage of every method (nominal 0.80 / 0.95), and seconds each took:", "",
              "| series | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]  # fmt: skip
    for r, _ in results:
        s = r.summary()
        cells = [f"{s[m]['cov80']:.2f} / {s[m]['cov95']:.2f} ({r.seconds[m]:.0f} s)" for m in methods]
        lines.append(f"| {r.name} | " + " | ".join(cells) + " |")
    lines += ["", "Models ETS and ARIMA chose at the first origin:", ""]
    for r, _ in results:
        for k, v in r.specs.items():
            lines.append(f"- {r.name}, {k.split('/')[0]}: `{v}`")
    names = [r.name for r, _ in results]
    lines += ["", "Series: " + "; ".join(f"{k}: {BUILTIN[k].what}" for k in names) + ".", "", END]
    return "\n".join(lines)


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
    p.add_argument("--ensemble", type=int, default=None, help="override the LSTM ensemble size")
    p.add_argument("--mode", default=None, help="override the LSTM mode (autoregressive or direct)")
    p.add_argument("--out", default=str(ROOT / "docs" / "forecast.md"))
    p.add_argument("--img", default=str(ROOT / "docs" / "img"), help="folder for forecast_<series>.png")
    p.add_argument("--write", action=argparse.BooleanOptionalAction, default=True, help="update --out and --img")
    args = p.parse_args(argv)
    argv = list(sys.argv[1:] if argv is None else argv)

    import torch

    from lstmkit.data.series import BUILTIN, builtin_series
    from lstmkit.tasks.forecast import BacktestConfig, ForecastConfig, backtest
    from lstmkit.tasks.forecast.plot import plot_backtest

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)
    overrides = {k: v for k, v in (("ensemble", args.ensemble), ("mode", args.mode)) if v is not None}
    t0 = time.perf_counter()
    results = []
    for name in args.datasets.split(","):
        b = BUILTIN[name]
        data = builtin_series(name)
        cfg = ForecastConfig(horizon=b.horizon, **overrides)
        res = backtest(data, cfg, BacktestConfig(windows=b.windows, baselines=args.baselines))
        results.append((res, len(data.series[0])))
        print(res.table(), flush=True)
        if args.write:
            methods = ["lstm"] + (["ets"] if "ets" in res.forecasts else [])
            plot_backtest(res, data, data.series[0], Path(args.img) / f"forecast_{name}.png", methods)
    seconds = time.perf_counter() - t0
    section = render(results, seconds, argv, ForecastConfig(**overrides))
    print(section)
    if args.write:
        write_docs(section, Path(args.out))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
