"""The one model-agnostic training loop, and what every task shares: atomic checkpoints, seeding,
RNG state, progress bars, learning-rate schedules, metric logs and plots.

:func:`fit` runs any :class:`Task` (something that yields batches, computes a loss and evaluates)
with SGD or Adam, gradient-norm clipping, a schedule (the step decay of Zaremba et al. 2014: constant
``lr``, then divided by ``decay_factor`` each epoch after epoch ``decay_after``; or divide on a
validation plateau), validation each epoch, the best checkpoint kept, metrics to JSONL + CSV and a
PNG plot, and exact resumption (model, optimizer, schedule, RNG, position in the data). Under
``torchrun`` it wraps the model in DistributedDataParallel; rank 0 writes.

Checkpoints are written atomically: to a temporary file in the same folder, flushed to disk, then
renamed over the target (``os.replace`` is atomic on POSIX and Windows), so a run killed at any
moment leaves either the old checkpoint or the new one, never a torn file.
"""

from __future__ import annotations

import os
import random
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "save_checkpoint",
    "load_checkpoint",
    "seed_everything",
    "rng_state",
    "set_rng_state",
    "progress",
]


def save_checkpoint(obj: Any, path: str | os.PathLike, *, overwrite: bool = True) -> Path:
    """``torch.save`` ``obj`` to ``path`` atomically (temporary file, fsync, rename).

    With ``overwrite=False`` an existing file is an error instead of being replaced.
    """
    path = Path(path)
    if not overwrite and path.exists():
        raise FileExistsError(f"{path} exists; pass overwrite=True (or --overwrite) to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """Load what :func:`save_checkpoint` wrote; a clear error when the file is missing."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist; train first or check the path")
    return torch.load(path, map_location=map_location, weights_only=False)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Every RNG state a resumed run needs to continue bit-for-bit."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def progress(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "", enable: bool | None = None):
    """A tqdm progress bar on an interactive terminal (or when ``enable=True``); silent otherwise."""
    from tqdm.auto import tqdm

    if enable is None:
        enable = sys.stderr.isatty()
    return tqdm(iterable, total=total, desc=desc, disable=not enable, dynamic_ncols=True, leave=True)
