"""Time-series forecasting with an LSTM, measured against classical baselines (``lstmkit forecast``).

* :mod:`.model`: the network (``lstmkit.nn.LSTM`` encoder; direct multi-output or DeepAR-style
  autoregressive decoding) and its probabilistic heads (Gaussian, Student-t, quantiles).
* :mod:`.fit`: :class:`Forecaster`, per-series scaling, training with early stopping, checkpoints.
* :mod:`.baselines`: naive, seasonal naive, ETS and ARIMA (statsmodels).
* :mod:`.backtest`: rolling-origin evaluation, and :func:`tune` (a setting chosen on windows before
  the reported ones); :mod:`.metrics`: MAE, RMSE, MASE, sMAPE, coverage.
* :mod:`.plot`: PNG plots; :mod:`.cli`: ``lstmkit forecast train | predict | backtest``.

Data come from :mod:`lstmkit.data.series` (CSV or DataFrame, or a bundled classic series).
pandas and statsmodels are optional (``pip install 'lstmkit[forecast]'``) and imported lazily.
"""

from ...data.series import BUILTIN, SeriesSet, builtin_series, load_series
from .backtest import BacktestConfig, BacktestResult, TuneResult, backtest, tune
from .cli import register
from .fit import Forecaster
from .model import LEVELS, Forecast, ForecastConfig

__all__ = [
    "BUILTIN",
    "LEVELS",
    "BacktestConfig",
    "BacktestResult",
    "Forecast",
    "ForecastConfig",
    "Forecaster",
    "SeriesSet",
    "TuneResult",
    "backtest",
    "builtin_series",
    "load_series",
    "register",
    "tune",
]
