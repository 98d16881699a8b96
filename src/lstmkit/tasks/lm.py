"""Language modelling: ``lstmkit lm train | eval | generate`` and the same as a Python API.

The model is the classic word-language-model recipe (Zaremba, Sutskever & Vinyals 2014, "Recurrent
Neural Network Regularization"; pytorch/examples word_language_model)::

    tokens (T, B) -> embedding (T, B, E) -> dropout -> lstmkit.nn.LSTM, L layers, dropout between
                  -> dropout -> linear decoder (T, B, V) -> softmax cross-entropy with the next token

with optional weight tying (decoder weight = embedding weight, Press & Wolf 2017; needs E == H) and
the paper's uniform init in ``[-init_range, init_range]`` for every parameter. Data, batching and
truncated BPTT live in :mod:`lstmkit.data.text`; the loop (schedules, clipping, checkpoints, resume,
metrics, DDP) in :func:`lstmkit.train.fit`.

Loss scale. The paper sums the loss over the 20 time steps and averages it over the batch, clips
that gradient's norm at 5 and steps with lr 1. Here the loss is the per-token mean, whose gradient
is the paper's divided by T=20; clipping at 5/20 = 0.25 and stepping with lr 20 gives exactly the
paper's update (the pytorch example's lr 20 / clip 0.25 come from this).

API::

    from lstmkit.tasks import lm
    summary = lm.train(lm.LMConfig(data="../shared/data/ptb", level="word", ...))
    print(lm.evaluate("runs/lm/best.pt", split="test"))
    print(lm.generate_from_checkpoint("runs/lm/best.pt", prefix="def ", length=200))
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.text import (
    UNK,
    Corpus,
    Vocab,
    batchify,
    bptt_windows,
    load_corpus,
    num_random_batches,
    num_windows,
    random_windows,
    tokenize,
)
from ..nn import LSTM
from ..train import TrainConfig, distributed, fit, load_checkpoint, seed_everything

__all__ = [
    "LMConfig",
    "RNNLM",
    "LMTask",
    "build_vocab",
    "train",
    "evaluate",
    "generate",
    "generate_from_checkpoint",
    "load_model",
    "register",
    "PTB_SMALL",
    "PTB_MEDIUM",
]

log = logging.getLogger(__name__)


@dataclass
class LMConfig(TrainConfig):
    """Everything ``lstmkit lm train`` takes. The defaults are the README's main job: a character
    model of Python source trained on the embedded corpus for about 4 minutes on 2 CPU cores."""

    # data
    data: str | None = None  # file, folder, or train/valid/test folder; None: the embedded stdlib corpus
    level: str = "char"  # "char" or "word" (whitespace tokens, <eos> a line)
    valid_fraction: float = 0.05  # single text: last fraction held out for validation
    test_fraction: float = 0.05  # single text: last fraction held out for test (after valid)
    encoding: str = "utf-8"  # text encoding of the corpus files
    vocab_size: int = 0  # words: keep the most frequent (0: all), the rest become <unk>
    min_freq: int = 1  # words: keep those seen at least this often
    # model
    emsize: int = 64  # embedding size
    hidden: int = 256  # LSTM units per layer
    layers: int = 2  # LSTM layers
    dropout: float = 0.0  # dropout on embeddings, between layers and before the decoder
    tie_weights: bool = False  # decoder weight = embedding weight (needs emsize == hidden)
    init_range: float = 0.1  # uniform init in [-r, r] of every parameter (0: torch's defaults)
    # batching
    batch_size: int = 32  # columns of the stream (split across ranks under DDP)
    bptt: int = 64  # truncated-BPTT window, tokens
    sampling: str = "sequential"  # "sequential" (state carried) or "random" (d2l: random windows, state reset)
    eval_batch_size: int = 10  # columns for validation / test
    # run
    out: str = "runs/lm"  # folder for checkpoints, metrics and the plot
    device: str = "auto"  # "auto" (CUDA if available), "cpu", "cuda", "cuda:1", ...
    threads: int = 0  # torch CPU threads (0: torch's default)
    # samples printed after training
    samples: int = 2  # how many samples to print (0: none)
    sample_length: int = 400  # tokens per sample
    temperature: float = 0.7  # sampling temperature of those samples
    prefix: str = ""  # start of the samples ("" : a newline / <eos>)

    # the loop's defaults, for this job
    epochs: int = 50
    optimizer: str = "adam"
    lr: float = 0.004
    schedule: str = "constant"
    clip: float = 1.0
    max_minutes: float = 4.0
    log_every: int = 20


PTB_SMALL = dict(
    level="word", emsize=200, hidden=200, layers=2, dropout=0.0, init_range=0.1, batch_size=20, bptt=20,
    epochs=13, optimizer="sgd", lr=20.0, schedule="paper", decay_factor=2.0, decay_after=4, clip=0.25,
    max_minutes=0.0, log_every=200, eval_batch_size=10,
)  # fmt: skip
"""Zaremba et al. 2014 non-regularized: 2x200, U(-0.1, 0.1), lr 1 halved after epoch 4, 13 epochs,
20 steps, batch 20, clip 5 on the time-summed loss (= lr 20, clip 0.25 on the mean). valid 120.7 / test 114.5."""

PTB_MEDIUM = dict(
    level="word", emsize=650, hidden=650, layers=2, dropout=0.5, init_range=0.05, batch_size=20, bptt=35,
    epochs=39, optimizer="sgd", lr=35.0, schedule="paper", decay_factor=1.2, decay_after=6, clip=5.0 / 35,
    max_minutes=0.0, log_every=200, eval_batch_size=10,
)  # fmt: skip
"""Zaremba et al. 2014 medium: 2x650, dropout 0.5, U(-0.05, 0.05), lr 1 / 1.2 after epoch 6, 39 epochs,
35 steps, clip 5 on the time-summed loss (= lr 35, clip 5/35 on the mean). valid 86.2 / test 82.7."""


# ----------------------------------------------------------------------------------------------
# Model


class RNNLM(nn.Module):
    """Embedding -> :class:`lstmkit.nn.LSTM` -> linear decoder."""

    def __init__(
        self,
        vocab_size: int,
        emsize: int,
        hidden: int,
        layers: int,
        dropout: float = 0.0,
        tie_weights: bool = False,
        init_range: float = 0.1,
    ) -> None:
        super().__init__()
        if tie_weights and emsize != hidden:
            raise ValueError(f"--tie-weights needs emsize == hidden, got {emsize} and {hidden}")
        self.encoder = nn.Embedding(vocab_size, emsize)
        self.drop = nn.Dropout(dropout)
        self.rnn = LSTM(emsize, hidden, layers, dropout=dropout if layers > 1 else 0.0)
        self.decoder = nn.Linear(hidden, vocab_size)
        if init_range > 0:
            for p in self.parameters():
                nn.init.uniform_(p, -init_range, init_range)
        if tie_weights:
            self.decoder.weight = self.encoder.weight
        self.layers, self.hidden = layers, hidden

    def init_hidden(self, batch: int, device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
        z = torch.zeros(self.layers, batch, self.hidden, device=device)  # (L, B, H)
        return z, z.clone()

    def forward(self, x: Tensor, hidden: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        emb = self.drop(self.encoder(x))  # (T, B) -> (T, B, E)
        out, hidden = self.rnn(emb, hidden)  # (T, B, H)
        return self.decoder(self.drop(out)), hidden  # (T, B, V)


def build_model(cfg: LMConfig, vocab_size: int) -> RNNLM:
    return RNNLM(vocab_size, cfg.emsize, cfg.hidden, cfg.layers, cfg.dropout, cfg.tie_weights, cfg.init_range)


# ----------------------------------------------------------------------------------------------
# Data + task


def build_vocab(corpus: Corpus, cfg: LMConfig) -> Vocab:
    """Characters: every symbol of every split. Words: the training split's, with ``<unk>`` always present."""
    if cfg.level == "char":
        text = "".join(corpus.splits.values())
        return Vocab.build(tokenize(text, "char"), "char")
    vocab = Vocab.build(tokenize(corpus.splits["train"], "word"), "word", cfg.vocab_size, cfg.min_freq)
    if UNK not in vocab.stoi:
        vocab = Vocab([*vocab.itos, UNK], "word")
    return vocab


