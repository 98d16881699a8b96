"""The forecasting network: an ``lstmkit.nn.LSTM`` over a context window, and probabilistic heads.

Two ways to cover a horizon of H steps (Salinas et al. 2020, "DeepAR", for the first; Wen et al.
2017, "A Multi-Horizon Quantile Recurrent Forecaster", for the second)::

    autoregressive (DeepAR)                         direct (multi-output head)
    input_t = [y_{t-1}, x_t]  ->  LSTM  ->  p(y_t)   [y_t, x_t] over context -> LSTM -> h_L
    context: teacher forced; horizon: a sample        [h_L, x_{L..L+H-1}] -> MLP -> p(y_{L..L+H-1})
    of p(y_t) is fed back, S paths at once            all H steps at once

``x_t`` are the features known in advance: covariates and the seasonal phase (sin, cos). Values
arrive scaled (see ``fit.py``); a head turns the network's numbers into a distribution per step and
target: Gaussian (mean, scale), Student-t (mean, scale, degrees of freedom > 2) or a set of
quantiles trained with the pinball loss (Koenker & Bassett 1978).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ...nn import LSTM

__all__ = ["LEVELS", "Forecast", "ForecastConfig", "Head", "ForecastNet", "make_head"]

LEVELS = (0.025, 0.1, 0.5, 0.9, 0.975)  # quantiles every forecast carries: median, 80% and 95% intervals


@dataclass
class ForecastConfig:
    """What the LSTM forecaster is; every field is a CLI flag (``--hidden-size`` ...)."""

    horizon: int = 12  # steps forecast from each origin
    context: int = 0  # steps of history the LSTM reads; 0: max(2 * season, 3 * horizon, 24)
    mode: str = "autoregressive"  # "autoregressive" (DeepAR, samples fed back) or "direct" (multi-output head)
    distribution: str = "student_t"  # "gaussian", "student_t" or "quantile"
    scaling: str = "window+level"  # minus context mean, also an input; "window": not input; "last": minus last value
    hidden_size: int = 40  # LSTM width; small series want small models
    num_layers: int = 1  # stacked LSTM layers
    dropout: float = 0.1  # dropout on the head's input (and between layers)
    lr: float = 3e-3  # Adam learning rate
    weight_decay: float = 1e-4  # Adam weight decay
    batch_size: int = 64  # windows per step
    max_epochs: int = 200  # upper bound on passes over the training windows
    patience: int = 25  # epochs without a better validation loss before stopping
    val_frac: float = 0.15  # fraction of each series' end kept for early stopping (at least a horizon)
    refit: bool = False  # then train again on every window, the validation tail too, for the best epoch count
    num_samples: int = 200  # sampled paths per forecast (parametric heads)
    ensemble: int = 5  # networks trained from different seeds; their forecasts are pooled
    seed: int = 0  # seeds torch, NumPy and Python
    quantiles: tuple[float, ...] = field(default=LEVELS)  # levels of the quantile head

    def resolved_context(self, season: int) -> int:
        return self.context if self.context > 0 else max(2 * season, 3 * self.horizon, 24)

    def check(self) -> None:
        if self.horizon < 1:
            raise ValueError(f"horizon must be at least 1 step, got {self.horizon}")
        if self.context < 0:
            raise ValueError(f"context must be >= 0 (0: automatic), got {self.context}")
        if self.mode not in ("direct", "autoregressive"):
            raise ValueError(f"mode must be 'direct' or 'autoregressive', got {self.mode!r}")
        if self.distribution not in ("gaussian", "student_t", "quantile"):
            raise ValueError(f"distribution must be gaussian, student_t or quantile, got {self.distribution!r}")
        if self.mode == "autoregressive" and self.distribution == "quantile":
            raise ValueError("autoregressive mode samples paths: use --distribution gaussian or student_t")
        if self.scaling not in ("window", "series", "window+level", "last"):
            raise ValueError(f"scaling must be 'window', 'window+level', 'last' or 'series', got {self.scaling!r}")
        missing = [q for q in LEVELS if not any(abs(q - p) < 1e-9 for p in self.quantiles)]
        if self.distribution == "quantile" and missing:
            raise ValueError(f"quantiles must include {LEVELS} (median, 80% and 95% intervals); missing {missing}")
        for name in ("max_epochs", "batch_size", "num_samples", "ensemble", "hidden_size", "num_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")


# -- the result -------------------------------------------------------------------------------


@dataclass
class Forecast:
    """A probabilistic forecast of H steps of D targets, in data units."""

    levels: np.ndarray  # (Q,) quantile levels, increasing, LEVELS among them
    quantiles: np.ndarray  # (Q, H, D)
    samples: np.ndarray | None = None  # (S, H, D) sampled paths, when the head samples
    time: object = None  # timestamps of the H steps (DatetimeIndex) or None

    @classmethod
    def from_samples(cls, samples: np.ndarray, levels=LEVELS, time=None) -> Forecast:
        levels = np.asarray(levels, dtype=float)
        return cls(levels, np.quantile(samples, levels, axis=0), samples, time)

    def quantile(self, q: float) -> np.ndarray:
        """(H, D) values of level ``q``, which must be one of ``levels``."""
        i = np.flatnonzero(np.isclose(self.levels, q))
        if not len(i):
            raise ValueError(f"level {q} is not among the forecast's quantiles {self.levels.tolist()}")
        return self.quantiles[i[0]]

    @property
    def median(self) -> np.ndarray:
        return self.quantile(0.5)

    def interval(self, coverage: float) -> tuple[np.ndarray, np.ndarray]:
        """Central interval, e.g. ``coverage=0.8`` -> the 10% and 90% quantiles, each (H, D)."""
        a = (1 - coverage) / 2
        return self.quantile(round(a, 6)), self.quantile(round(1 - a, 6))


# -- heads ------------------------------------------------------------------------------------


class Head:
    """Turns raw network outputs (..., P) into a distribution over one value."""

    n_params: int

    def loss(self, raw: Tensor, y: Tensor) -> Tensor:  # raw (..., P), y (...) -> scalar
        raise NotImplementedError

    def sample(self, raw: Tensor, n: int | None = None) -> Tensor:  # (..., P) -> (n, ...) or (...)
        raise NotImplementedError


class GaussianHead(Head):
    n_params = 2

    @staticmethod
    def dist(raw: Tensor):
        return torch.distributions.Normal(raw[..., 0], F.softplus(raw[..., 1]) + 1e-4)

    def loss(self, raw, y):
        return -self.dist(raw).log_prob(y).mean()

    def sample(self, raw, n=None):
        d = self.dist(raw)
        return d.sample() if n is None else d.sample((n,))


class StudentTHead(GaussianHead):
    n_params = 3

    @staticmethod
    def dist(raw: Tensor):
        df = 2.0 + F.softplus(raw[..., 2])  # > 2: finite variance
        return torch.distributions.StudentT(df, raw[..., 0], F.softplus(raw[..., 1]) + 1e-4)


class QuantileHead(Head):
    def __init__(self, levels):
        self.levels = torch.tensor(sorted(levels), dtype=torch.float32)
        self.n_params = len(levels)

    def loss(self, raw, y):
        e = y.unsqueeze(-1) - raw  # (..., Q)
        return torch.maximum(self.levels * e, (self.levels - 1) * e).mean() * 2

    def values(self, raw: Tensor) -> Tensor:
        return raw.sort(dim=-1).values  # no crossing


def make_head(cfg: ForecastConfig) -> Head:
    if cfg.distribution == "gaussian":
        return GaussianHead()
    if cfg.distribution == "student_t":
        return StudentTHead()
    return QuantileHead(cfg.quantiles)


# -- the network ------------------------------------------------------------------------------


class ForecastNet(torch.nn.Module):
    """LSTM forecaster for D targets with F known features; see the module docstring for the two modes.

    Shapes: ``y`` (B, L, D) scaled context, ``xc`` (B, L, F) context features, ``xf`` (B, H, F)
    horizon features. ``raw`` outputs are (B, H, D, P) for the head.
    """

    def __init__(self, cfg: ForecastConfig, n_targets: int, n_features: int) -> None:
        super().__init__()
        self.mode, self.horizon = cfg.mode, cfg.horizon
        self.D, self.F = n_targets, n_features
        self.head = make_head(cfg)
        P, Hd = self.head.n_params, cfg.hidden_size
        drop = cfg.dropout if cfg.num_layers > 1 else 0.0
        self.lstm = LSTM(n_targets + n_features, Hd, cfg.num_layers, batch_first=True, dropout=drop)
        self.drop = torch.nn.Dropout(cfg.dropout)
        if self.mode == "direct":
            self.mlp = torch.nn.Sequential(
                torch.nn.Linear(Hd + cfg.horizon * n_features, 2 * Hd),
                torch.nn.GELU(),
                torch.nn.Linear(2 * Hd, cfg.horizon * n_targets * P),
            )
        else:
            self.out = torch.nn.Linear(Hd, n_targets * P)

    # direct ---------------------------------------------------------------------------------

    def _direct(self, y: Tensor, xc: Tensor, xf: Tensor) -> Tensor:
        B = y.shape[0]
        _, (h, _) = self.lstm(torch.cat([y, xc], dim=-1))  # h: (layers, B, Hd)
        z = torch.cat([self.drop(h[-1]), xf.reshape(B, -1)], dim=-1)  # (B, Hd + H*F)
        return self.mlp(z).view(B, self.horizon, self.D, -1)  # (B, H, D, P)

    # autoregressive -------------------------------------------------------------------------

    def _ar_inputs(self, y: Tensor, x: Tensor) -> Tensor:
        """Inputs [y_{t-1}, x_t] for t = 1..T-1: (B, T-1, D+F)."""
        return torch.cat([y[:, :-1], x[:, 1:]], dim=-1)

    def _ar_raw(self, o: Tensor) -> Tensor:
        B, T = o.shape[:2]
        return self.out(self.drop(o)).view(B, T, self.D, -1)  # (B, T, D, P)

    # training and sampling ------------------------------------------------------------------

    def loss(self, y: Tensor, xc: Tensor, yf: Tensor, xf: Tensor, horizon_only: bool = False) -> Tensor:
        """Mean negative log-likelihood (or pinball loss) of the targets ``yf`` (B, H, D)."""
        if self.mode == "direct":
            return self.head.loss(self._direct(y, xc, xf), yf)
        ys, xs = torch.cat([y, yf], dim=1), torch.cat([xc, xf], dim=1)  # (B, L+H, D), (B, L+H, F)
        o, _ = self.lstm(self._ar_inputs(ys, xs))  # (B, L+H-1, Hd): predicts y_1 .. y_{L+H-1}
        raw = self._ar_raw(o)
        if horizon_only:
            return self.head.loss(raw[:, -self.horizon :], yf)
        return self.head.loss(raw, ys[:, 1:])

    @torch.no_grad()
    def forecast(self, y: Tensor, xc: Tensor, xf: Tensor, n_samples: int) -> Tensor:
        """(S, B, H, D) sampled paths, or (Q, B, H, D) quantiles for the quantile head (scaled units)."""
        B = y.shape[0]
        if self.mode == "direct":
            raw = self._direct(y, xc, xf)  # (B, H, D, P)
            if isinstance(self.head, QuantileHead):
                return self.head.values(raw).permute(3, 0, 1, 2)  # (Q, B, H, D)
            return self.head.sample(raw, n_samples)  # (S, B, H, D)
        # autoregressive: teacher-force the context, then feed back one sample per path
        _, state = self.lstm(self._ar_inputs(y, xc))  # state after reading y_0 .. y_{L-2}
        S = n_samples
        state = tuple(s.repeat_interleave(S, dim=1) for s in state)  # (layers, B*S, Hd)
        prev = y[:, -1:].repeat_interleave(S, dim=0)  # (B*S, 1, D)
        xf_s = xf.repeat_interleave(S, dim=0)  # (B*S, H, F)
        steps = []
        for t in range(self.horizon):
            o, state = self.lstm(torch.cat([prev, xf_s[:, t : t + 1]], dim=-1), state)  # (B*S, 1, Hd)
            prev = self.head.sample(self._ar_raw(o))  # (B*S, 1, D)
            steps.append(prev)
        paths = torch.cat(steps, dim=1)  # (B*S, H, D)
        return paths.view(B, S, self.horizon, self.D).transpose(0, 1)  # (S, B, H, D)


def phase_features(phase: np.ndarray, season: int) -> np.ndarray:
    """(T,) integer seasonal phases -> (T, 2) [sin, cos], or (T, 0) without a season."""
    if season <= 1:
        return np.zeros((len(phase), 0))
    a = 2 * math.pi * (phase % season) / season
    return np.stack([np.sin(a), np.cos(a)], axis=1)
