"""Time series: reading a table into checked, regular series; the bundled classic series; windows.

A table (CSV file or pandas DataFrame) holds one row per time step and per series::

    id    time        y1     y2    promo      <- id column (optional), time column (optional),
    a     2020-01-01  3.0    1.2   0             target columns (one or more), covariate columns
    a     2020-02-01  3.4    1.1   1             known in the future (optional)
    b     2020-01-01  10.0   7.5   0

:func:`load_series` turns it into a :class:`SeriesSet`: per series a ``(T, D)`` float array of
targets, a ``(T, C)`` array of covariates and the timestamps; the frequency is inferred (or given)
and gaps in a regular calendar are reported as missing values. Bad input is a ``ValueError`` that
says where: missing values (interpolated only when asked), non-numeric columns, duplicate or
unsorted timestamps, a series too short for context + horizon.

:func:`builtin_series` loads the classic series statsmodels ships with itself (no network):
Mauna Loa CO2, yearly sunspots, El Nino sea temperatures, the Nile flow and US macro series.

:func:`windows` cuts (context, horizon) training windows out of a series::

    t:   0 . . . . . . o-L . . . . . o . . . o+H
                       [  context L  )[horizon H)      one window per origin o

pandas (and statsmodels for the bundled series) are imported lazily; without them the error names
``pip install 'lstmkit[forecast]'``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "Series",
    "SeriesSet",
    "BUILTIN",
    "MissingDependencyError",
    "builtin_series",
    "load_series",
    "require",
    "season_for_freq",
    "windows",
]

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'lstmkit[forecast]'"


class MissingDependencyError(ImportError):
    """An optional dependency of forecasting (pandas, statsmodels) is not installed."""


def require(name: str) -> Any:
    """Import an optional dependency, or fail with the install command in the message."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError as e:
        raise MissingDependencyError(
            f"forecasting needs the optional dependency '{name.split('.')[0]}', which is not installed: "
            f"run {INSTALL_HINT}"
        ) from e


# -- containers -------------------------------------------------------------------------------


@dataclass
class Series:
    """One series: targets ``values`` (T, D), ``covariates`` (T, C), and where it sits in time."""

    id: str  # the value of the id column ("0" for a table without one)
    values: np.ndarray  # (T, D) float64 targets
    covariates: np.ndarray  # (T, C) float64 covariates known in the future; C may be 0
    time: Any = None  # pandas DatetimeIndex of length T, or None (integer steps)
    phase0: int = 0  # seasonal phase of step 0, so that series starting at different dates agree

    def __len__(self) -> int:
        return self.values.shape[0]

    def head(self, n: int) -> Series:
        """The first ``n`` steps (``n`` may be negative, as in slicing)."""
        time = None if self.time is None else self.time[:n]
        return Series(self.id, self.values[:n], self.covariates[:n], time, self.phase0)


@dataclass
class SeriesSet:
    """Several aligned-in-meaning series with the same target and covariate columns."""

    series: list[Series]
    targets: list[str]  # names of the D target columns
    covariates: list[str] = field(default_factory=list)  # names of the C covariate columns
    freq: str | None = None  # pandas frequency alias ("MS", "YS", "QS-OCT", ...) or None
    season: int = 1  # seasonal period in steps (1: no season)
    time_name: str | None = None  # name of the time column, for output tables
    id_name: str | None = None  # name of the id column, for output tables
    name: str = "data"  # what the data is, for tables and plot titles

    def __len__(self) -> int:
        return len(self.series)

    def head(self, n: int) -> SeriesSet:
        """Every series cut to its first ``n`` steps (negative ``n``: all but the last ``-n``)."""
        return SeriesSet([s.head(n) for s in self.series], self.targets, self.covariates, self.freq,
                         self.season, self.time_name, self.id_name, self.name)  # fmt: skip

    def check_length(self, need: int, what: str) -> None:
        """A clear error for the first series shorter than ``need`` steps."""
        for s in self.series:
            if len(s) < need:
                raise ValueError(
                    f"series {s.id!r} has {len(s)} steps, shorter than {what} = {need}; "
                    "use a shorter --context or --horizon (or fewer backtest --windows), or more data"
                )


