"""Seeded generators for the long-range memory tasks: adding, temporal order, copy.

Every generator takes a ``numpy.random.Generator`` and a batch size and returns a :class:`Batch`,
time-major and zero-padded to the longest sequence of the batch::

    x        (T_max, B, I)   float32; steps t >= lengths[b] are zero
    lengths  (B,)            int64, each sequence's own length
    target   (B,)  float32   adding: the value to output at the sequence's last step
             (B,)  int64     temporal order: the class
             (T, B) int64    copy: the symbol to output at every step

Training and test sequences come from two independent streams of one seed (:func:`streams`), so
the test set is never seen in training.

Adding problem (Hochreiter & Schmidhuber 1997, section 5.4, experiment 4), step by step:

* The length L is uniform on the integers {T, ..., T + T//10}.
* Each step is a pair (value, marker); every value is uniform on [-1, 1].
* Markers are 0 except: the first and the last pair get -1; one of the first 10 pairs, chosen
  uniformly, is marked 1 (its value is X1); then one of the first T/2 - 1 still unmarked pairs,
  i.e. uniformly one of positions {0, ..., T//2 - 1} other than X1's, is marked 1 (value X2).
  X2 may come before X1.
* "In the rare case where the first pair of the sequence gets marked, we set X1 to zero": a mark
  at position 0 replaces the -1 there and that pair's value is set to 0 (for X2 as for X1).
* Target at the last step: 0.5 + (X1 + X2) / 4, in [0, 1]. Correct when |error| < 0.04.

Temporal order (1997, section 5.6, experiments 6a and 6b), one-hot over 8 symbols
``E B a b c d X Y``. Length uniform in {T, ..., T + T//10} (paper: T = 100). The first symbol is
E, the last B (the trigger), the rest uniform over {a, b, c, d}, except 2 (6a) or 3 (6b) relevant
positions, each X or Y uniformly. Paper positions (1-based, T = 100): 6a t1 in [10, 20],
t2 in [50, 60]; 6b t1 in [10, 20], t2 in [33, 43], t3 in [66, 76]; for other T they scale by
T / 100. The class is the X/Y pattern read as a binary number (XX -> 0 = Q, XY -> 1 = R,
YX -> 2 = S, YY -> 3 = U; 6b: XXX -> 0 = Q, ..., YYY -> 7 = C).

Copy (Hochreiter & Schmidhuber 1997 experiment 2 in spirit; layout of Arjovsky, Shah & Bengio
2016), symbols 0 = blank, 1..8 = the alphabet, 9 = delimiter, one-hot inputs of width 10::

    input   s1 .. s10  0 .. 0 (T-1)  9  0 .. 0 (10)      length T + 20
    target  0  ..  0   0 .. 0 (T-1)  0  s1 .. s10

so the ten symbols must be held across T blank steps. The target lives on 9 classes (blank and the
8 symbols); a sequence is correct when all ten recalled symbols are.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "Batch",
    "streams",
    "adding_batch",
    "temporal_order_batch",
    "copy_batch",
    "TEMPORAL_SYMBOLS",
    "COPY_ALPHABET",
    "COPY_SYMBOLS",
    "COPY_BLANK",
    "COPY_DELIMITER",
]

#: Adding-problem marker window for X1 (the paper's "first ten pairs").
ADDING_X1_WINDOW = 10
#: The one-hot alphabet of the temporal-order tasks, in input-column order.
TEMPORAL_SYMBOLS = ("E", "B", "a", "b", "c", "d", "X", "Y")
#: Relevant-position windows of experiments 6a / 6b at T = 100, 1-based inclusive, as in the paper.
TEMPORAL_WINDOWS = {4: ((10, 20), (50, 60)), 8: ((10, 20), (33, 43), (66, 76))}
COPY_ALPHABET = 8  # symbols 1..8
COPY_SYMBOLS = 10  # how many symbols are copied
COPY_BLANK = 0
COPY_DELIMITER = COPY_ALPHABET + 1  # 9


@dataclass
class Batch:
    """One batch, time-major and zero-padded (see the module docstring for the shapes)."""

    x: Tensor  # (T_max, B, I)
    lengths: Tensor  # (B,) int64
    target: Tensor  # (B,) float / (B,) int64 / (T, B) int64
    marks: Tensor | None = None  # adding: (B, 2) positions of X1 and X2; temporal order: (B, k) positions

    def __len__(self) -> int:
        return int(self.lengths.shape[0])


def streams(seed: int) -> tuple[np.random.Generator, np.random.Generator]:
    """Two independent generators of one seed: (train, test). The test stream never feeds training."""
    train_ss, test_ss = np.random.SeedSequence(seed).spawn(2)
    return np.random.default_rng(train_ss), np.random.default_rng(test_ss)


def _lengths(rng: np.random.Generator, n: int, T: int) -> np.ndarray:
    return rng.integers(T, T + T // 10 + 1, size=n)  # uniform on {T, ..., T + T//10}


def adding_batch(rng: np.random.Generator, n: int, T: int) -> Batch:
    """``n`` adding-problem sequences of minimal length ``T`` (the 1997 definition, module docstring)."""
    if T < 2 * ADDING_X1_WINDOW:
        raise ValueError(f"the adding problem needs T >= {2 * ADDING_X1_WINDOW} (X1 within the first 10 steps, "
                         f"X2 within the first T/2), got T={T}")  # fmt: skip
    lengths = _lengths(rng, n, T)  # (n,)
    T_max = int(lengths.max())
    values = rng.uniform(-1.0, 1.0, size=(T_max, n))  # (T_max, n)
    markers = np.zeros((T_max, n))
    rows = np.arange(n)
    markers[0, :] = -1.0
    markers[lengths - 1, rows] = -1.0
    p1 = rng.integers(0, ADDING_X1_WINDOW, size=n)  # (n,) one of the first ten pairs
    # X2: uniform over {0, ..., T/2 - 1} without p1: draw from T/2 - 1 slots and skip over p1.
    p2 = rng.integers(0, T // 2 - 1, size=n)
    p2 = p2 + (p2 >= p1)
    for p in (p1, p2):
        markers[p, rows] = 1.0
        values[p, rows] = np.where(p == 0, 0.0, values[p, rows])  # the paper's rule for a mark on the first pair
    x1, x2 = values[p1, rows], values[p2, rows]
    target = 0.5 + (x1 + x2) / 4.0
    pad = np.arange(T_max)[:, None] >= lengths[None, :]  # (T_max, n)
    values[pad] = 0.0
    markers[pad] = 0.0
    x = np.stack([values, markers], axis=-1)  # (T_max, n, 2)
    return Batch(
        x=torch.from_numpy(x).float(),
        lengths=torch.from_numpy(lengths).long(),
        target=torch.from_numpy(target).float(),
        marks=torch.from_numpy(np.stack([p1, p2], axis=1)).long(),
    )


def temporal_order_batch(rng: np.random.Generator, n: int, classes: int = 4, T: int = 100) -> Batch:
    """``n`` temporal-order sequences: ``classes`` = 4 (experiment 6a) or 8 (6b), length in [T, T + T//10]."""
    if classes not in TEMPORAL_WINDOWS:
        raise ValueError(f"temporal order has 4 classes (experiment 6a) or 8 (6b), got classes={classes}")
    if T < 20:
        raise ValueError(f"temporal order needs T >= 20 so the relevant windows do not collide, got T={T}")
    lengths = _lengths(rng, n, T)
    T_max = int(lengths.max())
    rows = np.arange(n)
    sym = rng.integers(2, 6, size=(T_max, n))  # a, b, c, d
    sym[0, :] = 0  # E
    sym[lengths - 1, rows] = 1  # B, the trigger
    k = len(TEMPORAL_WINDOWS[classes])
    bits = rng.integers(0, 2, size=(n, k))  # 0 = X, 1 = Y
    positions = np.empty((n, k), dtype=np.int64)
    for j, (lo, hi) in enumerate(TEMPORAL_WINDOWS[classes]):
        lo0, hi0 = round(lo * T / 100) - 1, round(hi * T / 100) - 1  # 1-based paper positions -> 0-based
        positions[:, j] = rng.integers(lo0, hi0 + 1, size=n)
        sym[positions[:, j], rows] = 6 + bits[:, j]
    label = (bits * (2 ** np.arange(k - 1, -1, -1))).sum(axis=1)  # first relevant symbol = most significant bit
    x = np.eye(len(TEMPORAL_SYMBOLS), dtype=np.float32)[sym]  # (T_max, n, 8)
    x[np.arange(T_max)[:, None] >= lengths[None, :]] = 0.0
    return Batch(
        x=torch.from_numpy(x),
        lengths=torch.from_numpy(lengths).long(),
        target=torch.from_numpy(label).long(),
        marks=torch.from_numpy(positions),
    )


def copy_batch(rng: np.random.Generator, n: int, T: int) -> Batch:
    """``n`` copy sequences: 10 symbols of 8, ``T`` steps of blanks and delimiter, then recall (length T + 20)."""
    if T < 1:
        raise ValueError(f"the copy task needs a delay T >= 1, got T={T}")
    L = T + 2 * COPY_SYMBOLS
    symbols = rng.integers(1, COPY_ALPHABET + 1, size=(COPY_SYMBOLS, n))  # (10, n)
    inp = np.zeros((L, n), dtype=np.int64)
    inp[:COPY_SYMBOLS] = symbols
    inp[COPY_SYMBOLS + T - 1] = COPY_DELIMITER
    target = np.zeros((L, n), dtype=np.int64)
    target[-COPY_SYMBOLS:] = symbols
    x = np.eye(COPY_DELIMITER + 1, dtype=np.float32)[inp]  # (L, n, 10)
    return Batch(
        x=torch.from_numpy(x),
        lengths=torch.full((n,), L, dtype=torch.long),
        target=torch.from_numpy(target),
    )
