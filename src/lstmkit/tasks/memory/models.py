"""The networks compared on the memory tasks: one recurrent layer and a linear read-out.

    x (T, B, I) --recurrent layer--> h_t (T, B, H) --linear--> y
        read-out "last": y = W h_L for each sequence's own last step L   (adding, temporal order)
        read-out "all":  y_t = W h_t at every step                        (copy)

The layer is ``lstmkit.nn.LSTM`` (variable lengths through its ``lengths=`` argument, which returns
each sequence's state at its own last step), or ``torch.nn.RNN`` (tanh) / ``torch.nn.GRU`` fed a
``PackedSequence`` for the same effect (``ragged="lengths"``). Or, ``ragged="gather"``, the layer
runs over the zero padding and each sequence's read-out takes h at its own last step,
``h[lengths - 1, b]``: for one unidirectional layer the padding comes after that step, so the
numbers are the same (a test checks it), and it avoids torch's packed backward on CPU, whose time
grows with the square of the length (torch 2.13, 32 sequences of 1,000-1,100 steps, LSTM hidden
16, forward and backward: 0.69 s through ``lengths=`` against 0.021 s gathered; docs/memory.md).

:func:`matched_hidden` sizes the RNN and GRU so that the whole network has about as many
parameters as the LSTM one.

Gate-bias initialisation (``forget_bias``): the 1997 LSTM had no forget gate, i.e. f_t = 1, a
perfect constant error carousel. lstmkit's LSTM has one (Gers et al. 2000); with torch's default
biases f_t starts near 0.5 and the carousel forgets within a few steps. ``forget_bias="chrono"``
sets b_f ~ log(U[1, T_max - 1]) and b_i = -b_f (Tallec & Ollivier 2018, "chrono initialisation"),
so the cells start out remembering over lags up to about T_max; a float sets every b_f to it.
The GRU's update gate z (h_t = (1 - z) n + z h_{t-1}, the GRU's "keep" gate) gets the same
treatment so the comparison is fair; a tanh RNN has no gate to set.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from ...nn import LSTM

__all__ = ["MODELS", "MemoryNet", "matched_hidden", "count_parameters"]

MODELS = ("lstm", "gru", "rnn")
RAGGED = ("lengths", "gather")
_GATES = {"lstm": 4, "gru": 3, "rnn": 1}


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _net_parameters(model: str, input_size: int, hidden: int, output_size: int) -> int:
    g = _GATES[model]
    return g * (hidden * input_size + hidden * hidden + 2 * hidden) + output_size * (hidden + 1)


def matched_hidden(model: str, lstm_hidden: int, input_size: int, output_size: int) -> int:
    """The hidden size of ``model`` whose network has the parameter count closest to the LSTM's."""
    if model not in MODELS:
        raise ValueError(f"model must be one of {MODELS}, got {model!r}")
    budget = _net_parameters("lstm", input_size, lstm_hidden, output_size)
    gap = lambda h: abs(_net_parameters(model, input_size, h, output_size) - budget)
    return min(range(1, 8 * lstm_hidden + 2), key=gap)


class MemoryNet(nn.Module):
    """One recurrent layer (``lstm``, ``gru`` or tanh ``rnn``) and a linear read-out.

    ``forward(x (T, B, I), lengths (B,) | None) -> y``: (B, O) with ``readout="last"``, (T, B, O)
    with ``readout="all"``.
    """

    def __init__(
        self,
        model: str,
        input_size: int,
        hidden_size: int,
        output_size: int,
        *,
        readout: str = "last",
        forget_bias: float | str | None = None,
        t_max: int = 100,
        ragged: str = "lengths",
    ) -> None:
        super().__init__()
        if model not in MODELS:
            raise ValueError(f"model must be one of {MODELS}, got {model!r}")
        if readout not in ("last", "all"):
            raise ValueError(f"readout must be 'last' or 'all', got {readout!r}")
        if ragged not in RAGGED:
            raise ValueError(f"ragged must be one of {RAGGED}, got {ragged!r}")
        self.model, self.readout, self.ragged = model, readout, ragged
        if model == "lstm":
            self.rnn = LSTM(input_size, hidden_size)
        elif model == "gru":
            self.rnn = nn.GRU(input_size, hidden_size)
        else:
            self.rnn = nn.RNN(input_size, hidden_size, nonlinearity="tanh")
        self.out = nn.Linear(hidden_size, output_size)
        if forget_bias is not None:
            self._init_keep_bias(forget_bias, t_max)

    @torch.no_grad()
    def _init_keep_bias(self, forget_bias: float | str, t_max: int) -> None:
        H = self.rnn.hidden_size
        if forget_bias == "chrono":
            b = torch.log(torch.empty(H).uniform_(1.0, max(2.0, t_max - 1.0)))  # (H,)
        else:
            b = torch.full((H,), float(forget_bias))
        if self.model == "lstm":  # gate order (i, f, g, o); bias_ih + bias_hh is the gate's bias
            self.rnn.bias_ih_l0[H : 2 * H] = b
            self.rnn.bias_hh_l0[H : 2 * H] = 0.0
            if forget_bias == "chrono":
                self.rnn.bias_ih_l0[:H] = -b
                self.rnn.bias_hh_l0[:H] = 0.0
        elif self.model == "gru":  # gate order (r, z, n)
            self.rnn.bias_ih_l0[H : 2 * H] = b
            self.rnn.bias_hh_l0[H : 2 * H] = 0.0

    def states(self, x: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(h_t at every step (T, B, H), h at each sequence's last step (B, H))."""
        if lengths is not None and self.ragged == "gather":
            lengths = lengths.to(x.device)
            out, _ = self.rnn(x)  # (T, B, H), run over the padding too
            last = out[lengths - 1, torch.arange(x.shape[1], device=x.device)]  # (B, H)
            valid = torch.arange(x.shape[0], device=x.device)[:, None, None] < lengths[None, :, None]  # (T, B, 1)
            return out * valid, last
        if self.model == "lstm":
            out, (h_n, _) = self.rnn(x, lengths=lengths)
            return out, h_n[-1]
        if lengths is None or bool((lengths == x.shape[0]).all()):
            out, h_n = self.rnn(x)
            return out, h_n[-1]
        packed = pack_padded_sequence(x, lengths.cpu(), enforce_sorted=False)
        out, h_n = self.rnn(packed)
        out, _ = pad_packed_sequence(out, total_length=x.shape[0])  # (T, B, H)
        return out, h_n[-1]

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        out, last = self.states(x, lengths)
        return self.out(out if self.readout == "all" else last)


