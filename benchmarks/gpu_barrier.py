"""The cost of one synchronisation among N persistent programs per step, with no LSTM work around it.

Goal 3 (docs/gpu.md) is missed by a per-step floor of about 2.8 us at small batch, attributed to the
grid barrier and the exchange around it; this measures the barrier alone, N = 8 .. 128 co-resident
programs (cooperative launch), 2000 steps in one launch, CUDA events, median of 5:

* ``counter``: the kernels' barrier (``triton_lstm._grid_arrive`` / ``_grid_wait``): one counter per step,
  each program adds 1 (release) and polls it (acquire load, or an atomic read with ``--poll 0``);
* ``flags``: one word per program: each program stores its step number in its own word (release) and
  polls all N words with one vector load, then fences (acquire): no read-modify-write on one hot word.

Compared with ``tk.step_ablation`` (gpu.py's last table), it says how much of a step a different
synchronisation could save. ``--compile-only`` builds both kernels for sm_90 without a GPU.

    PYTHONPATH=src python benchmarks/gpu_barrier.py --out barrier.md      # on a GPU, ~10 s
    PYTHONPATH=src python benchmarks/gpu_barrier.py --compile-only        # anywhere
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
import triton
import triton.language as tl

from lstmkit.kernels import triton_lstm as tk

_FENCE = tl.constexpr("fence.acq_rel.gpu;\n\tmov.b32 $0, $1;")


@triton.jit
def _sync_kernel(sync_ptr, flags_ptr, err_ptr, T, n_prog, MODE: tl.constexpr, POLL: tl.constexpr,
                 NP_PAD: tl.constexpr, SPIN_LIMIT: tl.constexpr, TIMEOUT_NS: tl.constexpr):  # fmt: skip
    pid = tl.program_id(0)
    wait_ns = tl.full([], TIMEOUT_NS, tl.int64)
    wait_spins = tl.full([], SPIN_LIMIT, tl.int32)
    offs = tl.arange(0, NP_PAD)
    for t in range(T):
        if MODE == 0:
            tk._grid_arrive(sync_ptr + t)
            wait_ns, wait_spins = tk._grid_wait(sync_ptr + t, n_prog, err_ptr, wait_ns, wait_spins, POLL)
        else:
            tl.debug_barrier()
            tl.atomic_xchg(flags_ptr + pid, t + 1, sem="release", scope="gpu")
            seen = tl.min(tl.load(flags_ptr + offs, mask=offs < n_prog, other=T + 1, volatile=True), 0)
            spins = 0
            while (seen < t + 1) & (spins < wait_spins):
                seen = tl.min(tl.load(flags_ptr + offs, mask=offs < n_prog, other=T + 1, volatile=True), 0)
                spins += 1
            if seen < t + 1:
                tl.atomic_xchg(err_ptr, 1)
                wait_spins = wait_spins * 0
            seen = tl.inline_asm_elementwise(_FENCE, "=r,r", [seen], dtype=tl.int32, is_pure=False, pack=1)
            tl.debug_barrier()


def run(mode: str, n_prog: int, poll: int, steps: int, reps: int = 5) -> float:
    """Microseconds per step (median of ``reps`` launches after one warm-up)."""
    dev = torch.device("cuda")
    err = torch.zeros(1, dtype=torch.int32, device=dev)
    times = []
    for i in range(reps + 1):
        sync = torch.zeros(steps, dtype=torch.int32, device=dev)
        flags = torch.zeros(n_prog, dtype=torch.int32, device=dev)
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        extra = {"launch_cooperative_grid": True} if tk.HAVE_COOPERATIVE else {}
        a.record()
        _sync_kernel[(n_prog,)](sync, flags, err, steps, n_prog, MODE=0 if mode == "counter" else 1, POLL=poll,
                                NP_PAD=max(16, triton.next_power_of_2(n_prog)), SPIN_LIMIT=tk.SPIN_LIMIT,
                                TIMEOUT_NS=tk.BARRIER_TIMEOUT_NS, num_warps=4, **extra)  # fmt: skip
        b.record()
        b.synchronize()
        if i:
            times.append(a.elapsed_time(b) * 1e3 / steps)
    if int(err.item()):
        raise RuntimeError(f"{mode} barrier timed out with {n_prog} programs")
    return statistics.median(times)


def compile_only() -> int:
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    for mode in (0, 1):
        sig = {"sync_ptr": "*i32", "flags_ptr": "*i32", "err_ptr": "*i32", "T": "i32", "n_prog": "i32",
               "MODE": "constexpr", "POLL": "constexpr", "NP_PAD": "constexpr", "SPIN_LIMIT": "constexpr",
               "TIMEOUT_NS": "constexpr"}  # fmt: skip
        consts = {"MODE": mode, "POLL": 1, "NP_PAD": 128, "SPIN_LIMIT": tk.SPIN_LIMIT,
                  "TIMEOUT_NS": tk.BARRIER_TIMEOUT_NS}
        src = ASTSource(fn=_sync_kernel, signature=sig, constexprs=consts)
        k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
        ptx = k.asm["ptx"]
        print(f"mode {mode}: compiled for sm_90, {len(ptx.splitlines())} PTX lines, "
              f"fence.acq_rel: {'fence.acq_rel.gpu' in ptx}, atom: {'atom.' in ptx}")  # fmt: skip
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--compile-only", action="store_true")
    args = ap.parse_args(argv)
    if args.compile_only:
        return compile_only()
    if not torch.cuda.is_available():
        raise SystemExit("no GPU here: use --compile-only")
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    lines = [f"# Synchronisation alone, per step: {torch.cuda.get_device_name()}, triton {triton.__version__}", "",
             f"Command: `python benchmarks/gpu_barrier.py {' '.join(sys.argv[1:] if argv is None else argv)}`; "
             f"{args.steps} steps in one cooperative launch, 4 warps per program, median of 5 launches.", "",
             "| programs | counter, acquire-load poll (us/step) | counter, atomic poll | flag per program |",
             "|---|---|---|---|"]  # fmt: skip
    for n in (8, 16, 32, 64, 128):
        if n > sms:
            continue
        cells = []
        for mode, poll in (("counter", 1), ("counter", 0), ("flags", 1)):
            try:
                cells.append(f"{run(mode, n, poll, args.steps):.2f}")
            except Exception as e:  # report, go on
                cells.append(f"ERROR {type(e).__name__}: {str(e)[:80]}")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    if args.out:
        args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
