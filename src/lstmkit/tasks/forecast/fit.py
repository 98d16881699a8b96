"""``Forecaster``: scaling, training windows, the training loop with early stopping, forecasts, checkpoints.

Scaling is per series and per target (pytorch-forecasting's group normalizer): ``z = (y - mean) / std``
with mean and std of the series' training part. With ``scaling="window"`` each window's context
mean is subtracted as well (as in DeepAR's per-window scale, or RevIN), so a trending series looks
the same to the network wherever it is; forecasts are shifted back by the same amount. The default
``"window+level"`` also gives the network that mean as a known input, so that it can still learn
mean reversion (on the bundled series: better on sunspots and the Nile, worse on CO2). ``"last"``
subtracts the context's last value instead, so that an output of zero is the naive forecast (a
prior that suits persistent, random-walk-like series).

Early stopping holds out each series' last ``max(horizon, val_frac * length)`` steps: training
windows end before them, validation windows forecast inside them::

    |------------------- training windows ------------------|--- validation tail ---|
                                              context  [    ]  horizon [          ]

The most recent steps are then never trained on; ``refit=True`` trains each network once more from
the same seed on every window, the validation tail included, for the number of epochs that early
stopping found best (as one refits on train + validation after choosing the epoch count).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import os
from typing import Any

import numpy as np
import torch

from ...data.series import Series, SeriesSet, require, windows
from ...train import load_checkpoint, progress, save_checkpoint, seed_everything
from .model import LEVELS, Forecast, ForecastConfig, ForecastNet, QuantileHead, phase_features

__all__ = ["Forecaster"]

log = logging.getLogger(__name__)

FORMAT = "lstmkit.forecast/1"


def _scaler(s: Series) -> dict[str, np.ndarray]:
    def ms(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mean, std = a.mean(axis=0), a.std(axis=0)
        return mean, np.where(std > 1e-8, std, 1.0)

    tm, ts = ms(s.values)
    cm, cs = ms(s.covariates) if s.covariates.shape[1] else (np.zeros(0), np.ones(0))
    return {"t_mean": tm, "t_std": ts, "c_mean": cm, "c_std": cs}


class Forecaster:
    """An LSTM forecaster: ``fit(SeriesSet)``, then ``forecast_at(series, origins)`` or ``predict(SeriesSet)``."""

    def __init__(self, config: ForecastConfig | None = None, **overrides: Any) -> None:
        self.config = dataclasses.replace(config or ForecastConfig(), **overrides)
        self.config.check()
        self.nets: list[ForecastNet] = []
        self.scalers: dict[str, dict[str, np.ndarray]] = {}
        self.meta: dict[str, Any] = {}
        self.history: list[dict[str, float]] = []  # per network: epochs run, best validation loss

    # -- data -> tensors --------------------------------------------------------------------

    @property
    def context(self) -> int:
        return self.meta["context"]

    def _scaler_for(self, s: Series) -> dict[str, np.ndarray]:
        return self.scalers.get(s.id) or _scaler(s)

    def _features(self, s: Series, length: int, future_cov: np.ndarray | None = None) -> np.ndarray:
        """(length, F) known features: scaled covariates, then [sin, cos] of the seasonal phase."""
        sc = self._scaler_for(s)
        cov = s.covariates if future_cov is None else np.concatenate([s.covariates, future_cov])
        if cov.shape[0] < length:
            if cov.shape[1]:
                raise ValueError(
                    f"series {s.id!r}: covariates {self.meta['covariates']} are needed for the {length - len(s)} "
                    "future steps; give them (a --future table with the time and covariate columns)"
                )
            cov = np.zeros((length, 0))
        cov = (cov[:length] - sc["c_mean"]) / sc["c_std"]
        phase = phase_features(s.phase0 + np.arange(length), self.meta["season"])
        return np.concatenate([cov, phase], axis=1)

    def _windows(self, s: Series, origins: np.ndarray, future_cov=None, with_targets=True):
        """Tensors for the windows at ``origins``: y (N,L,D), xc (N,L,F), xf (N,H,F), yf (N,H,D), loc (N,1,D)."""
        L, H = self.context, self.config.horizon
        sc = self._scaler_for(s)
        z = (s.values - sc["t_mean"]) / sc["t_std"]  # (T, D)
        feats = self._features(s, int(origins.max()) + H, future_cov)  # (T', F)
        idx = origins[:, None] + np.arange(-L, 0)[None, :]  # (N, L)
        y = z[idx]  # (N, L, D)
        scaling = self.config.scaling
        if scaling == "last":  # the last value: a zero output is the naive forecast
            loc = y[:, -1:]  # (N, 1, D)
        else:
            loc = y.mean(axis=1, keepdims=True) if scaling != "series" else np.zeros_like(y[:, :1])  # (N, 1, D)
        xc, xf = feats[idx], feats[origins[:, None] + np.arange(H)[None, :]]  # (N, L, F), (N, H, F)
        if scaling == "window+level":  # the level the window was shifted by, as a known input
            xc = np.concatenate([xc, np.broadcast_to(loc, (len(idx), L, loc.shape[-1]))], axis=-1)  # (N, L, F+D)
            xf = np.concatenate([xf, np.broadcast_to(loc, (len(idx), H, loc.shape[-1]))], axis=-1)  # (N, H, F+D)
        out = {"y": y - loc, "xc": xc, "xf": xf, "loc": loc}
        if with_targets:
            out["yf"] = z[origins[:, None] + np.arange(H)[None, :]] - loc  # (N, H, D)
        return {k: torch.as_tensor(v, dtype=torch.float32) for k, v in out.items()}

    # -- training ---------------------------------------------------------------------------

    def fit(self, data: SeriesSet, *, checkpoint: str | os.PathLike | None = None, show_progress=None) -> Forecaster:
        """Train on every series of ``data`` (all of it: cut off test data before calling)."""
        cfg = self.config
        L, H = cfg.resolved_context(data.season), cfg.horizon
        if L < 2:
            raise ValueError(f"context must be at least 2 steps, got {L}")
        self.meta = {
            "targets": list(data.targets), "covariates": list(data.covariates), "freq": data.freq,
            "season": data.season, "context": L, "time_name": data.time_name, "id_name": data.id_name,
            "name": data.name,
        }  # fmt: skip
        shortest = min(len(s) for s in data.series)
        val_len = max(H, math.ceil(cfg.val_frac * shortest))
        data.check_length(L + H + val_len, f"context {L} + horizon {H} + validation tail {val_len}")
        self.scalers = {s.id: _scaler(s) for s in data.series}
        train, val, full = [], [], []
        for s in data.series:
            n = len(s)
            train.append(self._windows(s, windows(n - val_len, L, H)))
            val.append(self._windows(s, windows(n, L, H, start=n - val_len)))
            if cfg.refit:
                full.append(self._windows(s, windows(n, L, H)))
        train = {k: torch.cat([w[k] for w in train]) for k in train[0]}
        val = {k: torch.cat([w[k] for w in val]) for k in val[0]}
        log.info("forecast: %d training and %d validation windows of context %d, horizon %d",
                 len(train["y"]), len(val["y"]), L, H)  # fmt: skip
        every = {k: torch.cat([w[k] for w in full]) for k in full[0]} if cfg.refit else None
        self.nets, self.history = [], []
        for k in range(cfg.ensemble):
            net = self._train_one(k, train, val, checkpoint, show_progress)
            if cfg.refit:
                net = self._train_one(k, every, None, None, show_progress, epochs=self.history[-1]["best_epoch"])
            self.nets.append(net)
        if checkpoint is not None:
            self.save(checkpoint)
        return self

    def _train_one(
        self, k: int, train: dict, val: dict | None, checkpoint, show_progress, epochs: int | None = None
    ) -> ForecastNet:
        """Network ``k``: early stopping on ``val``, or (``val`` None, a refit) exactly ``epochs`` epochs."""
        cfg = self.config
        seed_everything(cfg.seed + 1000 * k)
        net = ForecastNet(cfg, len(self.meta["targets"]), train["xc"].shape[-1])
        opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        N = len(train["y"])
        refit, budget = val is None, cfg.max_epochs if epochs is None else epochs
        best, best_state, best_epoch, bad, epochs = math.inf, copy.deepcopy(net.state_dict()), 0, 0, 0
        desc = f"forecast net {k + 1}/{cfg.ensemble}" + (" (refit)" if refit else "")
        bar = progress(range(budget), desc=desc, enable=show_progress)
        for _ in bar:
            epochs += 1
            net.train()
            perm = torch.randperm(N)
            total = 0.0
            for i in range(0, N, cfg.batch_size):
                b = perm[i : i + cfg.batch_size]
                loss = net.loss(train["y"][b], train["xc"][b], train["yf"][b], train["xf"][b])
                opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
                opt.step()
                total += loss.item() * len(b)
            net.eval()
            if refit:
                bar.set_postfix(train=f"{total / N:.4f}")
                continue
            with torch.no_grad():
                v = float(net.loss(val["y"], val["xc"], val["yf"], val["xf"], horizon_only=True))
            bar.set_postfix(train=f"{total / N:.4f}", val=f"{v:.4f}", best=f"{min(best, v):.4f}")
            if v < best - 1e-4:
                best, best_state, best_epoch, bad = v, copy.deepcopy(net.state_dict()), epochs, 0
                if checkpoint is not None:
                    self.nets.append(net)
                    self.save(checkpoint)
                    self.nets.pop()
            else:
                bad += 1
                if bad >= cfg.patience:
                    break
        bar.close()
        if refit:
            net.eval()
            self.history[-1]["refit_epochs"] = epochs
            log.info("forecast net %d: refit on every window for %d epochs", k + 1, epochs)
            return net
        net.load_state_dict(best_state)
        net.eval()
        self.history.append({"epochs": epochs, "best_epoch": best_epoch, "best_val_loss": best})
        log.info("forecast net %d: %d epochs, best validation loss %.4f at epoch %d", k + 1, epochs, best, best_epoch)
        return net

    # -- forecasting ------------------------------------------------------------------------

    def forecast_at(self, s: Series, origins, future_cov: np.ndarray | None = None) -> list[Forecast]:
        """Forecasts of ``s`` from each origin (the first forecast step's index), history before it."""
        if not self.nets:
            raise ValueError("the forecaster is not trained; call fit() (or load a checkpoint) first")
        L, H = self.context, self.config.horizon
        origins = np.atleast_1d(np.asarray(origins, dtype=int))
        if origins.min() < L:
            raise ValueError(f"series {s.id!r}: {origins.min()} steps of history, shorter than the context {L}")
        w = self._windows(s, origins, future_cov, with_targets=False)
        sc = self._scaler_for(s)
        outs = [net.forecast(w["y"], w["xc"], w["xf"], self.config.num_samples) for net in self.nets]
        quantile_head = isinstance(self.nets[0].head, QuantileHead)
        pooled = torch.stack(outs).mean(0) if quantile_head else torch.cat(outs)  # (Q or S, N, H, D)
        vals = (pooled.numpy().astype(np.float64) + w["loc"].numpy()[None]) * sc["t_std"] + sc["t_mean"]
        result = []
        for j, o in enumerate(origins):
            time = _future_time(s, int(o), H, self.meta["freq"])
            if quantile_head:
                levels = np.asarray(sorted(self.config.quantiles))
                result.append(Forecast(levels, vals[:, j], None, time))
            else:
                result.append(Forecast.from_samples(vals[:, j], LEVELS, time))
        return result

    def predict(self, data: SeriesSet, future: SeriesSet | None = None) -> list[Forecast]:
        """Forecast the horizon after the end of each series of ``data``.

        ``future`` holds the covariates of the next ``horizon`` steps per series (same ids), needed
        when the model was trained with covariates.
        """
        self._check_columns(data)
        fut = {s.id: s for s in future.series} if future is not None else {}
        out = []
        for s in data.series:
            cov = None
            if self.meta["covariates"]:
                if s.id not in fut:
                    raise ValueError(
                        f"series {s.id!r}: the model uses covariates {self.meta['covariates']}; give their "
                        f"next {self.config.horizon} values in a --future table"
                    )
                cov = fut[s.id].covariates
            out.append(self.forecast_at(s, [len(s)], cov)[0])
        return out

    def _check_columns(self, data: SeriesSet) -> None:
        for key in ("targets", "covariates"):
            if list(getattr(data, key)) != self.meta[key]:
                raise ValueError(
                    f"the model was trained with {key} {self.meta[key]}, the data has {list(getattr(data, key))}"
                )

    # -- checkpoints ------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "config": dataclasses.asdict(self.config),
            "meta": self.meta,
            "scalers": self.scalers,
            "history": self.history,
            "nets": [net.state_dict() for net in self.nets],
        }

    def save(self, path: str | os.PathLike) -> None:
        """Write the model atomically (``lstmkit.train.save_checkpoint``)."""
        save_checkpoint(self.state(), path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Forecaster:
        state = load_checkpoint(path)
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise ValueError(f"{path} is not a forecast checkpoint (written by 'lstmkit forecast train')")
        cfg = state["config"]
        cfg["quantiles"] = tuple(cfg["quantiles"])
        self = cls(ForecastConfig(**cfg))
        self.meta, self.scalers, self.history = state["meta"], state["scalers"], state["history"]
        n_feat = len(self.meta["covariates"]) + (2 if self.meta["season"] > 1 else 0)
        n_feat += len(self.meta["targets"]) if self.config.scaling == "window+level" else 0
        for sd in state["nets"]:
            net = ForecastNet(self.config, len(self.meta["targets"]), n_feat)
            net.load_state_dict(sd)
            net.eval()
            self.nets.append(net)
        return self


def _future_time(s: Series, origin: int, horizon: int, freq: str | None):
    """Timestamps of steps origin .. origin + horizon - 1 (beyond the series: continued at ``freq``)."""
    if s.time is None:
        return None
    if origin + horizon <= len(s):
        return s.time[origin : origin + horizon]
    if freq is None:
        return None
    pd = require("pandas")
    return pd.date_range(s.time[origin - 1], periods=horizon + 1, freq=freq)[1:]
