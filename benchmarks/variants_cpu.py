"""LSTM variants on the CPU against torch.nn.LSTM: time, peak memory and the one-time compile, one run.

Runs ``lstmkit bench`` (see ``lstmkit.bench``) on the four standard shapes for the plain module and
the variants of the speed target (``layer_norm``; ``zoneout`` + ``recurrent_dropout``), forward and
forward+backward, with peak memory per model in a fresh process, and first measures how long the
compiled kernel takes to build from scratch (a fresh ``TORCH_EXTENSIONS_DIR``, as on a clean CI).

    flock /tmp/lstmkit-bench.lock python benchmarks/variants_cpu.py --repeats 20 --out /tmp/variants.md
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

from lstmkit.bench import BenchConfig, format_table, run_bench


def compile_seconds() -> float:
    """Wall time of a cold build + load of the compiled kernel in a fresh process and extension dir."""
    with tempfile.TemporaryDirectory() as d:
        env = dict(os.environ, TORCH_EXTENSIONS_DIR=d)
        code = "from lstmkit.kernels import cpu_fused; cpu_fused.load()"
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], env=env, check=True)
        return time.perf_counter() - t0


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--no-compile-timing", action="store_true", help="skip the cold-build measurement")
    ap.add_argument("--out", default=None, help="write the markdown here")
    ap.add_argument("--json", default=None, help="write the raw results here")
    args = ap.parse_args(argv)
    argv = list(sys.argv[1:] if argv is None else argv)
    text = f"Command: `python benchmarks/variants_cpu.py {' '.join(argv)}`  \n"
    if not args.no_compile_timing:
        secs = compile_seconds()
        text += f"Cold build + load of the compiled kernel (fresh TORCH_EXTENSIONS_DIR, new process): {secs:.1f} s  \n"
        print(text, flush=True)
    cfg = BenchConfig(repeats=args.repeats, warmup=args.warmup, threads=args.threads, memory=True)
    result = run_bench(cfg)
    text += format_table(result)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
