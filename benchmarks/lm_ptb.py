"""Zaremba et al. 2014 on Penn Treebank: the non-regularized "small" table row (and the medium recipe).

    flock /tmp/lstmkit-bench.lock python benchmarks/lm_ptb.py --data ../shared/data/ptb --out runs/ptb-small

Small (default): 2x200, U(-0.1, 0.1), SGD lr 1 halved each epoch after epoch 4, 13 epochs, 20 steps,
batch 20, gradient-norm clip 5 on the time-summed loss. The loop uses the per-token mean loss, so
the same update is lr 20 / clip 0.25 (see lstmkit.tasks.lm). Paper: valid 120.7, test 114.5.
``--medium`` is 2x650 with dropout 0.5 (paper: valid 86.2, test 82.7), meant for a GPU.

``--max-steps N`` times a short run instead (tokens/s, to predict the full run's wall time).
Writes a JSON summary to ``<out>/summary.json``; docs/results.md quotes it.
"""

from __future__ import annotations

import os

# On a shared 2-core machine OpenMP's busy-waiting threads collapse throughput when another process
# runs (measured: 540 vs 2,400 tokens/s); passive waiting costs little when the machine is quiet.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from lstmkit.tasks import lm  # noqa: E402


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "ptb"))
    ap.add_argument("--out", default="runs/ptb-small")
    ap.add_argument("--medium", action="store_true", help="the medium (dropout 0.5, 2x650) recipe")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--max-steps", type=int, default=0, help="stop after N steps (a timing run)")
    ap.add_argument("--epochs", type=int, default=0, help="override the recipe's epochs")
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args(argv)
    if not Path(args.data).is_dir():
        print(f"PTB not found at {args.data}; pass --data", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    torch.set_num_threads(args.threads)
    preset = dict(lm.PTB_MEDIUM if args.medium else lm.PTB_SMALL)
    if args.epochs:
        preset["epochs"] = args.epochs
    cfg = lm.LMConfig(data=args.data, out=args.out, device=args.device, max_steps=args.max_steps, samples=0,
                      seed=0, **preset)  # fmt: skip
    t0 = time.perf_counter()
    s = lm.train(cfg, overwrite=args.overwrite, show_progress=False)
    wall = time.perf_counter() - t0
    best = Path(args.out) / "best.pt"
    test = lm.evaluate(best, split="test", batch_size=cfg.eval_batch_size, device=args.device)
    valid = lm.evaluate(best, split="valid", batch_size=cfg.eval_batch_size, device=args.device)
    result = {
        "recipe": "medium" if args.medium else "small",
        "config": {k: v for k, v in vars(cfg).items()},
        "valid_ppl": valid["ppl"],
        "test_ppl": test["ppl"],
        "train_tokens_per_s": s["tokens_per_s"],
        "train_wall_s": s["wall_s"],
        "total_wall_s": wall,
        "steps": s["global_step"],
        "epochs_done": s["epochs_done"],
        "threads": args.threads,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": subprocess.run("lscpu | grep 'Model name'", shell=True, capture_output=True, text=True).stdout.strip(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    (Path(args.out) / "summary.json").write_text(json.dumps(result, indent=2, default=str))
    print(
        f"PTB {result['recipe']}: valid ppl {valid['ppl']:.1f}, test ppl {test['ppl']:.1f} "
        f"(paper {'86.2 / 82.7' if args.medium else '120.7 / 114.5'}); {s['tokens_per_s']:.0f} train tokens/s, "
        f"wall {wall / 60:.1f} min, {s['global_step']} steps, best valid loss {s['best_valid_loss']:.4f} "
        f"(ppl {math.exp(s['best_valid_loss']):.1f})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
