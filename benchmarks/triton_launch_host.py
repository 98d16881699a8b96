"""The Python part of a Triton launch of our kernels, measured without a GPU (issue 6, host work per call).

Run 5 measured a step-wise launch of the forward kernel at 60 us of host time per step (27 us in run 2), and
short calls bound by host work (docs/gpu.md, "Host work per call"). Part of a launch is Python: Triton's
``JITFunction.run`` binds and specialises every argument (59 for our forward kernel), builds the cache key,
looks the compiled kernel up, then calls the C launcher, which calls the driver. This measures that Python
part alone: Triton's active driver is replaced by one whose launcher does nothing and whose "device" is an
sm_90 target, so ``kernel[grid](...)`` really compiles for sm_90 (or loads the kernel from Triton's cache)
and then runs Triton's launch path up to its CUDA launcher (left out: that launcher object's own bit of
Python, its scratch allocation, and torch's current-device and stream queries, which the fake driver
answers with constants). Rows: host microseconds per launch
(median of 5 rounds of 2000) of a two-argument kernel, of our forward kernel through ``triton_lstm._launch``
(one step-wise launch, as the tuning tables time them), of the same launch through a ``CompiledKernel``
handle with the bound arguments already in hand (the least a launch through Triton's Python can cost),
and of Triton's argument binder alone. Not measured: the C launcher and the driver (GPU only;
``benchmarks/gpu_profile.py`` measures whole launches on a GPU).

    PYTHONPATH=src python benchmarks/triton_launch_host.py --out docs/gpu_runs/triton-launch-host-DATE.md

(the GPU image's Triton 3.6 is what matters: run it with a Python that has triton 3.6.0; takes seconds once
Triton's cache has the kernel, a minute before.)
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import triton
import triton.compiler.compiler as triton_compiler
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.runtime.driver import driver

from lstmkit.kernels import triton_lstm as tk

#: what an H100 / H200 block may have (the fake device's limit, so plans that fit there load)
SHARED_LIMIT = 232448


class _NoDriver:
    """Triton's driver interface with no device behind it: sm_90 target, stream 0, a launcher that does nothing."""

    class utils:  # noqa: N801  (Triton calls driver.utils.load_binary)
        @staticmethod
        def load_binary(name, kernel, shared, device):
            return 1, 1, 64, 0, 1024  # module, function, registers, spills, max threads

    def __init__(self):
        self.launcher_cls = lambda src, metadata: (lambda *args: None)

    def is_active(self):
        return True

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_current_target(self):
        return GPUTarget("cuda", 90, 32)

    def get_device_capability(self, device=0):
        return 9, 0

    def get_active_torch_device(self):
        return torch.device("cpu")


def _two_args_fn(x_ptr, n, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    tl.store(x_ptr + offs, tl.load(x_ptr + offs, mask=offs < n) + 1, mask=offs < n)


def per_call_us(fn, n: int = 2000, rounds: int = 5) -> float:
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        out.append((time.perf_counter() - t0) / n * 1e6)
    return statistics.median(out)


def measure(B: int = 8, H: int = 256, dtype: torch.dtype = torch.bfloat16) -> list[tuple[str, float]]:
    saved = driver._active, triton_compiler.max_shared_mem  # (reset_active would look for a real device)
    driver.set_active(_NoDriver())
    triton_compiler.max_shared_mem = lambda device: SHARED_LIMIT
    try:
        x = torch.zeros(16)
        two = triton.jit(_two_args_fn)
        two[(1,)](x, 16, BLOCK=16)
        rows = [("Triton kernel, 2 arguments: `kernel[grid](...)`", per_call_us(lambda: two[(1,)](x, 16, BLOCK=16)))]
        # the GPU's plan at (B, H) (its tiles and switches), launched with CPU tensors: the launcher never reads them
        p = tk.Plan(B, H, dtype, torch.device("cuda"), sm_count=132, mode="stepwise")
        # a JITFunction of its own (as _compiled makes them): the fake driver's kernels, whose launcher does
        # nothing, must not land in the cache of the one the module launches
        kern = tk._compiled.__wrapped__("fwd", False)
        T = 1
        ptrs = (torch.zeros(T, B, 4 * H, dtype=dtype), torch.zeros(4 * H, H, dtype=dtype),
                torch.zeros(T + 1, B, H, dtype=dtype), torch.zeros(T + 1, B, H), torch.zeros(T, B, 4 * H),
                torch.zeros(p.n_btiles, T, dtype=torch.int32), torch.zeros(1, dtype=torch.int32))  # fmt: skip
        consts = {**p.constants(T, B, H), "SAVE": True}

        def ours():
            tk._launch(kern, p, ptrs, consts, T, 0, down=False)

        ours()  # compiles for sm_90, or loads from Triton's cache
        n_args = len(kern.arg_names)
        rows.append((f"our forward kernel ({n_args} parameters), one step-wise launch: `triton_lstm._launch`",
                     per_call_us(ours)))  # fmt: skip
        kw = dict(t_start=0, n_steps=T, **consts, num_warps=p.num_warps)
        grid = (p.n_htiles, p.n_btiles, 1)
        compiled = kern[grid](*ptrs, **kw)
        binder = kern.device_caches[0][-1]  # (kernel cache, key cache, target, backend, binder) in triton 3.6
        bound = list(binder(*ptrs, **kw)[0].values())
        runner = compiled[grid]
        rows.append(("the same, through its `CompiledKernel[grid](*bound arguments)`",
                     per_call_us(lambda: runner(*bound))))  # fmt: skip
        rows.append(("Triton's argument binder alone (specialisation of every argument)",
                     per_call_us(lambda: binder(*ptrs, **kw))))  # fmt: skip
        return rows
    finally:
        driver._active, triton_compiler.max_shared_mem = saved


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    rows = measure()
    cmd = "PYTHONPATH=src python benchmarks/triton_launch_host.py " + " ".join(sys.argv[1:] if argv is None else argv)
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = ["# The Python part of a Triton launch (no GPU: Triton's driver replaced by one that launches nothing)", "",
             f"Command: `{cmd}`  ", f"Date: {date}; triton {triton.__version__}, torch {torch.__version__}, "
             f"{platform.machine()} ({platform.processor() or 'cpu'}), Python {platform.python_version()}", "",
             "Our kernel: the forward at (B, H) = (8, 256), bf16, the GPU's step-wise plan, as the tuning tables' "
             "step-wise rows launch it. Not in these numbers: the C launcher and the driver.", "",
             "| launch | host us per launch (median of 5 x 2000) |", "|---|---|"]  # fmt: skip
    lines += [f"| {what} | {us:.1f} |" for what, us in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
