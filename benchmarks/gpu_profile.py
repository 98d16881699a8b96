"""Where a short call's time goes on a GPU: kernels, host work, launches (issue 6, after run 5).

Run 5 measured (35, 20, 650) bf16 forward at 0.79 ms where its recurrent kernel's 35 steps take about
0.29 ms, and a step-wise launch of the kernels at 60 us of host time (27 us in run 2). Before changing the
launch path, this says what a call is made of. Two tables:

1. **Launch cost, host microseconds per launch**, back to back without synchronising (median of 5 rounds of
   200): a torch op (``x.add_(1)``), a Triton kernel with two arguments, our forward kernel as one step-wise
   launch (about 60 arguments, ``triton_lstm._launch``), and a whole one-step ``triton_lstm.lstm`` call
   (planning, buffers, GEMM, launch, copies).
2. **One call under torch.profiler** (``SYNC_CHECK`` off, as a user runs it), ours and cuDNN, forward
   (no grad), the forward of a training step alone (with grad, no backward) and forward+backward, at the
   shapes where host work or the backward decides goal 1: per call the wall time (CUDA events, without the
   profiler), the GPU time of its kernels, the number of kernels, the longest kernels, and the host events
   with the most self time (aten ops, autograd nodes, CUDA runtime calls). Wall minus kernel time is time
   the GPU waited for the host. Run 5's numbers put about 1.2-2.0 ms a training call outside the forward
   and the backward recurrence at four bf16 shapes (an estimate, docs/gpu.md, "Next GPU session"): the
   with-grad row and the host events say where. Times are medians of ``--iters`` calls; the profile is of 3.

Plans are fixed to what run 5's tuning chose (``PLANS``), so the script compiles a few kernels and tunes none.

    PYTHONPATH=src python benchmarks/gpu_profile.py --out gpu_profile.md     # on a GPU, about 1-2 min
    PYTHONPATH=src python benchmarks/gpu_profile.py --dry-run --out /tmp/profile.md   # CPU, plumbing only
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

from lstmkit.kernels import triton_lstm as tk

sys.path.insert(0, str(Path(__file__).parent))
from gpu import DTYPES, _compile_in_workers, one_layer_calls, time_ms  # noqa: E402  (the timings' calls and clock)

#: (T, B, H, dtype) -> the forward plan run 5's tuning chose, used for both kernels (its backward was within 8%
#: of the tuned backward's time at each of these shapes, docs/gpu_runs/2026-11-27-h200-run5.md)
PLANS = {  # (in the order of what they decide: a run cut short keeps the first)
    (35, 20, 650, "bf16"): dict(mode="persistent", tiles=(32, 8), resident=True),
    (128, 256, 1024, "bf16"): dict(mode="persistent", tiles=(64, 32), resident=False),
    (100, 1, 512, "bf16"): dict(mode="persistent", tiles=(16, 32), resident=True),
    (1024, 8, 256, "bf16"): dict(mode="persistent", tiles=(16, 8), resident=True),
    (35, 20, 650, "fp16"): dict(mode="persistent", tiles=(32, 8), resident=True),
}
DRY = {(6, 2, 16, "bf16"): dict(mode="persistent", tiles=(16, 16))}


def _two_args_fn(x_ptr, n, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    tl.store(x_ptr + offs, tl.load(x_ptr + offs, mask=offs < n) + 1, mask=offs < n)


#: for the GPU; a dry run interprets the same function on the CPU (as triton_lstm does its kernels), so it
#: needs no TRITON_INTERPRET=1 in the environment
_two_args = triton.jit(_two_args_fn)


def _host_us(fn, device: str, n: int, rounds: int = 5) -> float:
    """Median host microseconds per call of ``fn`` over ``rounds`` rounds of ``n`` back-to-back calls."""
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        out.append((time.perf_counter() - t0) * 1e6 / n)
        if device == "cuda":
            torch.cuda.synchronize()
    return statistics.median(out)


def launch_costs(device: str, n: int) -> list[tuple[str, float]]:
    dev = torch.device(device)
    x = torch.zeros(16, device=dev)
    rows = [("torch op, x.add_(1)", _host_us(lambda: x.add_(1), device, n))]
    two = _two_args if device == "cuda" else InterpretedFunction(_two_args_fn)
    rows.append(("Triton kernel, 2 arguments", _host_us(lambda: two[(1,)](x, 16, BLOCK=16), device, n)))
    B, H, dt = 8, 256 if device == "cuda" else 16, torch.bfloat16
    p = tk.Plan(B, H, dt, dev, mode="stepwise")
    run, _, prep = tk._random_launch("fwd", p, 1, B, H, dt, dev, torch.Generator(device=dev).manual_seed(0))
    prep()
    n_args = len(tk._compiled("fwd", p.interpret).arg_names)
    rows.append((f"our forward kernel, one step-wise launch ({n_args} parameters)", _host_us(run, device, n)))
    m = torch.nn.LSTM(H, H).to(device=dev, dtype=dt)
    xs = torch.randn(1, B, H, device=dev, dtype=dt)
    h0 = torch.zeros(1, B, H, device=dev, dtype=dt)
    kw = dict(bias=True, num_layers=1, dropout=0.0, training=False, bidirectional=False, batch_first=False)

    def whole():
        with torch.no_grad():
            tk.lstm(xs, (h0, h0), m._flat_weights, **kw, mode="persistent", tiles=(16, 32 if device == "cuda" else 16))

    rows.append(("triton_lstm.lstm, T=1, no grad (the whole call)", _host_us(whole, device, max(n // 4, 1))))
    return rows


def _host_ops(prof, iters: int, top: int = 5) -> str:
    """The host events with the most self time, microseconds per call: aten ops, autograd nodes, and on a GPU the
    CUDA runtime calls (a synchronisation, an allocation or a module load that stalls the call shows here)."""
    # (not the harness's own cudaDeviceSynchronize after the profiled calls: it waits for them all at once)
    evs = [e for e in prof.key_averages() if e.self_cpu_time_total > 0 and e.key != "cudaDeviceSynchronize"]
    evs.sort(key=lambda e: -e.self_cpu_time_total)
    return "; ".join(f"{e.key[:40]} {e.self_cpu_time_total / iters:.0f} ({e.count / iters:g}x)" for e in evs[:top])


def _kernels(prof) -> list[tuple[str, float]]:
    """(name, device microseconds) of every GPU kernel / memcpy / memset event in a profile."""
    out = []
    for e in prof.events():
        if e.device_type != torch.autograd.DeviceType.CUDA:
            continue
        out.append((e.name, float(e.device_time_total)))  # (a device event: its own duration)
    return out


def profile_case(T: int, B: int, H: int, dname: str, plan: dict, device: str, iters: int,
                 prof_iters: int = 3) -> list[dict]:  # fmt: skip
    calls = one_layer_calls(T, B, H, DTYPES[dname], device)
    rows = []
    acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if device == "cuda" else [])
    named = [("ours fwd", lambda: calls["ours_fwd"](**plan)), ("cuDNN fwd", calls["cudnn_fwd"]),
             ("ours fwd, with grad", lambda: calls["ours_fwd_grad"](**plan)),
             ("cuDNN fwd, with grad", calls["cudnn_fwd_grad"]),
             ("ours fwd+bwd", lambda: calls["ours_fb"](**plan)), ("cuDNN fwd+bwd", calls["cudnn_fb"])]
    for name, fn in named:
        host: dict = {}
        wall = time_ms(fn, device, 2, iters, host, "call")
        if device == "cuda":
            torch.cuda.synchronize()
        with torch.profiler.profile(activities=acts) as prof:  # (fewer calls than timed: events cost host time)
            for _ in range(prof_iters):
                fn()
            if device == "cuda":
                torch.cuda.synchronize()
        ks = _kernels(prof)
        by: dict[str, float] = {}
        for k, us in ks:
            by[k] = by.get(k, 0.0) + us / prof_iters
        top = sorted(by.items(), key=lambda kv: -kv[1])[:4]
        rows.append(dict(case=f"({T}, {B}, {H}) {dname}", call=name, wall=wall, host=host["call"],
                         busy=sum(by.values()) / 1e3, n=len(ks) / prof_iters, host_top=_host_ops(prof, prof_iters),
                         top="; ".join(f"{k[:48]} {v:.0f}" for k, v in top)))  # fmt: skip
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("gpu_profile.md"))
    ap.add_argument("--dry-run", action="store_true", help="CPU interpreter, tiny shapes: proves the script runs")
    ap.add_argument("--iters", type=int, default=10)
    args = ap.parse_args(argv)
    device = "cpu" if args.dry_run else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no GPU here: use --dry-run")
    tk.SYNC_CHECK = False  # a user's call: no host synchronisation after the kernels
    if device == "cuda":  # every kernel this script launches, compiled in parallel first (a fresh machine's Triton
        # cache is empty, and one process compiling them one by one could spend most of the session's 70 s)
        tasks = [(T, B, H, d, [plan], (), True) for (T, B, H, d), plan in PLANS.items()]
        tasks += [(1, 8, 256, "bf16", [{"mode": "stepwise"}], (), True),
                  (1, 8, 256, "bf16", [{"mode": "persistent", "tiles": (16, 32)}], (), True)]  # fmt: skip
        _compile_in_workers(tasks, min(15, os.cpu_count() or 1), "profile plans")
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU (Triton interpreter, DRY RUN: times mean nothing)"
    cmd = "python benchmarks/gpu_profile.py " + " ".join(sys.argv[1:] if argv is None else argv)
    lines = [f"# Where a call's time goes: {name}, torch {torch.__version__}, triton {triton.__version__}", "",
             f"Command: `{cmd}`  ", f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", "",
             "## Launch cost: host microseconds per launch, back to back (median of 5 rounds)", "",
             "| what | host us per launch |", "|---|---|"]  # fmt: skip
    for what, us in launch_costs(device, 200 if device == "cuda" else 3):
        lines.append(f"| {what} | {us:.1f} |")
        args.out.write_text("\n".join(lines) + "\n")
    lines += ["", "## One call: wall (CUDA events, no profiler), host time of the call, GPU time of its kernels "
              "(profiler), ms; kernels per call; the longest kernels (us per call); the host events with the most "
              "self time (us per call, and how many a call)", "",
              "| shape, dtype | call | wall | host | kernels busy | GPU waiting (wall - busy) | kernels per call "
              "| longest kernels | longest host events |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for (T, B, H, dname), plan in (DRY if args.dry_run else PLANS).items():
        try:
            rows = profile_case(T, B, H, dname, plan, device, args.iters if device == "cuda" else 1)
        except Exception as e:  # a failing case is a row, not the end of the run
            lines.append(f"| ({T}, {B}, {H}) {dname} | ERROR {type(e).__name__}: {str(e)[:150]} | | | | | | | |")
            continue
        for r in rows:
            lines.append(f"| {r['case']} | {r['call']} | {r['wall']:.3f} | {r['host']:.3f} | {r['busy']:.3f} | "
                         f"{r['wall'] - r['busy']:.3f} | {r['n']:.0f} | {r['top']} | {r['host_top']} |")  # fmt: skip
        args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
