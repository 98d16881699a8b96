"""Classical baselines, forecasting one target of one series, with the same quantiles as the LSTM.

* ``naive``: the last value; interval sd ``sigma * sqrt(h)`` from one-step naive residuals.
* ``snaive``: the value one season ago; sd ``sigma * sqrt(k + 1)``, ``k = floor((h - 1) / m)``
  (Hyndman & Athanasopoulos, "Forecasting: Principles and Practice", 3rd ed., 5.5).
* ``ets``: statsmodels' ``ETSModel``, additive errors; trend (none, additive, damped) and additive
  season (when the series has one) chosen by AICc on the first backtest origin, refit at each.
* ``arima``: statsmodels' ``ARIMA`` on the last ``ARIMA_HISTORY`` steps (state-space fits are slow);
  d by KPSS tests, seasonal D = 1 when STL seasonal strength exceeds 0.64 (both as in R's
  ``forecast::auto.arima``), then p <= 2, q <= 2 (seasonal MA(1) with D = 1) by AICc on the first
  origin; refit at each origin, starting from the first fit's parameters.

A baseline is ``select(history, season) -> spec`` then ``forecast(history, horizon, season, spec)``
``-> (Q, H)`` quantiles at :data:`~.model.LEVELS`. statsmodels is imported lazily.
"""

from __future__ import annotations

import logging
import warnings
from statistics import NormalDist

import numpy as np

from ...data.series import require
from .model import LEVELS

__all__ = ["BASELINES", "select", "forecast"]

log = logging.getLogger(__name__)

BASELINES = ("naive", "snaive", "ets", "arima")
ARIMA_HISTORY = 240  # steps an ARIMA sees (20 years of a monthly series)
_Z = np.array([NormalDist().inv_cdf(q) for q in LEVELS])  # (Q,) standard normal quantiles


def _gaussian(mean: np.ndarray, sd: np.ndarray) -> np.ndarray:
    return mean[None, :] + _Z[:, None] * sd[None, :]  # (Q, H)


