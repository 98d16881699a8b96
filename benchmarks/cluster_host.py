"""The host time of a cluster-kernel call around its launch, on the CPU (issue 6, goal 3 at (256, 16, 768)).

Run 7 found the routed forward at (256, 16, 768) bound by its host work as much as by its kernel
(docs/gpu.md). On a GPU each torch op costs 5-25 us of host time; this times the Python and torch-op part of
``cluster_lstm.lstm`` under ``torch.no_grad()`` on CPU tensors, with the kernel's launch (the CPU emulation)
replaced by a no-op, so nothing is computed and the numbers that come out are wrong by design. A tiny shape
keeps the input GEMM out of the way. A proxy only: a GPU's dispatcher costs more per op, so the differences
between two versions of the code are what to read (run each version's ``src`` through ``PYTHONPATH``).

    PYTHONPATH=src python benchmarks/cluster_host.py [--route]            # seconds
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


def route_us(dt: torch.dtype = torch.bfloat16, reps: int = 5, calls: int = 2000) -> list[float]:
    """Median microseconds that ``kernels.route.lstm`` (impl="auto" for a plain GPU call, session 13) adds to a
    call once its kind's choice is made: whether it may time (autocast, capture, compiling), the kind's key, the
    chosen path's coverage (cuDNN's: none to check) and the dispatch; the path itself is stubbed. The inputs say
    they are on a GPU (``is_cuda``) so the router takes its GPU branch; nothing runs on one."""
    from lstmkit.kernels import route

    class FakeCuda(torch.Tensor):
        __torch_function__ = torch._C._disabled_torch_function_impl  # (a tensor's own speed for .shape, .dtype)

        @property
        def is_cuda(self):
            return True

    route._capturing = lambda: False  # (a CUDA query: about a microsecond on a GPU machine, not here)
    route.TUNE = True
    route._native = lambda *a, **k: None
    x = torch.zeros(2, 16, 64, dtype=dt).as_subclass(FakeCuda)
    h0 = torch.zeros(1, 16, 64, dtype=dt)
    w = [torch.zeros(256, 64, dtype=dt), torch.zeros(256, 64, dtype=dt)]
    kw = dict(bias=False, num_layers=1, dropout=0.0, training=False, bidirectional=False, batch_first=False)
    route._CHOICE[route.key(x, (h0, h0), w, kw)] = "native"
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(calls):
            route._native(x, (h0, h0), w, **kw)
        direct = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(calls):
            route.lstm(x, (h0, h0), w, **kw)
        out.append((time.perf_counter() - t0 - direct) / calls * 1e6)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--route", action="store_true", help="also time impl='auto''s router (kernels/route.py)")
    args = ap.parse_args(argv)
    res = host_us()
    print(f"cluster_lstm.lstm, no grad, (2, 16, 64) bf16, launch stubbed ({cl.__file__}): median "
          f"{statistics.median(res):.1f} us (5 medians of 500 calls: {', '.join(f'{r:.1f}' for r in res)})")
    if args.route:
        for dt in (torch.bfloat16, torch.float32):  # (float32 keys also read the TF32 settings)
            res = route_us(dt)
            print(f"kernels.route.lstm's own host time, {dt}, its choice made, the path stubbed: median "
                  f"{statistics.median(res):.1f} us (5 rounds of 2000 calls: {', '.join(f'{r:.1f}' for r in res)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
