"""torch modules: drop-in ``LSTM`` and ``LSTMCell`` (see ``lstm.py`` and ``cell.py``)."""

from .cell import LSTMCell, lstm_step
from .lstm import LSTM

__all__ = ["LSTM", "LSTMCell", "lstm_step"]
