"""The same character LM on the NumPy reference and on the torch path: tokens/s of each, one run.

    flock /tmp/lstmkit-bench.lock python benchmarks/lm_reference.py --minutes 2

Both train a 1-layer LSTM (``--hidden`` units) as a character model of Tiny Shakespeare with batch 32,
32-step windows, SGD lr 1 and clip 1 on the per-character mean loss, state carried across windows,
for ``--minutes`` each: :func:`lstmkit.reference.train_char_lm` (float64 NumPy, hand-written BPTT)
and ``lstmkit.tasks.lm`` (float32, embedding + lstmkit.nn.LSTM over torch's fused op). Prints the
chars/s of each and their ratio.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see benchmarks/lm_ptb.py

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from lstmkit import reference  # noqa: E402
from lstmkit.tasks import lm  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare" / "input.txt"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--minutes", type=float, default=2.0, help="training time of each path")
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="runs/lm-reference")
    args = ap.parse_args(argv)
    if not Path(args.data).is_file():
        print(f"text not found at {args.data}; pass --data", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    text = Path(args.data).read_text(encoding="utf-8")
    text = text[: int(len(text) * 0.9)]

    lines: list[str] = []
    rcfg = reference.CharLMConfig(hidden=args.hidden, seq_len=32, batch_size=32, lr=1.0, clip=1.0,
                                  minutes=args.minutes, log_every=5)  # fmt: skip
    t0 = time.perf_counter()
    _, _, history = reference.train_char_lm(text, rcfg, log=lines.append)
    ref_wall = time.perf_counter() - t0
    rates = [float(m.group(1)) for ln in lines if (m := re.search(r"(\d+) chars/s", ln))]
    ref_rate = rates[-1]  # cumulative chars / elapsed at the last log line
    ref_ppl = history[-1]

    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "train.txt"
        data.write_text(text + text[-20000:])  # last 20k chars as a small validation split (not timed)
        cfg = lm.LMConfig(data=str(data), out=str(Path(tmp) / "run"), level="char", emsize=len(set(text)),
                          hidden=args.hidden, layers=1, batch_size=32, bptt=32, optimizer="sgd", lr=1.0,
                          schedule="constant", clip=1.0, init_range=0.1, epochs=1000, max_minutes=args.minutes,
                          log_every=20, samples=0, valid_fraction=20000 / (len(text) + 20000),
                          test_fraction=0.0)  # fmt: skip
        s = lm.train(cfg, show_progress=False)
        rows = [json.loads(x) for x in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["kind"] == "train"]
    torch_rate = sum(r["tok_s"] for r in train_rows[1:]) / max(len(train_rows) - 1, 1)  # mean over log windows
    torch_ppl = train_rows[-1]["ppl"]
    result = {
        "hidden": args.hidden,
        "minutes_each": args.minutes,
        "reference_chars_per_s": ref_rate,
        "reference_last_train_ppl": ref_ppl,
        "reference_wall_s": ref_wall,
        "torch_chars_per_s": torch_rate,
        "torch_last_train_ppl": torch_ppl,
        "torch_steps": s["global_step"],
        "speedup": torch_rate / ref_rate,
        "threads": args.threads,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "summary.json").write_text(json.dumps(result, indent=2))
    print(
        f"NumPy reference: {ref_rate:.0f} chars/s (train ppl {ref_ppl:.2f} after {args.minutes:g} min); "
        f"torch path: {torch_rate:.0f} chars/s (train ppl {torch_ppl:.2f}); torch/reference = {result['speedup']:.1f}x"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
