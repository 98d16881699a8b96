"""``lstmkit forecast train | predict | backtest``: flags are the config dataclass fields with dashes.

    lstmkit forecast backtest                               # Mauna Loa CO2, LSTM vs 4 baselines
    lstmkit forecast train --checkpoint co2.pt              # no data given: Mauna Loa CO2 as well
    lstmkit forecast backtest --dataset sunspots --plot bt.png --out bt.json
    lstmkit forecast train --data sales.csv --time date --target units --id store --horizon 8 \\
        --checkpoint model.pt
    lstmkit forecast predict --checkpoint model.pt --data sales.csv --out forecast.csv --plot fc.png
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import inspect
import re
import sys
from pathlib import Path

from ...data.series import BUILTIN, MissingDependencyError, SeriesSet, builtin_series, load_series
from .backtest import BacktestConfig
from .model import ForecastConfig

__all__ = ["register"]

DEFAULT_DATASET = "co2"


def _field_help(cls) -> dict[str, str]:
    """The ``# reason`` comment of each dataclass field, for ``--help``."""
    src = inspect.getsource(cls)
    return dict(re.findall(r"^\s+(\w+):[^#\n]*#\s*(.+)$", src, flags=re.M))


def _add_fields(p: argparse.ArgumentParser, cls, skip=()) -> None:
    helps = _field_help(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        h = f"{helps.get(f.name, '')} (default {default})"
        if isinstance(default, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=h)
        elif isinstance(default, tuple):
            p.add_argument(flag, type=lambda s: tuple(float(x) for x in s.split(",")), default=None, help=h)
        else:
            p.add_argument(flag, type=type(default), default=None, help=h)


def _build(cls, args, **fallback):
    kw = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if getattr(args, f.name, None) is not None}
    return cls(**{**fallback, **kw})


def _add_data(p: argparse.ArgumentParser, dataset_default: str | None = None) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", help="CSV file: one row per time step (and series)")
    g.add_argument("--dataset", choices=sorted(BUILTIN), default=None,
                   help="a classic series bundled with statsmodels (offline)"
                   + (f"; the default without --data is {dataset_default}" if dataset_default else ""))  # fmt: skip
    g.add_argument("--time", help="time column (dates); none: rows are consecutive steps")
    g.add_argument("--target", help="target column(s), comma-separated (default: every other numeric column)")
    g.add_argument("--covariates", help="covariate columns known in the future, comma-separated")
    g.add_argument("--id", help="series id column, for several series in one table")
    g.add_argument("--freq", help="pandas frequency (D, W, MS, QS, YS, ...); default: inferred from --time")
    g.add_argument("--season", type=int, help="seasonal period in steps (default: from the frequency, 1 if none)")
    g.add_argument("--interpolate", action="store_true", help="interpolate missing values instead of an error")


def _load(args, stored: dict | None = None, default_dataset: str | None = None) -> SeriesSet:
    stored = stored or {}
    keys = ("time", "target", "covariates", "id", "freq", "season")
    kw = {k: getattr(args, k) if getattr(args, k) is not None else stored.get(k) for k in keys}
    if args.data:
        return load_series(args.data, interpolate=args.interpolate or stored.get("interpolate", False),
                           name=Path(args.data).stem, **kw)  # fmt: skip
    name = args.dataset or stored.get("dataset") or default_dataset
    if name is None:
        raise ValueError("give the data: --data FILE.csv (with --time/--target/...) or --dataset NAME")
    return builtin_series(name)


def _threads(args) -> None:
    import torch

    torch.set_num_threads(max(1, args.threads))


def _friendly(fn):
    """Missing optional dependencies become the CLI's ordinary 'lstmkit: error: ...'."""

    @functools.wraps(fn)
    def run(args) -> int:
        try:
            return fn(args)
        except MissingDependencyError as e:
            raise ValueError(str(e)) from e

    return run


def _horizon(args, data: SeriesSet) -> dict:
    b = BUILTIN.get(data.name)
    return {"horizon": b.horizon} if b is not None and not args.data else {}


@_friendly
def cmd_train(args) -> int:
    from .fit import Forecaster

    _threads(args)
    data = _load(args, default_dataset=DEFAULT_DATASET)
    cfg = _build(ForecastConfig, args, **_horizon(args, data))
    model = Forecaster(cfg)
    model.fit(data, checkpoint=args.checkpoint, show_progress=args.progress)
    model.meta["load"] = {
        "time": data.time_name, "target": data.targets, "covariates": data.covariates, "id": data.id_name,
        "freq": data.freq, "season": data.season, "interpolate": args.interpolate,
        "dataset": None if args.data else data.name,
    }  # fmt: skip
    model.save(args.checkpoint)
    for k, h in enumerate(model.history):
        print(f"net {k + 1}: {h['epochs']} epochs, best validation loss {h['best_val_loss']:.4f}")
    print(f"wrote {args.checkpoint} ({len(data)} series, targets {data.targets}, horizon {cfg.horizon})")
    return 0


