"""The host work around one Triton LSTM call, counted on the CPU: torch ops dispatched per call (issue 6).

Run 5 (docs/gpu.md, "Host work per call") measured (35, 20, 650) bf16 forward at 0.79 ms on an H200 where
its kernel's 35 steps take 0.29 ms; a short call on a GPU is bound by the host work around its kernels as
much as by them. That work is the same on any machine: the torch ops the call dispatches (each on a GPU a
launch of a kernel or a memset, or at least a trip through the dispatcher) and the Python around them. This
counts them without a GPU: ``triton_lstm.tk.lstm`` on CPU tensors with the kernel launch replaced by a no-op
(so nothing is computed and the numbers that come out are wrong by design) and the timeout flag checked as
on a GPU (``torch._assert_async``, no host synchronisation), under a
``TorchDispatchMode`` that records every aten op. Columns: the ops, those of them that would launch device
work (not views, ``empty`` or host-side ops), and the host microseconds of the call on this CPU (median of
200; a proxy only: a GPU's dispatch costs more per op, and its launches are what the ops column counts).

    PYTHONPATH=src python benchmarks/host_ops.py --out docs/gpu_runs/host-ops-DATE.md     # seconds, any machine

Cases: one layer, forward under ``torch.no_grad()`` and forward + ``y.sum().backward()`` as
``benchmarks/gpu.py`` times them, at a hidden size the kernels run as it is and at one they pad (units
padded to a multiple of 16 on a GPU, ``ALIGN_UNITS``; forced here for the CPU).
"""

from __future__ import annotations

import argparse
import collections
import datetime
import platform
import statistics
import time
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from lstmkit.kernels import triton_lstm as tk

#: aten ops that launch no device work: views, allocation without initialisation, host-side scalars
NO_DEVICE_WORK = {
    "view", "select", "slice", "t", "expand", "empty", "empty_like", "lift_fresh", "alias", "detach", "unsqueeze",
    "squeeze", "as_strided", "_reshape_alias", "unbind", "split", "permute", "transpose", "narrow", "unflatten",
    "_unsafe_view", "split_with_sizes",
}  # fmt: skip


class _Count(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def measure(H: int, padded: bool, reps: int = 200) -> list[dict]:
    """Ops and host time of one forward call and one forward+backward call at (T, B) = (3, 2), hidden ``H``."""
    saved_launch, saved_check, saved_align = tk._launch, tk._raise_on_timeout, dict(tk.ALIGN_UNITS)
    tk._launch = lambda *a, **k: None  # no kernel: the host work around it
    # the timeout flag's check as a GPU call makes it (a device-side assert; on CPU tensors it would read the flag)
    tk._raise_on_timeout = lambda err, where: torch._assert_async(err[0] == 0, where)
    tk.ALIGN_UNITS["cpu"] = 16 if padded else 1
    try:
        torch.manual_seed(0)
        m = torch.nn.LSTM(H, H)
        x, h0, c0 = torch.randn(3, 2, H), torch.randn(1, 2, H), torch.randn(1, 2, H)
        xg = x.clone().requires_grad_()
        kw = dict(bias=True, num_layers=1, dropout=0.0, bidirectional=False, batch_first=False)

        def fwd():
            with torch.no_grad():
                return tk.lstm(x, (h0, c0), m._flat_weights, training=False, **kw)

        def fwd_bwd():
            y, _, _ = tk.lstm(xg, (h0, c0), m._flat_weights, training=True, **kw)
            y.sum().backward()

        rows = []
        for name, fn in (("forward (no grad)", fwd), ("forward + backward", fwd_bwd)):
            for _ in range(5):
                fn()
            with _Count() as c:
                fn()
            times = []
            for _ in range(reps):
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e6)
            work = [op for op in c.ops if op not in NO_DEVICE_WORK]
            rows.append(dict(H=H, kernel_H=tk.kernel_units(H, "cpu"), call=name, ops=len(c.ops), work=len(work),
                             us=statistics.median(times), which=collections.Counter(work)))  # fmt: skip
        return rows
    finally:
        tk._launch, tk._raise_on_timeout = saved_launch, saved_check
        tk.ALIGN_UNITS.clear()
        tk.ALIGN_UNITS.update(saved_align)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    lines = [
        "# Host work around one Triton LSTM call (CPU, kernel launch replaced by a no-op)", "",
        "Command: `PYTHONPATH=src python benchmarks/host_ops.py --out docs/gpu_runs/host-ops-DATE.md`  ",
        f"Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, torch {torch.__version__}, "
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads; (T, B) = (3, 2)", "",
        "| H | H the kernels run | call | aten ops | of them launching device work | host us (this CPU) "
        "| the device-work ops |",
        "|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for H, padded in ((16, False), (12, True)):
        for r in measure(H, padded):
            which = ", ".join(f"{op} {n}" for op, n in sorted(r["which"].items()))
            lines.append(f"| {r['H']} | {r['kernel_H']} | {r['call']} | {r['ops']} | {r['work']} | {r['us']:.0f} "
                         f"| {which} |")  # fmt: skip
            print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    if args.out:
        args.out.write_text(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
