"""The host time of a cluster-kernel call around its launch, on the CPU (issue 6, goal 3 at (256, 16, 768)).

Run 7 found the routed forward at (256, 16, 768) bound by its host work as much as by its kernel
(docs/gpu.md). On a GPU each torch op costs 5-25 us of host time; this times the Python and torch-op part of
``cluster_lstm.lstm`` under ``torch.no_grad()`` on CPU tensors, with the kernel's launch (the CPU emulation)
replaced by a no-op, so nothing is computed and the numbers that come out are wrong by design. A tiny shape
keeps the input GEMM out of the way. A proxy only: a GPU's dispatcher costs more per op, so the differences
between two versions of the code are what to read (run each version's ``src`` through ``PYTHONPATH``).

    PYTHONPATH=src python benchmarks/cluster_host.py                      # seconds
    git worktree add /tmp/before <commit> && PYTHONPATH=/tmp/before/src python benchmarks/cluster_host.py
"""

from __future__ import annotations

import argparse
import statistics
import time
import types

import torch

from lstmkit.kernels import cluster_lstm as cl


def host_us(T: int = 2, B: int = 16, H: int = 64, reps: int = 5, calls: int = 500) -> list[float]:
    """Median microseconds of a no-grad ``cluster_lstm.lstm`` call, ``reps`` times over ``calls`` calls."""
    cl._emulator = lambda key: types.SimpleNamespace(emu_run=lambda *a: None, emu_run_bwd=lambda *a: None)
    torch.manual_seed(0)
    dt = torch.bfloat16
    x, h0 = torch.randn(T, B, H, dtype=dt), torch.zeros(1, B, H, dtype=dt)
    w = [torch.randn(4 * H, H, dtype=dt) * 0.03, torch.randn(4 * H, H, dtype=dt) * 0.03, torch.zeros(4 * H, dtype=dt),
         torch.zeros(4 * H, dtype=dt)]  # fmt: skip
    kw = dict(bias=True, num_layers=1, dropout=0.0, training=False, bidirectional=False, batch_first=False)

    def call():
        with torch.no_grad():
            cl.lstm(x, (h0, h0), w, **kw, exchange="mbarrier")

    for _ in range(200):
        call()
    out = []
    for _ in range(reps):
        ts = []
        for _ in range(calls):
            t0 = time.perf_counter()
            call()
            ts.append(time.perf_counter() - t0)
        out.append(statistics.median(ts) * 1e6)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.parse_args(argv)
    res = host_us()
    print(f"cluster_lstm.lstm, no grad, (2, 16, 64) bf16, launch stubbed ({cl.__file__}): median "
          f"{statistics.median(res):.1f} us (5 medians of 500 calls: {', '.join(f'{r:.1f}' for r in res)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
