"""Text for language modelling: reading corpora, vocabularies, the embedded default corpus, batching.

A corpus is one of

* ``None``: the embedded default corpus, text every Python installation has (:func:`stdlib_corpus`);
* a file: split by position into train / valid / test (the last fractions of the text);
* a folder holding ``*train*``, ``*valid*`` and ``*test*`` text files (``ptb.train.txt``,
  ``train.txt``, ...): the given splits;
* any other folder: its text files (recursively, sorted by path) concatenated, then split as a file.

Tokens are characters (``level="char"``) or whitespace-separated words with one ``<eos>`` a line
(``level="word"``, as Mikolov's PTB and the PyTorch word-language-model example).

Batching follows the classic recipes (Zaremba et al. 2014; pytorch/examples word_language_model):
the token stream is cut into ``batch_size`` contiguous columns (:func:`batchify`) and read in
truncated-BPTT windows of ``bptt`` rows (:func:`bptt_windows`), with the hidden state carried from one
window to the next. :func:`random_windows` is the d2l-style alternative: windows at random positions,
state reset for each.
"""

from __future__ import annotations

import logging
import os
import sysconfig
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

__all__ = [
    "EOS",
    "UNK",
    "Corpus",
    "Vocab",
    "batchify",
    "bptt_windows",
    "load_corpus",
    "num_random_batches",
    "num_windows",
    "random_windows",
    "read_text",
    "stdlib_corpus",
    "stdlib_corpus_files",
    "tokenize",
]

log = logging.getLogger(__name__)

EOS = "<eos>"
UNK = "<unk>"
SPLITS = ("train", "valid", "test")
STDLIB_CORPUS_BYTES = 1_500_000  # size of the embedded default corpus (whole files, so a little more)
TEXT_SUFFIXES = {".txt", ".md", ".rst", ".py", ".text", ".tokens", ""}


# ----------------------------------------------------------------------------------------------
# Reading