def _naive(y: np.ndarray, H: int, m: int) -> np.ndarray:
    m = m if len(y) > m else 1
    res = y[m:] - y[:-m]
    sigma = float(np.sqrt(np.mean(res**2))) if len(res) else 0.0
    h = np.arange(1, H + 1)
    if m == 1:
        return _gaussian(np.full(H, y[-1]), sigma * np.sqrt(h))
    mean = y[len(y) - m + (h - 1) % m]  # the same season, last year
    return _gaussian(mean, sigma * np.sqrt((h - 1) // m + 1))


def _pd_series(y: np.ndarray):
    return require("pandas").Series(np.asarray(y, dtype=float))


def _ets_fit(y: np.ndarray, m: int, spec: dict):
    ets = require("statsmodels.tsa.exponential_smoothing.ets")
    model = ets.ETSModel(
        _pd_series(y), error="add", trend=spec["trend"], damped_trend=spec["damped"],
        seasonal=spec["seasonal"], seasonal_periods=m if spec["seasonal"] else None,
    )  # fmt: skip
    return model.fit(disp=False)


def _ets_select(y: np.ndarray, m: int) -> dict:
    cands = []
    for seasonal in ([None, "add"] if m > 1 and len(y) >= 2 * m + 2 else [None]):
        for trend, damped in ((None, False), ("add", False), ("add", True)):
            cands.append({"trend": trend, "damped": damped, "seasonal": seasonal})
    best, best_aicc = cands[0], np.inf
    for spec in cands:
        try:
            aicc = _ets_fit(y, m, spec).aicc
        except Exception as e:  # a candidate that does not fit is skipped
            log.debug("ets %s failed: %s", spec, e)
            continue
        if np.isfinite(aicc) and aicc < best_aicc:
            best, best_aicc = spec, aicc
    return best


def _ets(y: np.ndarray, H: int, m: int, spec: dict) -> np.ndarray:
    r = _ets_fit(y, m, spec)
    pred = r.get_prediction(start=len(y), end=len(y) + H - 1)
    return _from_intervals(np.asarray(pred.predicted_mean), lambda a: np.asarray(pred.pred_int(alpha=a)))


def _from_intervals(mean: np.ndarray, interval) -> np.ndarray:
    """(Q, H) quantiles from a point forecast and central intervals ``interval(alpha) -> (H, 2)``."""
    out = np.empty((len(LEVELS), len(mean)))
    for i, q in enumerate(LEVELS):
        if q == 0.5:
            out[i] = mean
        elif q < 0.5:
            iv = interval(2 * q)
            out[i], out[len(LEVELS) - 1 - i] = iv[:, 0], iv[:, 1]
    return out


def _seasonal_strength(y: np.ndarray, m: int) -> float:
    stl = require("statsmodels.tsa.seasonal")
    r = stl.STL(y, period=m, robust=True).fit()
    resid, seas = r.resid, r.seasonal
    return float(max(0.0, 1 - np.var(resid) / max(np.var(seas + resid), 1e-12)))


def _ndiffs(y: np.ndarray, max_d: int = 2) -> int:
    st = require("statsmodels.tsa.stattools")
    d = 0
    while d < max_d and len(y) > 10:
        try:
            p = st.kpss(y, regression="c", nlags="auto")[1]
        except Exception:
            break
        if p >= 0.05:
            break
        y, d = np.diff(y), d + 1
    return d


def _arima_fit(y: np.ndarray, spec: dict):
    arima = require("statsmodels.tsa.arima.model")
    model = arima.ARIMA(_pd_series(y[-ARIMA_HISTORY:]), order=spec["order"], seasonal_order=spec["seasonal_order"],
                        trend=spec["trend"])  # fmt: skip
    start = spec.get("params")
    return model.fit(start_params=start if start is not None and len(start) == len(model.start_params) else None)


def _arima_select(y: np.ndarray, m: int) -> dict:
    y = y[-ARIMA_HISTORY:]
    D = 1 if m > 1 and len(y) >= 3 * m and _seasonal_strength(y, m) > 0.64 else 0
    yd = y[m:] - y[:-m] if D else y
    d = _ndiffs(yd)
    seasonal_order = (0, 1, 1, m) if D else (0, 0, 0, 0)
    trend = "c" if d + D == 0 else ("t" if d + D == 1 else "n")
    best, best_aicc = None, np.inf
    for p in range(3):
        for q in range(3):
            spec = {"order": (p, d, q), "seasonal_order": seasonal_order, "trend": trend}
            try:
                r = _arima_fit(y, spec)
                aicc, spec["params"] = r.aicc, np.asarray(r.params)
            except Exception as e:
                log.debug("arima %s failed: %s", spec, e)
                continue
            if np.isfinite(aicc) and aicc < best_aicc:
                best, best_aicc = spec, aicc
    if best is None:
        raise ValueError("no ARIMA model could be fit to this series")
    return best


def _arima(y: np.ndarray, H: int, m: int, spec: dict) -> np.ndarray:
    f = _arima_fit(y, spec).get_forecast(H)
    return _from_intervals(np.asarray(f.predicted_mean), lambda a: np.asarray(f.conf_int(alpha=a)))


def select(name: str, history: np.ndarray, season: int) -> dict | None:
    """Choose the model of baseline ``name`` on ``history`` (T,); None for the naive ones."""
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; choose from {', '.join(BASELINES)}")
    if name in ("naive", "snaive"):
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # statsmodels' convergence chatter
        return _ets_select(history, season) if name == "ets" else _arima_select(history, season)


def forecast(name: str, history: np.ndarray, horizon: int, season: int, spec: dict | None) -> np.ndarray:
    """(Q, H) quantiles at LEVELS of baseline ``name`` fit to ``history`` (T,)."""
    if name == "naive":
        return _naive(history, horizon, 1)
    if name == "snaive":
        return _naive(history, horizon, season)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _ets(history, horizon, season, spec) if name == "ets" else _arima(history, horizon, season, spec)
