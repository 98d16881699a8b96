"""Tiny Shakespeare, characters: the best validation loss (nats/char, last 10% held out) in a time budget.

    flock /tmp/lstmkit-bench.lock python benchmarks/lm_shakespeare.py --minutes 25 --out runs/shakespeare

The number to beat is 1.47 nats/char (nanoGPT's "shakespeare_char", a 10.7M-parameter transformer,
trained on a GPU). The recipe here is a 2x512 LSTM with dropout 0.25, Adam, lr divided by 2 on a
validation plateau, and the first 90% / last 10% split of the nanoGPT recipe. Validation runs every
``--valid-every`` steps' worth of an epoch (each epoch, plus at the time limit).
Writes ``<out>/summary.json``; docs/results.md quotes it.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see benchmarks/lm_ptb.py

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from lstmkit.tasks import lm  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare" / "input.txt"

SHAKESPEARE = dict(
    level="char", valid_fraction=0.1, test_fraction=0.0, emsize=64, hidden=512, layers=2, dropout=0.25,
    batch_size=32, bptt=100, optimizer="adam", lr=2e-3, schedule="plateau", decay_factor=2.0, patience=0,
    clip=1.0, epochs=1000, log_every=50, eval_batch_size=16, samples=0,
)  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--out", default="runs/shakespeare")
    ap.add_argument("--minutes", type=float, default=25.0, help="training time budget")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--hidden", type=int, default=SHAKESPEARE["hidden"])
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args(argv)
    if not Path(args.data).is_file():
        print(f"Tiny Shakespeare not found at {args.data}; pass --data", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    torch.set_num_threads(args.threads)
    cfg = lm.LMConfig(data=args.data, out=args.out, device=args.device, max_minutes=args.minutes,
                      **{**SHAKESPEARE, "hidden": args.hidden})  # fmt: skip
    t0 = time.perf_counter()
    s = lm.train(cfg, overwrite=args.overwrite, show_progress=False)
    wall = time.perf_counter() - t0
    model, vocab, _ = lm.load_model(Path(args.out) / "best.pt", args.device)
    sample = lm.generate(model, vocab, "ROMEO:", 300, temperature=0.8, seed=0)
    result = {
        "best_valid_nats_per_char": s["best_valid_loss"],
        "best_valid_bpc": s["best_valid_loss"] / math.log(2),
        "minutes_budget": args.minutes,
        "train_tokens_per_s": s["tokens_per_s"],
        "wall_s": wall,
        "steps": s["global_step"],
        "epochs_done": s["epochs_done"],
        "parameters": s["parameters"],
        "config": dict(vars(cfg)),
        "sample": sample,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    (Path(args.out) / "summary.json").write_text(json.dumps(result, indent=2, default=str))
    print(
        f"Tiny Shakespeare: best valid {s['best_valid_loss']:.4f} nats/char ({result['best_valid_bpc']:.3f} bpc) "
        f"in {args.minutes:g} min budget, {s['tokens_per_s']:.0f} chars/s, {s['parameters']} parameters, "
        f"{s['global_step']} steps; target 1.47\n{sample}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
