"""PNG plots (matplotlib, Agg): history, forecast median, 80% and 95% intervals, backtest actuals."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ...data.series import Series, SeriesSet
from .model import Forecast

__all__ = ["plot_forecast", "plot_backtest"]


def _axes(n: int, title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(n, 1, figsize=(9, 2.6 * n + 0.6), squeeze=False, sharex=True)
    fig.suptitle(title, fontsize=11)
    return plt, fig, axes[:, 0]


def _x(s: Series, lo: int, hi: int, fc: Forecast | None = None):
    if fc is not None and fc.time is not None:
        return fc.time
    if s.time is not None and hi <= len(s):
        return s.time[lo:hi]
    return np.arange(lo, hi)


def _band(ax, x, fc: Forecast, d: int, color: str, label: str | None) -> None:
    lo95, hi95 = fc.interval(0.95)
    lo80, hi80 = fc.interval(0.8)
    ax.fill_between(x, lo95[:, d], hi95[:, d], color=color, alpha=0.15, lw=0, label=label and "95% interval")
    ax.fill_between(x, lo80[:, d], hi80[:, d], color=color, alpha=0.3, lw=0, label=label and "80% interval")
    ax.plot(x, fc.median[:, d], color=color, lw=1.4, label=label)


def _save(plt, fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def plot_forecast(data: SeriesSet, s: Series, fc: Forecast, path: str | os.PathLike, history: int = 0) -> Path:
    """History (the last ``history`` steps; 0: 5 horizons), median and intervals of the forecast."""
    H = fc.median.shape[0]
    n = len(s)
    lo = max(0, n - (history or 5 * H))
    D = min(len(data.targets), 4)
    plt, fig, axes = _axes(D, f"{data.name}: series {s.id}, forecast of {H} steps")
    hx = _x(s, lo, n)
    fx = fc.time if fc.time is not None else np.arange(n, n + H)
    for d, ax in enumerate(axes):
        ax.plot(hx, s.values[lo:n, d], color="k", lw=1, label="history")
        _band(ax, fx, fc, d, "C0", "forecast median")
        ax.set_ylabel(data.targets[d])
    axes[0].legend(loc="upper left", fontsize=8, ncol=4)
    return _save(plt, fig, path)


def plot_backtest(result, data: SeriesSet, s: Series, path: str | os.PathLike, methods=("lstm",)) -> Path:
    """History before the first window, actuals in the backtest windows, each method's forecasts."""
    origins = result.origins[s.id]
    H = result.horizon
    lo = max(0, origins[0] - 4 * H)
    hi = origins[-1] + H
    D = min(len(data.targets), 4)
    plt, fig, axes = _axes(D, f"{data.name}: rolling-origin backtest, {len(origins)} windows of {H} steps")
    for d, ax in enumerate(axes):
        ax.plot(_x(s, lo, hi), s.values[lo:hi, d], color="k", lw=1, label="actual")
        for o in origins:
            ax.axvline(_x(s, o, o + 1)[0], color="0.8", lw=0.6)
        for c, m in enumerate(methods):
            for j, (o, fc) in enumerate(zip(origins, result.forecasts[m][s.id])):
                label = m if j == 0 else None
                if c == 0:
                    _band(ax, _x(s, o, o + H, fc), fc, d, f"C{c}", label)
                else:
                    ax.plot(_x(s, o, o + H, fc), fc.median[:, d], color=f"C{c}", lw=1, ls="--", label=label)
        ax.set_ylabel(data.targets[d])
    axes[0].legend(loc="upper left", fontsize=8, ncol=3)
    return _save(plt, fig, path)
