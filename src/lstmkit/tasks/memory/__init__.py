"""Long-range memory: the original LSTM experiments, and why the gates matter.

Hochreiter & Schmidhuber (1997), "Long Short-Term Memory", Neural Computation 9(8):1735-1780:
the adding problem (experiment 4) and the temporal-order problems (6a, 6b); plus the copy task
(Arjovsky, Shah & Bengio 2016 layout). Each is a seeded generator (:mod:`.data`), trained until
"solved" on a fresh test set from a separate stream (:mod:`.experiment`), with lstmkit's LSTM
against torch's tanh RNN and GRU of about the same parameter count (:mod:`.models`), and looked
inside: gradient norms against the lag and the gates on an adding sequence (:mod:`.analysis`,
:mod:`.plots`).

    >>> from lstmkit.tasks.memory import MemoryConfig, train
    >>> result, model = train(MemoryConfig(task="adding", T=20, max_sequences=64, eval_every=64, n_test=64))
    >>> result.sequences
    64

Command line: ``lstmkit memory adding|order|copy|plots`` (see :mod:`.cli`).
"""

from .analysis import fixed_length, gate_summary, gradient_flow, plot_gates, plot_gradient_flow, unroll
from .cli import load_run, register, save_run
from .data import Batch, adding_batch, copy_batch, streams, temporal_order_batch
from .experiment import TASKS, MemoryConfig, Result, build_model, evaluate, task_spec, train
from .models import MODELS, MemoryNet, count_parameters, matched_hidden
from .plots import make_plots

__all__ = [
    "Batch",
    "streams",
    "adding_batch",
    "temporal_order_batch",
    "copy_batch",
    "MODELS",
    "MemoryNet",
    "matched_hidden",
    "count_parameters",
    "TASKS",
    "MemoryConfig",
    "Result",
    "task_spec",
    "build_model",
    "evaluate",
    "train",
    "unroll",
    "fixed_length",
    "gradient_flow",
    "gate_summary",
    "plot_gradient_flow",
    "plot_gates",
    "make_plots",
    "save_run",
    "load_run",
    "register",
]
