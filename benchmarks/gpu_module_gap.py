"""On a GPU: where a routed ``lstmkit.nn.LSTM`` forward spends the time its cluster-kernel layer does not (issue 6).

Run 6 timed the cluster forward at (256, 16, 768) bf16 at 0.71 ms as a layer (``gpu_cluster.py``) and 1.57 ms
through ``lstmkit.nn.LSTM`` (``gpu_routed.py``), in two processes on two machines. This times, in one process,
at each shape: the layer without autograd (``cluster_lstm.lstm_forward``), ``cluster_lstm.lstm`` (the stack
``impl="auto"`` calls, under ``torch.no_grad()``), the module's forward under ``torch.no_grad()``, and cuDNN
(``torch.nn.LSTM``) in bf16 and fp16; then profiles the module's call (host events with the most self time,
and the GPU's busy time). Medians of 20 after 5 warm-ups, CUDA events.

    PYTHONPATH=src python benchmarks/gpu_module_gap.py --out gap.md      # on a GPU, about a minute
    PYTHONPATH=src python benchmarks/gpu_module_gap.py --dry-run --out /tmp/gap.md
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from lstmkit.kernels import cluster_lstm as cl
from lstmkit.kernels import route
from lstmkit.nn import LSTM

sys.path.insert(0, str(Path(__file__).parent))
from gpu import time_ms  # noqa: E402
from gpu_profile import _host_ops, _kernels  # noqa: E402

SHAPES = [(256, 16, 768), (1024, 8, 256)]


def one(T: int, B: int, H: int, device: str, iters: int) -> list[str]:
    torch.manual_seed(0)
    dt = torch.bfloat16
    m = LSTM(H, H, device=device, dtype=dt).eval()
    x = torch.randn(T, B, H, device=device, dtype=dt)
    h0 = torch.zeros(1, B, H, device=device, dtype=dt)
    w = [p.detach() for p in (m.weight_ih_l0, m.weight_hh_l0, m.bias_ih_l0, m.bias_hh_l0)]
    kw = dict(bias=True, num_layers=1, dropout=0.0, training=False, bidirectional=False, batch_first=False)
    calls = {
        "layer, no autograd (cluster_lstm.lstm_forward)": lambda: cl.lstm_forward(x, h0[0], h0[0].float(), *w,
                                                                                   exchange=cl.ROUTE_EXCHANGE),
        "cluster_lstm.lstm, no grad": lambda: cl.lstm(x, (h0, h0), w, **kw, exchange=cl.ROUTE_EXCHANGE),
        "routed entry (cluster_lstm.lstm_or_next), no grad": lambda: cl.lstm_or_next(x, (h0, h0), w, **kw),
        "lstmkit.nn.LSTM, no grad": lambda: m(x),
    }  # fmt: skip
    for dname, cdt in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        c = torch.nn.LSTM(H, H, device=device, dtype=cdt).eval()  # (inference: cuDNN's training forward otherwise)
        xc = x.to(cdt)
        calls[f"cuDNN {dname}"] = lambda c=c, xc=xc: c(xc)
    lines = []
    with torch.no_grad():
        for name, fn in calls.items():
            host: dict = {}
            ms = time_ms(fn, device, 5, iters, host, "h")
            lines.append(f"| ({T}, {B}, {H}) | {name} | {ms:.3f} | {host['h']:.3f} | |")
        acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if device == "cuda"
                                                         else [])  # fmt: skip
        with torch.profiler.profile(activities=acts) as prof:
            for _ in range(3):
                m(x)
            if device == "cuda":
                torch.cuda.synchronize()
        busy = sum(us for _, us in _kernels(prof)) / 3 / 1e3
        lines.append(f"| ({T}, {B}, {H}) | lstmkit.nn.LSTM, profiled | | | GPU busy {busy:.3f} ms a call; "
                     f"{_host_ops(prof, 3, top=8)} |")  # fmt: skip
    return lines


def _host_us(fn, device: str, reps: int = 100) -> float:
    """Median host microseconds of ``fn()`` alone (the device synchronised before each call, so no queue of earlier
    work slows a launch, and not timed)."""
    ts = []
    for _ in range(reps + 2):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1e6)
    return statistics.median(ts[2:])


def host_parts(T: int, B: int, H: int, device: str) -> list[str]:
    """The host time of each part of a routed forward, alone: which part of the call's host time (the "host ms"
    column above) is Python, which torch ops, which the driver's launch. Then cProfile of the module's forward
    (Python functions with the most own time, per call)."""
    import cProfile
    import ctypes
    import pstats

    torch.manual_seed(0)
    dt = torch.bfloat16
    m = LSTM(H, H, device=device, dtype=dt).eval()
    x = torch.randn(T, B, H, device=device, dtype=dt)
    h0, c0 = torch.zeros(B, H, device=device, dtype=dt), torch.zeros(B, H, device=device)
    w_ih, w_hh, b = m.weight_ih_l0.detach(), m.weight_hh_l0.detach(), m.bias_ih_l0.detach()
    gx = torch.nn.functional.linear(x, w_ih, b)
    ex = cl.ROUTE_EXCHANGE
    cfg = cl.config(B, H, dt, exchange=ex)
    y, hT, cT = torch.empty(T, B, H, device=device, dtype=dt), h0.clone(), c0.clone()
    args = cl.fwd_args(gx, w_hh, h0, c0, y, hT, cT)
    index = x.device.index or 0
    parts = {} if device != "cuda" else {  # (the CUDA-only parts: not in a dry run)
        "torch.cuda.get_device_capability": lambda: torch.cuda.get_device_capability(x.device),
        "cluster_lstm._make_current": lambda: cl._make_current(index),
        "torch.cuda.current_stream(dev).cuda_stream": lambda: torch.cuda.current_stream(x.device).cuda_stream,
        "cluster_lstm._raw_stream": lambda: cl._raw_stream(index),
    }
    parts |= {
        "cluster_lstm.kernel_units (remembered)": lambda: cl.kernel_units(B, H, dt, None, (), ex, False),
        "cluster_lstm.config (remembered)": lambda: cl.config(B, H, dt, exchange=ex),
        "cluster_lstm._c_args (22 arguments)": lambda: cl._c_args(args),
        "torch.empty (T, B, H)": lambda: torch.empty(T, B, H, device=device, dtype=dt),
        "torch.empty_like(h0) (h_T's buffer)": lambda: torch.empty_like(h0),
        "F.linear (the input GEMM)": lambda: torch.nn.functional.linear(x, w_ih, b),
        "cluster_lstm._run (the launch, Python and driver)": lambda: cl._run(cfg, "fwd", args, B),
        "cluster_lstm.forward (gx given)": lambda: cl.forward(gx, h0, c0, w_hh, exchange=ex),
        "cluster_lstm.lstm_forward (the layer, GEMM too)": lambda: cl.lstm_forward(x, h0, c0, w_ih, w_hh, b, b,
                                                                                   exchange=ex),
        "lstmkit.nn.LSTM forward": lambda: m(x),
    }  # fmt: skip
    if device == "cuda":  # the driver's launch alone, everything prepared
        cl._run(cfg, "fwd", args, B)  # (its launch record, whatever ran before)
        torch.cuda.synchronize()
        cu_fn, smem, threads = cl._LAUNCHES[(cfg.key(), "fwd", index)]
        vals = cl._c_args(args)
        arr = (ctypes.c_void_p * len(vals))(*[ctypes.addressof(v) for v in vals])
        stream, drv = ctypes.c_void_p(cl._raw_stream(index)), cl._driver()
        grid = -(-B // cfg.batch_rows)
        launch = lambda: drv.cuLaunchKernel(cu_fn, cfg.C, grid, 1, threads, 1, 1, smem, stream, arr, None)  # noqa: E731
        if launch() != 0:
            raise RuntimeError("cuLaunchKernel, called as cluster_lstm._run calls it, failed")
        parts["cuLaunchKernel alone (driver, arguments prepared)"] = launch
    lines = []
    with torch.no_grad():
        for name, part in parts.items():
            lines.append(f"| ({T}, {B}, {H}) | {name} | {_host_us(part, device, 100 if device == 'cuda' else 2):.1f} |")
        prof, n = cProfile.Profile(), 50 if device == "cuda" else 2
        if device == "cuda":
            torch.cuda.synchronize()
        prof.enable()
        for _ in range(n):
            m(x)
            if device == "cuda":
                torch.cuda.synchronize()  # (each call on an idle GPU, as time_ms runs it)
        prof.disable()
    st = pstats.Stats(prof)
    top = sorted(st.stats.items(), key=lambda kv: -kv[1][2])[:14]  # (own time)
    prof_lines = [f"{own / n * 1e6:8.1f} us own {cum / n * 1e6:8.1f} us with callees  {nc / n:5.1f}x  "
                  f"{Path(f).name}:{ln}({fn})" for (f, ln, fn), (_, nc, own, cum, _) in top]  # fmt: skip
    return lines, prof_lines


def main(argv=None) -> int:
    route.TUNE = False  # (impl="auto"'s fixed policy, which this script measures; the timed routing: gpu_route.py)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("gpu_module_gap.md"))
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny: the plumbing (the emulation is not timed)")
    ap.add_argument("--iters", type=int, default=20)
    args = ap.parse_args(argv)
    device = "cpu" if args.dry_run else "cuda"
    where = torch.cuda.get_device_name() if device == "cuda" else "CPU, DRY RUN"
    lines = [f"# A routed module's forward against its layer: {where}, torch {torch.__version__}", "",
             f"Command: `python benchmarks/gpu_module_gap.py {' '.join(sys.argv[1:] if argv is None else argv)}`  ",
             f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", "",
             "| shape | call | ms (CUDA events) | host ms of the call | profile |", "|" + "---|" * 5]  # fmt: skip
    shapes = [(4, 2, 16)] if args.dry_run else SHAPES
    for T, B, H in shapes:
        try:
            lines += one(T, B, H, device, 2 if args.dry_run else args.iters)
        except Exception as e:  # a failing shape is a row
            lines.append(f"| ({T}, {B}, {H}) | ERROR {type(e).__name__}: {str(e)[:200]} | | | |")
        args.out.write_text("\n".join(lines) + "\n")
    lines += ["", "## The parts of a routed forward's host time, each alone (median host us; "
              "the device idle before each call)", "", "| shape | part | host us |", "|---|---|---|"]
    profiles = []
    for T, B, H in [(4, 2, 64)] if args.dry_run else shapes:  # (a dry run: H = 64, the mbarrier's least)
        try:
            rows, prof = host_parts(T, B, H, device)
            lines += rows
            profiles += ["", f"cProfile of lstmkit.nn.LSTM's forward at ({T}, {B}, {H}), per call "
                         "(Python functions with the most own time; a ctypes call's time is its caller's):", "",
                         "```", *prof, "```"]  # fmt: skip
        except Exception as e:  # noqa: BLE001
            lines.append(f"| ({T}, {B}, {H}) | ERROR {type(e).__name__}: {str(e)[:200]} | |")
        args.out.write_text("\n".join(lines + profiles) + "\n")
    lines += profiles
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