def read_text(path: str | os.PathLike, encoding: str = "utf-8") -> str:
    """Read ``path`` as text; a clear error for missing files and undecodable bytes."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"corpus file {path} does not exist; check --data")
    data = path.read_bytes()
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as e:
        raise ValueError(
            f"{path}: byte {e.start} (0x{data[e.start]:02x}) is not valid {encoding}; "
            f"convert the file to {encoding} or pass --encoding (e.g. latin-1)"
        ) from None


def stdlib_corpus_files(max_bytes: int = STDLIB_CORPUS_BYTES) -> list[Path]:
    """The embedded default corpus's files: the installed standard library's top-level public modules.

    ``<stdlib>/*.py`` whose names do not start with ``_``, sorted by name, whole files, until their
    total size reaches ``max_bytes`` (on CPython 3.11: ``abc.py`` ...
    ``io.py``, about 70 files). Deterministic for a given Python installation.
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    files, total = [], 0
    for p in sorted(root.glob("*.py")):
        if p.name.startswith("_"):
            continue
        files.append(p)
        total += p.stat().st_size
        if total >= max_bytes:
            break
    if not files:
        raise FileNotFoundError(f"no standard-library sources found under {root}; pass --data")
    return files


def stdlib_corpus(max_bytes: int = STDLIB_CORPUS_BYTES) -> str:
    """The text of :func:`stdlib_corpus_files`, concatenated (undecodable bytes replaced)."""
    return "".join(p.read_text(encoding="utf-8", errors="replace") for p in stdlib_corpus_files(max_bytes))


@dataclass
class Corpus:
    """Raw text per split (``train``, ``valid``, ``test``; a split may be empty) and where it came from."""

    splits: dict[str, str]
    source: str

    def __getitem__(self, split: str) -> str:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
        text = self.splits.get(split, "")
        if not text:
            raise ValueError(f"the corpus {self.source} has no {split!r} split; use another split or --test-fraction")
        return text


def _split_by_fraction(text: str, valid_fraction: float, test_fraction: float) -> dict[str, str]:
    """``text`` -> train | valid | test, in that order (the last fractions are held out)."""
    if not (0 <= valid_fraction < 1 and 0 <= test_fraction < 1 and valid_fraction + test_fraction < 1):
        raise ValueError(
            f"valid_fraction={valid_fraction}, test_fraction={test_fraction}: need fractions in [0, 1) summing below 1"
        )
    n = len(text)
    a = n - int(n * valid_fraction) - int(n * test_fraction)  # exact positions, as nanoGPT's 90/10 split
    b = n - int(n * test_fraction)
    return {"train": text[:a], "valid": text[a:b], "test": text[b:]}


def _find_split_files(folder: Path) -> dict[str, Path] | None:
    found: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if not p.is_file():
            continue
        stem = p.name.lower()
        for split in SPLITS:
            if split in stem.split(".") or stem.startswith(split) or f".{split}." in stem or f"_{split}" in stem:
                found.setdefault(split, p)
    return found if "train" in found else None


def load_corpus(
    data: str | os.PathLike | None,
    *,
    valid_fraction: float = 0.1,
    test_fraction: float = 0.0,
    encoding: str = "utf-8",
) -> Corpus:
    """Read a corpus (see the module docstring for what ``data`` may be)."""
    if data is None:
        text = stdlib_corpus()
        return Corpus(_split_by_fraction(text, valid_fraction, test_fraction), "the Python standard library")
    path = Path(data)
    if not path.exists():
        raise FileNotFoundError(f"corpus {path} does not exist; pass a text file or a folder to --data")
    if path.is_file():
        text = read_text(path, encoding)
        corpus = Corpus(_split_by_fraction(text, valid_fraction, test_fraction), str(path))
    elif (split_files := _find_split_files(path)) is not None:
        corpus = Corpus({s: read_text(p, encoding) for s, p in split_files.items()}, str(path))
    else:
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)
        if not files:
            raise FileNotFoundError(f"folder {path} holds no text files ({', '.join(sorted(TEXT_SUFFIXES - {''}))})")
        text = "".join(read_text(p, encoding) for p in files)
        corpus = Corpus(_split_by_fraction(text, valid_fraction, test_fraction), str(path))
    if not corpus.splits.get("train", "").strip():
        raise ValueError(f"corpus {path} is empty (no training text); pass a non-empty text file or folder")
    return corpus


# ----------------------------------------------------------------------------------------------
# Tokens and vocabularies


def tokenize(text: str, level: str) -> list[str]:
    """Characters, or whitespace-separated words with ``<eos>`` at the end of each line."""
    if level == "char":
        return list(text)
    if level == "word":
        out: list[str] = []
        for line in text.splitlines():
            words = line.split()
            if words:
                out.extend(words)
                out.append(EOS)
        return out
    raise ValueError(f"unknown level {level!r}; choose 'char' or 'word'")


@dataclass
class Vocab:
    """Token <-> id. ``itos[i]`` is token ``i``; ``<unk>`` (if present) takes tokens not in the vocabulary."""

    itos: list[str]
    level: str = "char"
    stoi: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.stoi = {s: i for i, s in enumerate(self.itos)}

    def __len__(self) -> int:
        return len(self.itos)

    @classmethod
    def build(cls, tokens: Sequence[str], level: str, max_size: int = 0, min_freq: int = 1) -> Vocab:
        """Most frequent first (ties by token), at most ``max_size`` (0: no limit), each seen ``min_freq`` times.

        Characters keep every symbol in sorted order (``max_size``/``min_freq`` apply to words only);
        a word vocabulary gets ``<unk>`` when words are left out.
        """
        counts = Counter(tokens)
        if level == "char":
            return cls(sorted(counts), level)
        words = sorted(counts, key=lambda w: (-counts[w], w))
        kept = [w for w in words if counts[w] >= min_freq]
        if max_size and len(kept) > max_size:
            kept = kept[: max_size - (UNK not in kept[:max_size])]
        if len(kept) < len(words) and UNK not in kept:
            kept.append(UNK)
        return cls(kept, level)

    def encode(
        self,
        tokens: Sequence[str],
        what: str = "the data",
        hint: str = "the vocabulary was built from another corpus: use the checkpoint's corpus or retrain",
    ) -> Tensor:
        """Token ids as a 1-D int64 tensor; unknown tokens map to ``<unk>`` or raise a clear error."""
        unk = self.stoi.get(UNK)
        stoi = self.stoi
        ids = [stoi.get(t, -1) for t in tokens]
        missing = sorted({t for t, i in zip(tokens, ids) if i < 0})
        if missing:
            if unk is None:
                shown = ", ".join(repr(t) for t in missing[:10])
                raise ValueError(
                    f"{what} has {len(missing)} {'character' if self.level == 'char' else 'word'}(s) not in the "
                    f"vocabulary ({shown}{', ...' if len(missing) > 10 else ''}); {hint}"
                )
            ids = [unk if i < 0 else i for i in ids]
        return torch.tensor(ids, dtype=torch.long)

    def decode(self, ids: Sequence[int] | Tensor) -> str:
        toks = [self.itos[int(i)] for i in ids]
        if self.level == "char":
            return "".join(toks)
        return " ".join(toks).replace(f" {EOS} ", "\n").replace(f" {EOS}", "\n")

    def to_dict(self) -> dict:
        return {"itos": list(self.itos), "level": self.level}

    @classmethod
    def from_dict(cls, d: dict) -> Vocab:
        return cls(list(d["itos"]), d["level"])


# ----------------------------------------------------------------------------------------------
# Batching


def batchify(ids: Tensor, batch_size: int) -> Tensor:
    """Cut a token stream into ``batch_size`` contiguous columns; the ragged tail is dropped.

    With the alphabet as the stream and ``batch_size=4``::

        a b c d e f g h i j k l m n o p q r s t u v w x y z
        ->  ┌ a g m s ┐
            │ b h n t │
            │ c i o u │      column j is the stream's j-th quarter, read top to bottom;
            │ d j p v │      columns are independent, so the batch dimension holds
            │ e k q w │      batch_size streams that are read in parallel.
            └ f l r x ┘      (y, z dropped)
        shape (N // batch_size, batch_size)
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    rows = ids.numel() // batch_size
    if rows < 2:
        raise ValueError(
            f"{ids.numel()} tokens cannot fill {batch_size} columns of at least 2 tokens; "
            "use a longer text or a smaller batch size"
        )
    return ids[: rows * batch_size].view(batch_size, rows).t().contiguous()  # (rows, B)


def num_random_batches(ids: Tensor, batch_size: int, bptt: int) -> int:
    """How many batches :func:`random_windows` yields."""
    return ((ids.numel() - bptt) // bptt) // batch_size


def num_windows(source: Tensor, bptt: int) -> int:
    """How many windows :func:`bptt_windows` yields for ``source`` (rows, B)."""
    return (source.size(0) - 1 + bptt - 1) // bptt


def bptt_windows(source: Tensor, bptt: int, start: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
    """Truncated-BPTT windows of a batchified stream, in order, starting at window ``start``.

    With the columns above and ``bptt=2`` (the target is the next token of the same column)::

        ┌ a g m s ┐  window 0: x = rows 0-1, y = rows 1-2   h carried ──┐
        │ b h n t │                                                     │ detached: gradients stop at
        │ c i o u │  window 1: x = rows 2-3, y = rows 3-4   h carried ◄─┘ the window boundary, values flow on
        │ d j p v │
        │ e k q w │  window 2: x = row 4,    y = row 5     (the last window may be shorter)
        └ f l r x ┘

    Yields ``(x, y)``, each (T, B) with T <= bptt.
    """
    n = source.size(0) - 1
    for i in range(start * bptt, n, bptt):
        T = min(bptt, n - i)
        yield source[i : i + T], source[i + 1 : i + 1 + T]  # (T, B), (T, B)


def random_windows(
    ids: Tensor, batch_size: int, bptt: int, generator: torch.Generator, start: int = 0
) -> Iterator[tuple[Tensor, Tensor]]:
    """d2l-style random sampling: the stream from a random offset, cut into windows, windows shuffled.

    Each batch holds ``batch_size`` windows from random places, so consecutive batches are unrelated
    and the hidden state must be reset for each. ``generator`` fixes the epoch's order (so a resumed
    run sees the same order); ``start`` skips that many batches.
    """
    offset = int(torch.randint(0, bptt, (1,), generator=generator))
    n = (ids.numel() - bptt) // bptt  # the same for every offset, so every epoch has the same length
    if n < batch_size:
        raise ValueError(f"{ids.numel()} tokens give {n} windows of {bptt}; need at least batch_size={batch_size}")
    starts = offset + torch.randperm(n, generator=generator) * bptt
    nb = n // batch_size
    steps = torch.arange(bptt)
    for b in range(start, nb):
        s = starts[b * batch_size : (b + 1) * batch_size]  # (B,)
        idx = s.unsqueeze(0) + steps.unsqueeze(1)  # (T, B)
        yield ids[idx], ids[idx + 1]