# -- frequency and season ---------------------------------------------------------------------

_SEASONS = {"H": 24, "h": 24, "D": 7, "B": 5, "W": 52, "M": 12, "MS": 12, "ME": 12, "Q": 4, "QS": 4, "QE": 4}


def season_for_freq(freq: str | None) -> int:
    """The usual seasonal period of a pandas frequency alias (monthly 12, quarterly 4, ...); 1 if none."""
    if not freq:
        return 1
    base = freq.split("-")[0].lstrip("0123456789")
    return _SEASONS.get(base, 1)


# -- loading ----------------------------------------------------------------------------------


def _as_list(x: str | list[str] | tuple[str, ...] | None) -> list[str]:
    if x is None:
        return []
    if isinstance(x, str):
        return [c for c in (p.strip() for p in x.split(",")) if c]
    return list(x)


def _read_table(source: Any):
    pd = require("pandas")
    if isinstance(source, pd.DataFrame):
        return source.copy()
    path = os.fspath(source)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"data file {path} does not exist; give a CSV file (or --dataset NAME)")
    return pd.read_csv(path)


def _check_numeric(df, columns: list[str], role: str) -> None:
    pd = require("pandas")
    for c in columns:
        if c not in df.columns:
            raise ValueError(f"{role} column {c!r} is not in the table; columns are {list(df.columns)}")
        if not pd.api.types.is_numeric_dtype(df[c]):
            bad = pd.to_numeric(df[c], errors="coerce").isna() & df[c].notna()
            row = int(np.flatnonzero(bad.to_numpy())[0]) if bad.any() else 0
            raise ValueError(
                f"{role} column {c!r} is not numeric (row {row} holds {df[c].iloc[row]!r}); "
                "convert it to numbers or leave it out of --target/--covariates"
            )


