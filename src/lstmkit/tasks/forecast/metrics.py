"""Point and interval forecast errors, as in Hyndman & Koehler 2006 and the M4 competition.

For actuals ``y`` and forecasts ``f`` over a horizon (arrays of the same shape)::

    MAE   = mean |y - f|
    RMSE  = sqrt(mean (y - f)^2)
    MASE  = MAE / mean_{t > m} |h_t - h_{t-m}|      h: the history before the origin, m: the season
    sMAPE = 100 * mean 2 |y - f| / (|y| + |f|)       (0 where both are 0)
    coverage(lo, hi) = fraction of y with lo <= y <= hi
"""

from __future__ import annotations

import numpy as np

__all__ = ["mae", "rmse", "mase", "smape", "coverage", "mase_scale"]


def mae(y: np.ndarray, f: np.ndarray) -> float:
    return float(np.mean(np.abs(y - f)))


def rmse(y: np.ndarray, f: np.ndarray) -> float:
    return float(np.sqrt(np.mean((y - f) ** 2)))


def mase_scale(history: np.ndarray, season: int = 1) -> float:
    """In-sample MAE of the seasonal naive forecast (naive when ``season`` is 1) on ``history``."""
    m = season if len(history) > season else 1
    d = np.abs(history[m:] - history[:-m])
    return float(d.mean()) if len(d) else float("nan")


def mase(y: np.ndarray, f: np.ndarray, history: np.ndarray, season: int = 1) -> float:
    scale = mase_scale(history, season)
    return mae(y, f) / scale if scale > 0 else float("nan")


def smape(y: np.ndarray, f: np.ndarray) -> float:
    num, den = 2 * np.abs(y - f), np.abs(y) + np.abs(f)
    return float(100 * np.mean(np.divide(num, den, out=np.zeros_like(num, dtype=float), where=den > 0)))


def coverage(y: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> float:
    return float(np.mean((y >= lo) & (y <= hi)))
