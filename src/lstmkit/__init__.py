"""lstmkit: Long Short-Term Memory networks, exactly as their equations say.

* :mod:`lstmkit.reference`: the NumPy spec, forward and hand-written backpropagation through time.
* :mod:`lstmkit.nn`: ``LSTM`` and ``LSTMCell``, drop-ins for ``torch.nn.LSTM`` / ``torch.nn.LSTMCell``.
* :mod:`lstmkit.kernels`: the fast paths, chosen in one place.
* :mod:`lstmkit.tasks`: applications (language modelling, ...), behind the ``lstmkit`` command.
"""

from . import reference
from .nn import LSTM, LSTMCell

__version__ = "0.1.0"

__all__ = ["LSTM", "LSTMCell", "reference", "__version__"]