def load_series(
    source: Any,
    *,
    time: str | None = None,
    target: str | list[str] | None = None,
    covariates: str | list[str] | None = None,
    id: str | None = None,
    freq: str | None = None,
    season: int | None = None,
    interpolate: bool = False,
    name: str | None = None,
) -> SeriesSet:
    """Read a CSV path or DataFrame into a checked :class:`SeriesSet`.

    ``target`` defaults to every numeric column that is not time, id or covariate. With a time
    column, rows must be sorted and unique per series; the frequency is inferred unless given,
    and steps missing from the regular calendar become missing values. Missing values are an error
    that says where, unless ``interpolate=True`` (linear in time, then edge values carried).
    """
    pd = require("pandas")
    df = _read_table(source)
    covariates = _as_list(covariates)
    for col, role in ((time, "time"), (id, "id")):
        if col is not None and col not in df.columns:
            raise ValueError(f"{role} column {col!r} is not in the table; columns are {list(df.columns)}")
    targets = _as_list(target)
    if not targets:
        skip = {time, id, *covariates}
        targets = [c for c in df.columns if c not in skip and pd.api.types.is_numeric_dtype(df[c])]
        if not targets:
            raise ValueError(f"no numeric target column found in {list(df.columns)}; name one with --target")
    _check_numeric(df, targets, "target")
    _check_numeric(df, covariates, "covariate")

    groups = [("0", df)] if id is None else [(str(k), g) for k, g in df.groupby(id, sort=False)]
    parsed: list[tuple[str, Any, Any]] = []  # (id, frame, DatetimeIndex | None)
    for sid, g in groups:
        where = "" if id is None else f" in series {sid!r}"
        if time is None:
            parsed.append((sid, g.reset_index(drop=True), None))
            continue
        try:
            ts = pd.DatetimeIndex(pd.to_datetime(g[time]))
        except (ValueError, TypeError) as e:
            raise ValueError(f"time column {time!r}{where} does not parse as dates: {e}") from e
        if ts.hasnans:
            row = int(np.flatnonzero(ts.isna())[0])
            raise ValueError(f"time column {time!r}{where} is empty at row {row}; every row needs a timestamp")
        dup = ts.duplicated()
        if dup.any():
            at = ts[np.flatnonzero(dup)[0]]
            raise ValueError(
                f"duplicate timestamp {_fmt(at)}{where} ({int(dup.sum())} duplicates); "
                "one row per time step and series: aggregate them or add an --id column"
            )
        if not ts.is_monotonic_increasing:
            i = int(np.flatnonzero(np.diff(ts.asi8) < 0)[0])
            raise ValueError(
                f"timestamps{where} are not sorted: {_fmt(ts[i])} comes before {_fmt(ts[i + 1])} (rows {i}, {i + 1}); "
                "sort the table by time first"
            )
        parsed.append((sid, g.reset_index(drop=True), ts))

    if time is not None and freq is None:
        freq = _infer_freq([ts for _, _, ts in parsed])
    out: list[Series] = []
    for sid, g, ts in parsed:
        if ts is not None and freq is not None:
            full = pd.date_range(ts[0], ts[-1], freq=freq)
            extra = ts.difference(full)
            if len(extra):
                raise ValueError(
                    f"timestamp {_fmt(extra[0])} of series {sid!r} is off the {freq!r} calendar that starts at "
                    f"{_fmt(ts[0])}; give the right --freq or fix the time column"
                )
            if len(full) != len(ts):
                g = g.set_index(ts).reindex(full).reset_index(drop=True)
                log.info("series %s: %d steps missing from the %s calendar", sid, len(full) - len(ts), freq)
            ts = full
        cols = targets + covariates
        block = g[cols].astype("float64")
        if block.isna().to_numpy().any():
            if not interpolate:
                raise ValueError(_missing_message(block, ts, sid if id is not None else None))
            block = block.interpolate(method="linear", limit_direction="both")
            if block.isna().to_numpy().any():
                raise ValueError(f"series {sid!r}: a column is entirely missing, nothing to interpolate from")
        arr = block.to_numpy()
        out.append(Series(sid, arr[:, : len(targets)].copy(), arr[:, len(targets) :].copy(), ts))

    if freq is not None:  # seasonal phase of each series' first step, relative to the earliest start
        start = min(s.time[0] for s in out)
        for s in out:
            s.phase0 = len(pd.date_range(start, s.time[0], freq=freq)) - 1
    if season is None:
        season = season_for_freq(freq)
    if season < 1:
        raise ValueError(f"season must be >= 1 (1 means no season), got {season}")
    return SeriesSet(out, targets, covariates, freq, int(season), time, id, name or "data")


def _fmt(t) -> str:
    """A timestamp as a date when it is midnight, else in full."""
    return str(t.date()) if hasattr(t, "date") and t == t.normalize() else str(t)


def _infer_freq(indexes: list) -> str | None:
    pd = require("pandas")
    for ts in sorted(indexes, key=len, reverse=True):
        if len(ts) >= 3:
            try:  # pandas >= 3.1 warns unless asked for the future behaviour (an offset)
                with pd.option_context("future.infer_freq_returns_offset", True):
                    f = pd.infer_freq(ts)
            except (KeyError, pd.errors.OptionError):
                f = pd.infer_freq(ts)
            if f is not None:
                return getattr(f, "freqstr", f)
    # irregular (gaps): take the most common step if it is a whole number of days
    steps = np.concatenate([np.diff(ts.asi8) for ts in indexes if len(ts) > 1])
    if len(steps):
        vals, counts = np.unique(steps, return_counts=True)
        step = pd.Timedelta(int(vals[np.argmax(counts)]), unit="ns")
        if step >= pd.Timedelta(days=1) and step % pd.Timedelta(days=1) == pd.Timedelta(0) and step.days < 28:
            return f"{step.days}D"
    raise ValueError(
        "cannot infer the frequency of the time column (irregular steps); give it with --freq (e.g. D, W, MS, QS, YS)"
    )