def _device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    return torch.device(name)


class LMTask:
    """Language modelling as a :class:`lstmkit.train.Task`: batches, loss, evaluation, carried state."""

    def __init__(self, cfg: LMConfig, corpus: Corpus, vocab: Vocab, device: torch.device) -> None:
        if cfg.sampling not in ("sequential", "random"):
            raise ValueError(f"unknown sampling {cfg.sampling!r}; choose 'sequential' or 'random'")
        self.cfg, self.vocab, self.device = cfg, vocab, device
        self.rank, self.world = distributed()
        if cfg.batch_size % self.world:
            raise ValueError(f"batch_size {cfg.batch_size} must be divisible by the {self.world} processes")
        self.local_batch = cfg.batch_size // self.world
        self.train_ids = vocab.encode(tokenize(corpus["train"], cfg.level), "the training split")
        self.valid_ids = vocab.encode(tokenize(corpus["valid"], cfg.level), "the validation split")
        cols = slice(self.rank * self.local_batch, (self.rank + 1) * self.local_batch)
        self.train_data = batchify(self.train_ids, cfg.batch_size)[:, cols]  # (rows, B / world): this rank's columns
        self.corpus = corpus
        seed_everything(cfg.seed)
        self.model = build_model(cfg, len(vocab)).to(device)
        self.hidden: tuple[Tensor, Tensor] | None = None

    # Task protocol ------------------------------------------------------------------------------
    def steps_per_epoch(self) -> int:
        if self.cfg.sampling == "random":
            return num_random_batches(self.train_ids, self.cfg.batch_size, self.cfg.bptt)
        return num_windows(self.train_data, self.cfg.bptt)

    def batches(self, epoch: int, start: int) -> Iterator[tuple[Tensor, Tensor]]:
        if self.cfg.sampling == "sequential":
            yield from bptt_windows(self.train_data, self.cfg.bptt, start)
            return
        g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + epoch)  # same order on every rank
        lo, hi = self.rank * self.local_batch, (self.rank + 1) * self.local_batch
        for x, y in random_windows(self.train_ids, self.cfg.batch_size, self.cfg.bptt, g, start):
            yield x[:, lo:hi], y[:, lo:hi]

    def start_epoch(self, epoch: int) -> None:
        self.hidden = None  # zero state at the start of the stream

    def loss(self, net: nn.Module, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, int]:
        x, y = (t.to(self.device, non_blocking=True) for t in batch)  # (T, B_local)
        hidden = self.hidden if self.cfg.sampling == "sequential" else None
        logits, hidden = net(x, hidden)  # (T, B, V)
        self.hidden = (hidden[0].detach(), hidden[1].detach())  # carry the values, cut the gradient
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.reshape(-1))  # fused log-softmax + NLL
        return loss, y.numel()

    @torch.no_grad()
    def evaluate(self, split: str = "valid") -> dict[str, float]:
        ids = self.valid_ids if split == "valid" else self.vocab.encode(
            tokenize(self.corpus[split], self.cfg.level), f"the {split} split"
        )  # fmt: skip
        return evaluate_ids(self.model, ids, self.cfg.level, self.cfg.eval_batch_size, self.cfg.bptt, self.device)

    def state_dict(self) -> dict[str, Any]:
        """The carried hidden state of all columns (gathered across ranks), so a resume continues exactly."""
        if self.hidden is None:
            return {"hidden": None}
        h, c = (t.cpu() for t in self.hidden)
        if self.world > 1:
            import torch.distributed as dist

            parts = [[torch.empty_like(t) for _ in range(self.world)] for t in (h, c)]
            dist.all_gather(parts[0], h.to(self.device))
            dist.all_gather(parts[1], c.to(self.device))
            h, c = (torch.cat([p.cpu() for p in ps], dim=1) for ps in parts)  # (L, B, H)
        return {"hidden": (h, c)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["hidden"] is None:
            self.hidden = None
            return
        lo, hi = self.rank * self.local_batch, (self.rank + 1) * self.local_batch
        self.hidden = tuple(t[:, lo:hi].contiguous().to(self.device) for t in state["hidden"])

    def checkpoint_extra(self) -> dict[str, Any]:
        return {"config": asdict(self.cfg), "vocab": self.vocab.to_dict()}


@torch.no_grad()
def evaluate_ids(model: RNNLM, ids: Tensor, level: str, batch_size: int, bptt: int, device) -> dict[str, float]:
    """Mean loss over every prediction of ``ids`` (state carried across windows), perplexity, bits per char."""
    was_training = model.training
    model.eval()
    data = batchify(ids, min(batch_size, max(1, ids.numel() // 2)))  # (rows, B)
    total, count, hidden = torch.zeros((), device=device), 0, None
    for x, y in bptt_windows(data, bptt):
        logits, hidden = model(x.to(device), hidden)  # (T, B, V)
        total += F.cross_entropy(logits.view(-1, logits.size(-1)), y.to(device).reshape(-1), reduction="sum")
        count += y.numel()
    model.train(was_training)
    loss = float(total) / count
    out = {"loss": loss, "ppl": math.exp(min(loss, 50.0))}
    if level == "char":
        out["bpc"] = loss / math.log(2)
    return out


# ----------------------------------------------------------------------------------------------
# API


def _check_config(cfg: LMConfig) -> None:
    if cfg.level not in ("char", "word"):
        raise ValueError(f"unknown level {cfg.level!r}; choose 'char' or 'word'")
    for name in ("batch_size", "bptt", "hidden", "emsize", "layers", "eval_batch_size", "epochs", "log_every"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(cfg, name)}")


def _setup_distributed() -> bool:
    """Join the process group that ``torchrun`` describes (gloo on CPU, NCCL on GPU); False when alone."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return False
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend)
    return True


def train(cfg: LMConfig, *, resume: bool = False, overwrite: bool = False, show_progress: bool | None = None) -> dict:
    """Train a language model per ``cfg``; returns :func:`lstmkit.train.fit`'s summary plus the vocabulary size.

    Checkpoints go to ``cfg.out`` (``best.pt``, ``last.pt``); an existing one is an error unless
    ``resume`` (continue exactly) or ``overwrite``.
    """
    _check_config(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    own_group = _setup_distributed()
    try:
        corpus = load_corpus(cfg.data, valid_fraction=cfg.valid_fraction, test_fraction=cfg.test_fraction,
                             encoding=cfg.encoding)  # fmt: skip
        vocab = build_vocab(corpus, cfg)
        if resume:
            ck_vocab = Vocab.from_dict(load_checkpoint(Path(cfg.out) / "last.pt")["vocab"])
            if ck_vocab.itos != vocab.itos:
                raise ValueError(
                    f"vocabulary mismatch: the checkpoint in {cfg.out} has {len(ck_vocab)} {ck_vocab.level} tokens, "
                    f"the data {corpus.source} gives {len(vocab)} {vocab.level} tokens; resume with the same "
                    f"--data/--level/--vocab-size, or start a new run with --out"
                )
        task = LMTask(cfg, corpus, vocab, _device(cfg.device))
        n_params = sum(p.numel() for p in task.model.parameters())
        (log.info if task.rank == 0 else log.debug)(
            "corpus %s: %d training %ss, vocabulary %d; model %d parameters; %d steps per epoch",
            corpus.source, task.train_ids.numel(), cfg.level, len(vocab), n_params, task.steps_per_epoch(),
        )  # fmt: skip
        summary = fit(task, cfg, cfg.out, resume=resume, overwrite=overwrite, show_progress=show_progress)
        if own_group:  # every rank done (rank 0 writes checkpoints after the last collective) before any
            import torch.distributed as dist  # leaves: a gloo peer torn down mid-flight aborts the process

            dist.barrier()
    finally:
        if own_group:
            import gc

            import torch.distributed as dist

            dist.destroy_process_group()
            # gloo's worker threads can still hold work objects referencing tensors; collected now, while the
            # interpreter is alive, they cannot abort the process at exit (pytorch/pytorch PR 179291)
            gc.collect()
    summary.update(vocab_size=len(vocab), parameters=n_params, train_tokens=task.train_ids.numel())
    return summary


def load_model(checkpoint: str | os.PathLike, device: str = "cpu") -> tuple[RNNLM, Vocab, LMConfig]:
    """The model, vocabulary and config stored in an ``lstmkit lm`` checkpoint."""
    ck = load_checkpoint(checkpoint)
    if "vocab" not in ck or "config" not in ck:
        raise ValueError(f"{checkpoint} is not an 'lstmkit lm' checkpoint (no vocabulary/config inside)")
    cfg = LMConfig(**{k: v for k, v in ck["config"].items() if k in {f.name for f in fields(LMConfig)}})
    vocab = Vocab.from_dict(ck["vocab"])
    model = build_model(cfg, len(vocab))
    model.load_state_dict(ck["model"])
    return model.to(_device(device)).eval(), vocab, cfg


def evaluate(
    checkpoint: str | os.PathLike,
    data: str | None = None,
    split: str = "test",
    *,
    use_checkpoint_data: bool = True,
    batch_size: int = 10,
    device: str = "cpu",
) -> dict[str, float]:
    """Loss, perplexity (and bits per character) of a checkpoint on a split of ``data``.

    ``data=None`` uses the corpus the checkpoint was trained on. Tokens missing from the checkpoint's
    vocabulary are an error for characters and ``<unk>`` for words.
    """
    model, vocab, cfg = load_model(checkpoint, device)
    source = data if data is not None else (cfg.data if use_checkpoint_data else None)
    corpus = load_corpus(source, valid_fraction=cfg.valid_fraction, test_fraction=cfg.test_fraction,
                         encoding=cfg.encoding)  # fmt: skip
    ids = vocab.encode(tokenize(corpus[split], cfg.level), f"the {split} split of {corpus.source}")
    t0 = time.perf_counter()
    out = evaluate_ids(model, ids, cfg.level, batch_size, cfg.bptt, next(model.parameters()).device)
    out.update(tokens=ids.numel(), seconds=time.perf_counter() - t0)
    return out


@torch.no_grad()
def generate(
    model: RNNLM,
    vocab: Vocab,
    prefix: str = "",
    length: int = 200,
    *,
    temperature: float = 1.0,
    top_k: int = 0,
    greedy: bool = False,
    seed: int = 0,
) -> str:
    """Continue ``prefix`` by ``length`` tokens: greedy, or sampled at ``temperature`` from the top ``top_k``.

    Returns the prefix followed by the generated text. Characters of the prefix missing from the
    vocabulary are an error; unknown words become ``<unk>``.
    """
    if temperature <= 0 and not greedy:
        raise ValueError(f"temperature must be > 0 (or use greedy), got {temperature}")
    device = next(model.parameters()).device
    model.eval()
    if vocab.level == "char":
        start = prefix or "\n"
        ids = vocab.encode(list(start), "the prefix", hint="use only characters the training text contains")
    else:
        start = prefix
        words = prefix.split() or ["<eos>"]
        ids = vocab.encode(words, "the prefix", hint="use words of the training text")
    g = torch.Generator(device=device).manual_seed(seed)
    logits, hidden = model(ids.to(device).unsqueeze(1))  # (T, 1, V)
    out: list[int] = []
    for _ in range(length):
        last = logits[-1, 0]  # (V,)
        if greedy:
            nxt = int(last.argmax())
        else:
            last = last / temperature
            if top_k and top_k < last.numel():
                kth = torch.topk(last, top_k).values[-1]
                last = last.masked_fill(last < kth, float("-inf"))
            nxt = int(torch.multinomial(torch.softmax(last, -1), 1, generator=g))
        out.append(nxt)
        logits, hidden = model(torch.tensor([[nxt]], device=device), hidden)  # (1, 1, V)
    text = vocab.decode(out)
    if vocab.level == "char":
        return (prefix or "") + text
    return (prefix + " " if prefix else "") + text


def generate_from_checkpoint(checkpoint: str | os.PathLike, prefix: str = "", length: int = 200, **kw: Any) -> str:
    model, vocab, _ = load_model(checkpoint)
    return generate(model, vocab, prefix, length, **kw)


# ----------------------------------------------------------------------------------------------
# CLI


def _field_help() -> dict[str, str]:
    """Each config field's one-line reason: the comment after it in the dataclass source."""
    import inspect
    import re

    out: dict[str, str] = {}
    for cls in (TrainConfig, LMConfig):  # LMConfig last: its comments win
        for m in re.finditer(r"^\s+(\w+): [^=\n]+= [^#\n]+#\s*(.+)$", inspect.getsource(cls), re.M):
            out[m.group(1)] = m.group(2).replace("%", "%%")
    return out


def _add_config_flags(p: argparse.ArgumentParser) -> None:
    d = LMConfig()
    helps = _field_help()
    for f in fields(LMConfig):
        value = getattr(d, f.name)
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=value, help=helps.get(f.name))
        else:
            p.add_argument(flag, type=str if value is None else type(value), default=value,
                           help=f"{helps.get(f.name, '')} (default: {value!r})")  # fmt: skip


def _config_from_args(args: argparse.Namespace) -> LMConfig:
    cfg = LMConfig(**{f.name: getattr(args, f.name) for f in fields(LMConfig)})
    if args.recipe:
        preset = {"ptb-small": PTB_SMALL, "ptb-medium": PTB_MEDIUM}[args.recipe]
        defaults = LMConfig()
        for k, v in preset.items():  # a recipe sets what the command line left at its default
            if getattr(cfg, k) == getattr(defaults, k):
                setattr(cfg, k, v)
    return cfg


def _cmd_train(args: argparse.Namespace) -> int:
    cfg = _config_from_args(args)
    s = train(cfg, resume=args.resume, overwrite=args.overwrite)
    if distributed()[0] != 0 or int(os.environ.get("RANK", "0")) != 0:
        return 0
    best = Path(cfg.out) / "best.pt"
    v = s["last_valid"] or {}
    print(
        f"trained {s['global_step']} steps ({s['epochs_done']} full epochs) in {s['wall_s']:.1f}s, "
        f"{s['tokens_per_s']:.0f} tokens/s; vocabulary {s['vocab_size']}, {s['parameters']} parameters"
    )
    line = f"best valid loss {s['best_valid_loss']:.4f} nats/token, ppl {math.exp(min(s['best_valid_loss'], 50)):.2f}"
    if cfg.level == "char":
        line += f", {s['best_valid_loss'] / math.log(2):.3f} bits/char"
    print(line + (f" (last valid ppl {v['ppl']:.2f})" if v else ""))
    print(f"checkpoint: {best}  (also last.pt, metrics.jsonl, metrics.csv, curves.png in {cfg.out})")
    if cfg.samples and best.exists():
        model, vocab, _ = load_model(best)
        for i in range(cfg.samples):
            text = generate(model, vocab, cfg.prefix, cfg.sample_length, temperature=cfg.temperature, seed=cfg.seed + i)
            print(f"--- sample {i + 1} (temperature {cfg.temperature}) ---")
            print(text)
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    m = evaluate(args.checkpoint, args.data, args.split, batch_size=args.batch_size, device=args.device)
    line = f"{args.split}: loss {m['loss']:.4f} nats/token, perplexity {m['ppl']:.2f}"
    if "bpc" in m:
        line += f", {m['bpc']:.3f} bits/char"
    print(line + f" ({m['tokens']} tokens, {m['seconds']:.1f}s)")
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    model, vocab, _ = load_model(args.checkpoint, args.device)
    for i in range(args.samples):
        text = generate(model, vocab, args.prefix, args.length, temperature=args.temperature, top_k=args.top_k,
                        greedy=args.greedy, seed=args.seed + i)  # fmt: skip
        if args.samples > 1:
            print(f"--- sample {i + 1} ---")
        print(text)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("lm", help="language models: train, eval, generate")
    sub = p.add_subparsers(dest="lm_command", metavar="ACTION", required=True)

    t = sub.add_parser("train", help="train an LSTM language model (no arguments: Python source, ~5 minutes)")
    _add_config_flags(t)
    t.add_argument("--recipe", choices=["ptb-small", "ptb-medium"], default=None,
                   help="Zaremba et al. 2014 settings (flags given explicitly still win)")  # fmt: skip
    t.add_argument("--resume", action="store_true", help="continue the run in --out exactly where it stopped")
    t.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint in --out")
    t.set_defaults(func=_cmd_train)

    e = sub.add_parser("eval", help="loss / perplexity of a checkpoint on a split")
    e.add_argument("--checkpoint", required=True, help="a best.pt or last.pt")
    e.add_argument("--data", default=None, help="corpus (default: the one the checkpoint was trained on)")
    e.add_argument("--split", default="test", choices=["train", "valid", "test"])
    e.add_argument("--batch-size", type=int, default=10)
    e.add_argument("--device", default="cpu")
    e.set_defaults(func=_cmd_eval)

    g = sub.add_parser("generate", help="sample text from a checkpoint")
    g.add_argument("--checkpoint", required=True)
    g.add_argument("--prefix", default="", help="text to continue")
    g.add_argument("--length", type=int, default=300, help="tokens to generate")
    g.add_argument("--temperature", type=float, default=0.8)
    g.add_argument("--top-k", type=int, default=0, help="sample among the k most likely (0: all)")
    g.add_argument("--greedy", action="store_true", help="always the most likely token")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--samples", type=int, default=1)
    g.add_argument("--device", default="cpu")
    g.set_defaults(func=_cmd_generate)