@_friendly
def cmd_predict(args) -> int:
    from .fit import Forecaster
    from .plot import plot_forecast

    _threads(args)
    model = Forecaster.load(args.checkpoint)
    data = _load(args, model.meta.get("load"))
    future = None
    if args.future:
        m = model.meta
        raw = load_series(args.future, time=m["time_name"], target=m["covariates"], id=m["id_name"], freq=m["freq"])
        future = SeriesSet([dataclasses.replace(s, covariates=s.values) for s in raw.series], [], m["covariates"])
    fcs = model.predict(data, future)
    rows = []
    levels = fcs[0].levels
    head = [data.id_name or "series", data.time_name or "step", "target"] + [f"p{100 * q:g}" for q in levels]
    for s, fc in zip(data.series, fcs):
        for h in range(fc.median.shape[0]):
            t = str(fc.time[h].date()) if fc.time is not None else str(len(s) + h)
            for d, name in enumerate(data.targets):
                rows.append([s.id, t, name] + [f"{v:.6g}" for v in fc.quantiles[:, h, d]])
    text = "\n".join(",".join(r) for r in [head, *rows]) + "\n"
    if args.out:
        Path(args.out).write_text(text)
        print(f"wrote {args.out} ({len(rows)} rows)")
    else:
        sys.stdout.write(text)
    if args.plot:
        for s, fc in zip(data.series, fcs):
            print(f"wrote {plot_forecast(data, s, fc, _plot_path(args.plot, s.id, len(data)))}")
    return 0


def _plot_path(path: str, sid: str, n: int) -> Path:
    p = Path(path)
    return p if n == 1 else p.with_name(f"{p.stem}_{sid}{p.suffix or '.png'}")


@_friendly
def cmd_backtest(args) -> int:
    from .backtest import backtest
    from .plot import plot_backtest

    _threads(args)
    data = _load(args, default_dataset=DEFAULT_DATASET)
    b = BUILTIN.get(data.name) if not args.data else None
    cfg = _build(ForecastConfig, args, **({"horizon": b.horizon} if b else {}))
    bt = _build(BacktestConfig, args, **({"windows": b.windows} if b else {}))
    res = backtest(data, cfg, bt, show_progress=args.progress)
    print(res.table())
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(res.to_json() if out.suffix == ".json" else res.table() + "\n")
        print(f"wrote {out}")
    if args.plot:
        for s in data.series:
            methods = ["lstm"] + [m for m in ("ets", "snaive") if m in res.forecasts][:1]
            print(f"wrote {plot_backtest(res, data, s, _plot_path(args.plot, s.id, len(data)), methods)}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("forecast", help="time-series forecasting: train, predict, backtest vs baselines")
    sub = p.add_subparsers(dest="forecast_command", metavar="ACTION", required=True)

    def common(q):
        q.add_argument("--threads", type=int, default=1, help="torch CPU threads (small models: 1 is fastest)")
        q.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                       help="progress bars (default: on a terminal)")  # fmt: skip

    t = sub.add_parser("train", help="train an LSTM forecaster and write a checkpoint")
    _add_data(t, DEFAULT_DATASET)
    _add_fields(t, ForecastConfig)
    t.add_argument("--checkpoint", required=True, help="where to write the model (atomically)")
    common(t)
    t.set_defaults(func=cmd_train)

    pr = sub.add_parser("predict", help="forecast the next horizon of each series from a checkpoint")
    _add_data(pr)
    pr.add_argument("--checkpoint", required=True, help="a model from 'lstmkit forecast train'")
    pr.add_argument("--future", help="CSV with the covariates of the next horizon steps (time, id, covariates)")
    pr.add_argument("--out", help="CSV of quantiles per step (default: stdout)")
    pr.add_argument("--plot", help="PNG of history and forecast (one per series: NAME_ID.png)")
    common(pr)
    pr.set_defaults(func=cmd_predict)

    b = sub.add_parser("backtest", help="rolling-origin backtest: LSTM vs naive, seasonal naive, ETS, ARIMA")
    _add_data(b, DEFAULT_DATASET)
    _add_fields(b, ForecastConfig)
    _add_fields(b, BacktestConfig)
    b.add_argument("--out", help="results: .json (every window) or Markdown table")
    b.add_argument("--plot", help="PNG of the backtest windows (one per series: NAME_ID.png)")
    common(b)
    b.set_defaults(func=cmd_backtest)
