"""lstmkit.nn.LSTM against torch.nn.LSTM on the CPU: forward and forward+backward, one run.

For each shape (T, B, I=H, layers) both modules hold the same weights; repeats alternate between
them (ours, torch, ours, torch, ...) so that machine noise hits both alike, and the table reports
medians and the speed ratio torch_time / ours_time (>= 1 means lstmkit is as fast or faster).
``impl="loop"`` (the readable pure-torch path) is timed too, to show what the native path saves.

    python benchmarks/core_cpu.py --repeats 30 --out docs/benchmarks_core.md
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import time
from collections.abc import Sequence

import torch

from lstmkit.bench import cpu_name
from lstmkit.nn import LSTM

SHAPES = [(35, 20, 200, 2), (35, 20, 650, 2), (100, 1, 256, 1), (100, 32, 256, 1)]


def step(m: torch.nn.Module, x: torch.Tensor, backward: bool) -> None:
    if backward:
        m.zero_grad(set_to_none=True)
        out, (h, c) = m(x)
        out.sum().backward()
    else:
        with torch.no_grad():
            m(x)


def time_modules(mods: dict[str, torch.nn.Module], x: torch.Tensor, backward: bool, repeats: int, warmup: int):
    for _ in range(warmup):
        for m in mods.values():
            step(m, x, backward)
    times: dict[str, list[float]] = {k: [] for k in mods}
    for _ in range(repeats):
        for k, m in mods.items():
            t0 = time.perf_counter()
            step(m, x, backward)
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--out", default=None, help="write the markdown table here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    for T, B, H, layers in SHAPES:
        ref = torch.nn.LSTM(H, H, layers)
        ours = LSTM(H, H, layers)
        loop = LSTM(H, H, layers, impl="loop")
        ours.load_state_dict(ref.state_dict())
        loop.load_state_dict(ref.state_dict())
        x = torch.randn(T, B, H)
        for backward in (False, True):
            med = time_modules({"torch": ref, "ours": ours, "loop": loop}, x, backward, args.repeats, args.warmup)
            row = {
                "shape": f"({T}, {B}, {H}, {layers})",
                "pass": "fwd+bwd" if backward else "fwd",
                "torch_ms": med["torch"] * 1e3,
                "ours_ms": med["ours"] * 1e3,
                "loop_ms": med["loop"] * 1e3,
                "ratio": med["torch"] / med["ours"],
                "loop_ratio": med["torch"] / med["loop"],
            }
            rows.append(row)
            print(
                f"{row['shape']:>20} {row['pass']:>8}  torch {row['torch_ms']:8.2f} ms"
                f"  lstmkit {row['ours_ms']:8.2f} ms"
                f"  speed ratio {row['ratio']:.3f}   loop {row['loop_ms']:8.2f} ms ({row['loop_ratio']:.2f}x)",
                flush=True,
            )
    cmd = "python benchmarks/core_cpu.py " + " ".join(argv if argv is not None else __import__("sys").argv[1:])
    lines = [
        "| shape (T, B, I=H, layers) | pass | torch.nn.LSTM ms | lstmkit.nn.LSTM ms | speed ratio (torch/lstmkit) "
        "| impl=\"loop\" ms | loop speed ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['shape']} | {r['pass']} | {r['torch_ms']:.2f} | {r['ours_ms']:.2f} | {r['ratio']:.3f} "
            f"| {r['loop_ms']:.2f} | {r['loop_ratio']:.2f} |"
        )
    header = (
        f"Command: `{cmd.strip()}`  \nDate: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC  \n"
        f"Machine: {cpu_name()}, {args.threads} threads, torch {torch.__version__}  \n"
        f"Medians of {args.repeats} alternating repeats after {args.warmup} warm-up rounds.\n\n"
    )
    table = header + "\n".join(lines) + "\n"
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
