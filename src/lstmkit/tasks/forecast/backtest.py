"""Rolling-origin backtest of the LSTM forecaster and the classical baselines, on the same windows.

With k windows of horizon H and stride s (default s = H) the origins of a series of length N are::

    o_j = N - H - (k - 1 - j) * s,   j = 0 .. k-1        (the last window ends at the series' end)

    |------------ history before o_0 ------------|[ w0 ][ w1 ] ... [ w_{k-1} ]|

Every method forecasts each window from the history before its origin only. The LSTM is trained
once on the history before ``o_0`` (its own early-stopping tail included) and then reads the true
history up to each origin (``retrain=True`` trains it again at every origin); ETS and ARIMA choose
their model at ``o_0`` and are re-estimated at every origin. Errors are computed per window and
target (MASE scaled by the seasonal naive in-sample error of the history before that origin) and
averaged over windows, targets and series.

:func:`tune` chooses among a few LSTM settings without touching the windows a backtest reports:
with ``k`` held-out windows it cuts every series before the first held-out origin and runs the
same rolling-origin backtest there (the tuning windows)::

    |--- training ---|[ t0 ][ t1 ] .. [ t_{m-1} ]|[ w0 ][ w1 ] .. [ w_{k-1} ]|
                      tuning windows: choose       held-out windows: report

The setting with the lowest mean MASE on the tuning windows is the one to run on the held-out ones.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from ...data.series import SeriesSet
from ...train import progress
from . import baselines as bl
from .fit import Forecaster
from .metrics import coverage, mae, mase, rmse, smape
from .model import LEVELS, Forecast, ForecastConfig

__all__ = ["BacktestConfig", "BacktestResult", "TuneResult", "backtest", "origins_for", "tune"]

log = logging.getLogger(__name__)

METRICS = ("mae", "rmse", "mase", "smape", "cov80", "cov95")


@dataclass
class BacktestConfig:
    """How the backtest is laid out; every field is a CLI flag."""

    windows: int = 5  # rolling origins; the last window ends where the data ends
    stride: int = 0  # steps between origins; 0: one horizon (windows side by side)
    baselines: str = "naive,snaive,ets,arima"  # comma-separated, from naive, snaive, ets, arima ("" for none)
    retrain: bool = False  # train the LSTM again at every origin instead of once before the first

    def baseline_list(self) -> list[str]:
        names = [b.strip() for b in self.baselines.split(",") if b.strip()]
        for b in names:
            if b not in bl.BASELINES:
                raise ValueError(f"unknown baseline {b!r}; choose from {', '.join(bl.BASELINES)}")
        return names


def origins_for(length: int, horizon: int, windows: int, stride: int) -> np.ndarray:
    """Origins of the last ``windows`` windows of a series of ``length`` steps (see module docstring)."""
    if windows < 1:
        raise ValueError(f"windows must be at least 1, got {windows}")
    s = stride or horizon
    return length - horizon - s * np.arange(windows - 1, -1, -1)


@dataclass
class BacktestResult:
    """Per-window errors of every method, and the forecasts (for plots)."""

    name: str
    horizon: int
    season: int
    context: int
    windows: int
    rows: list[dict] = field(default_factory=list)  # one per method, series, target, window
    forecasts: dict[str, dict[str, list[Forecast]]] = field(default_factory=dict)  # method -> id -> windows
    origins: dict[str, list[int]] = field(default_factory=dict)  # series id -> origins
    seconds: dict[str, float] = field(default_factory=dict)  # method -> wall-clock seconds
    specs: dict[str, dict] = field(default_factory=dict)  # "method/series/target" -> chosen model

    def methods(self) -> list[str]:
        return list(dict.fromkeys(r["method"] for r in self.rows))

    def summary(self) -> dict[str, dict[str, float]]:
        """method -> metric -> mean over windows, targets and series."""
        out = {}
        for m in self.methods():
            rs = [r for r in self.rows if r["method"] == m]
            out[m] = {k: float(np.nanmean([r[k] for r in rs])) for k in METRICS}
        return out

    def table(self) -> str:
        """A Markdown table of :meth:`summary`, one row per method."""
        lines = [
            f"backtest of {self.name}: {self.windows} windows, horizon {self.horizon}, season {self.season}, "
            f"LSTM context {self.context}",
            "",
            "| method | MAE | RMSE | MASE | sMAPE % | 80% cover | 95% cover | seconds |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for m, s in self.summary().items():
            lines.append(
                f"| {m} | {s['mae']:.4g} | {s['rmse']:.4g} | {s['mase']:.3f} | {s['smape']:.2f} | "
                f"{s['cov80']:.2f} | {s['cov95']:.2f} | {self.seconds.get(m, float('nan')):.1f} |"
            )
        return "\n".join(lines)

    def to_json(self) -> str:
        d = {k: v for k, v in asdict(self).items() if k != "forecasts"}
        d["summary"] = self.summary()
        return json.dumps(d, indent=1, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))


def _score(res: BacktestResult, method: str, data: SeriesSet, sid: str, j: int, o: int, fc: Forecast) -> None:
    s = next(x for x in data.series if x.id == sid)
    H = res.horizon
    lo80, hi80 = fc.interval(0.8)
    lo95, hi95 = fc.interval(0.95)
    for d, tname in enumerate(data.targets):
        y, f, hist = s.values[o : o + H, d], fc.median[:, d], s.values[:o, d]
        res.rows.append({
            "method": method, "series": sid, "target": tname, "window": j, "origin": int(o),
            "mae": mae(y, f), "rmse": rmse(y, f), "mase": mase(y, f, hist, data.season), "smape": smape(y, f),
            "cov80": coverage(y, lo80[:, d], hi80[:, d]), "cov95": coverage(y, lo95[:, d], hi95[:, d]),
        })  # fmt: skip


def backtest(
    data: SeriesSet,
    config: ForecastConfig | None = None,
    bt: BacktestConfig | None = None,
    *,
    show_progress: bool | None = None,
) -> BacktestResult:
    """Rolling-origin backtest of the LSTM (``config``) and ``bt.baselines`` on every series of ``data``."""
    config = config or ForecastConfig()
    bt = bt or BacktestConfig()
    config.check()
    names = bt.baseline_list()
    H, L = config.horizon, config.resolved_context(data.season)
    origins = {s.id: origins_for(len(s), H, bt.windows, bt.stride) for s in data.series}
    for s in data.series:
        if origins[s.id][0] < L + H:
            raise ValueError(
                f"series {s.id!r} has {len(s)} steps: too short for {bt.windows} backtest windows of horizon {H} "
                f"after a context of {L} and training data; use fewer --windows, a shorter --horizon or --context"
            )
    res = BacktestResult(data.name, H, data.season, L, bt.windows, origins={k: v.tolist() for k, v in origins.items()})

    # the LSTM: trained on the history before the first origin of each series
    t0 = time.perf_counter()
    res.forecasts["lstm"] = {s.id: [] for s in data.series}
    first = origins[data.series[0].id][0]
    cut = SeriesSet([s.head(int(origins[s.id][0])) for s in data.series], data.targets, data.covariates,
                    data.freq, data.season, data.time_name, data.id_name, data.name)  # fmt: skip
    if bt.retrain:
        for j in range(bt.windows):
            cut_j = SeriesSet([s.head(int(origins[s.id][j])) for s in data.series], data.targets, data.covariates,
                              data.freq, data.season, data.time_name, data.id_name, data.name)  # fmt: skip
            model = Forecaster(config).fit(cut_j, show_progress=show_progress)
            for s in data.series:
                res.forecasts["lstm"][s.id] += model.forecast_at(s, [origins[s.id][j]])
    else:
        model = Forecaster(config).fit(cut, show_progress=show_progress)
        for s in data.series:
            res.forecasts["lstm"][s.id] = model.forecast_at(s, origins[s.id])
    res.seconds["lstm"] = time.perf_counter() - t0
    log.info("lstm: %.1f s (first origin %d)", res.seconds["lstm"], first)

    # the baselines, one target at a time
    for name in names:
        t0 = time.perf_counter()
        res.forecasts[name] = {}
        jobs = [(s, d) for s in data.series for d in range(len(data.targets))]
        per = {}
        for s, d in progress(jobs, desc=name, enable=show_progress):
            y = s.values[:, d]
            spec = bl.select(name, y[: origins[s.id][0]], data.season)
            if spec is not None:
                res.specs[f"{name}/{s.id}/{data.targets[d]}"] = {k: v for k, v in spec.items() if k != "params"}
            per[(s.id, d)] = [bl.forecast(name, y[:o], H, data.season, spec) for o in origins[s.id]]  # (Q, H) each
        for s in data.series:
            res.forecasts[name][s.id] = [
                Forecast(np.asarray(LEVELS), np.stack([per[(s.id, d)][j] for d in range(len(data.targets))], -1),
                         time=s.time[o : o + H] if s.time is not None else None)
                for j, o in enumerate(origins[s.id])
            ]  # fmt: skip
        res.seconds[name] = time.perf_counter() - t0
        log.info("%s: %.1f s", name, res.seconds[name])

    for method, per_series in res.forecasts.items():
        for sid, fcs in per_series.items():
            for j, (o, fc) in enumerate(zip(origins[sid], fcs)):
                _score(res, method, data, sid, j, int(o), fc)
    return res


@dataclass
class TuneResult:
    """Mean tuning-window score of each candidate setting, and the one chosen."""

    configs: list[ForecastConfig]  # the candidates, in the order given
    scores: list[float]  # mean MASE on the tuning windows (inf: the setting does not fit the data)
    chosen: int  # index of the lowest score (the first one on ties)
    cut: int  # steps removed from the end of every series before tuning (the held-out windows)
    windows: int  # tuning windows
    seconds: list[float] = field(default_factory=list)  # wall-clock per candidate
    results: list[BacktestResult | None] = field(default_factory=list)  # per candidate (None: did not fit)

    @property
    def best(self) -> ForecastConfig:
        return self.configs[self.chosen]


def tune(
    data: SeriesSet,
    configs: list[ForecastConfig],
    holdout: int,
    windows: int | None = None,
    *,
    stride: int = 0,
    baselines: str = "",
    show_progress: bool | None = None,
) -> TuneResult:
    """Choose among ``configs`` by mean MASE on tuning windows that end before ``holdout`` held-out windows.

    The last ``holdout`` windows of every series (laid out as :func:`backtest` lays them out with
    ``windows=holdout``) are cut off first, so nothing here depends on them; ``windows`` tuning
    windows (default ``holdout``) are then backtested on what is left. A setting too long for the
    cut data scores ``inf``. ``baselines`` are backtested on the same tuning windows (once, alongside
    the first candidate that fits), for reference.
    """
    if not configs:
        raise ValueError("tune needs at least one candidate setting")
    H = configs[0].horizon
    if any(c.horizon != H for c in configs):
        raise ValueError("every candidate setting must have the same horizon (the windows depend on it)")
    if holdout < 1:
        raise ValueError(f"holdout must be at least 1 window, got {holdout}")
    windows = windows or holdout
    for c in configs:
        c.check()
    cut = H + (holdout - 1) * (stride or H)  # steps from the first held-out origin to the end
    tuning = data.head(-cut)
    out = TuneResult(list(configs), [], 0, cut, windows)
    pending = baselines
    for k, cfg in enumerate(configs):
        t0 = time.perf_counter()
        try:
            r = backtest(tuning, cfg, BacktestConfig(windows=windows, stride=stride, baselines=pending),
                         show_progress=show_progress)  # fmt: skip
            score, pending = r.summary()["lstm"]["mase"], ""
        except ValueError as e:  # too long a context for the tuning data
            log.info("tune: candidate %d does not fit: %s", k, e)
            r, score = None, math.inf
        out.results.append(r)
        out.scores.append(float(score))
        out.seconds.append(time.perf_counter() - t0)
        log.info("tune: candidate %d: MASE %.4f (%.1f s)", k, score, out.seconds[-1])
    finite = [s if math.isfinite(s) else math.inf for s in out.scores]
    if min(finite) == math.inf:
        raise ValueError("no candidate setting fits the data before the held-out windows; use shorter contexts")
    out.chosen = int(np.argmin(finite))
    return out