def _missing_message(block, ts, sid: str | None) -> str:
    isna = block.isna().to_numpy()  # (T, D + C)
    rows, cols = np.nonzero(isna)
    places = []
    for r, c in list(zip(rows, cols))[:5]:
        at = f"row {r}" if ts is None else _fmt(ts[r])
        places.append(f"{block.columns[c]!r} at {at}")
    where = "" if sid is None else f" in series {sid!r}"
    return (
        f"{int(isna.sum())} missing value(s){where}: {', '.join(places)}{' ...' if len(rows) > 5 else ''}; "
        "fill them, or pass --interpolate (interpolate=True) to interpolate linearly"
    )


# -- the bundled classic series ---------------------------------------------------------------


@dataclass(frozen=True)
class Builtin:
    """A classic series and the forecasting setting the benchmark uses for it."""

    what: str  # one line for humans
    horizon: int  # steps forecast
    season: int  # seasonal period in steps
    windows: int  # backtest windows (rolling origins, one horizon apart)


BUILTIN: dict[str, Builtin] = {
    "co2": Builtin("Mauna Loa CO2 (ppm), weekly 1958-2001 averaged to monthly", 12, 12, 8),
    "sunspots": Builtin("yearly sunspot activity 1700-2008 (11-year cycle)", 11, 11, 5),
    "elnino": Builtin("monthly El Nino sea surface temperature 1950-2010 (deg C)", 12, 12, 8),
    "nile": Builtin("yearly Nile flow at Aswan 1871-1970 (10^8 m^3)", 5, 1, 5),
    "unemp": Builtin("US unemployment rate (%), quarterly 1959-2009 (macrodata)", 8, 4, 6),
    "macro": Builtin("US real GDP, consumption, investment (log), quarterly 1959-2009 (macrodata)", 8, 4, 6),
}


def builtin_series(name: str) -> SeriesSet:
    """One of :data:`BUILTIN`, read from the copies statsmodels ships (offline)."""
    if name not in BUILTIN:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(BUILTIN)}")
    pd = require("pandas")
    datasets = require("statsmodels.datasets")
    b = BUILTIN[name]
    if name == "co2":
        raw = datasets.co2.load_pandas().data["co2"]  # weekly, 59 weeks missing
        s = raw.interpolate().resample("MS").mean()
        df = pd.DataFrame({"time": s.index, "co2": s.to_numpy()})
    elif name == "sunspots":
        d = datasets.sunspots.load_pandas().data
        df = pd.DataFrame({"time": pd.to_datetime(d["YEAR"].astype(int).astype(str)), "sunspots": d["SUNACTIVITY"]})
    elif name == "elnino":
        d = datasets.elnino.load_pandas().data
        months = [c for c in d.columns if c != "YEAR"]
        vals = d[months].to_numpy().reshape(-1)  # year-major: (years * 12,)
        df = pd.DataFrame({"time": pd.date_range(f"{int(d['YEAR'].iloc[0])}-01-01", periods=len(vals), freq="MS"),
                           "sst": vals})  # fmt: skip
    elif name == "nile":
        d = datasets.nile.load_pandas().data
        df = pd.DataFrame({"time": pd.to_datetime(d["year"].astype(int).astype(str)), "volume": d["volume"]})
    else:  # macrodata
        d = datasets.macrodata.load_pandas().data
        t = pd.date_range(f"{int(d['year'].iloc[0])}-01-01", periods=len(d), freq="QS")
        if name == "unemp":
            df = pd.DataFrame({"time": t, "unemp": d["unemp"].to_numpy()})
        else:
            df = pd.DataFrame({"time": t, **{c: np.log(d[c].to_numpy()) for c in ("realgdp", "realcons", "realinv")}})
    return load_series(df, time="time", season=b.season, name=name)


# -- windows ----------------------------------------------------------------------------------


def windows(length: int, context: int, horizon: int, start: int | None = None, stop: int | None = None) -> np.ndarray:
    """Forecast origins ``o`` with a full context before and a full horizon after, ``o`` in [start, stop).

    Origin ``o`` means context ``[o - context, o)`` and targets ``[o, o + horizon)``; by default
    every such origin of a series of ``length`` steps.
    """
    lo = context if start is None else max(start, context)
    hi = length - horizon + 1 if stop is None else min(stop, length - horizon + 1)
    return np.arange(lo, max(lo, hi))
