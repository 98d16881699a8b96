"""On a GPU: ``impl="auto"``'s timed routing (``kernels/route.py``) at the issue's five shapes, fp32, bf16 and fp16.

``lstmkit.nn.LSTM(H, H)`` (one layer, ``impl="auto"``) is called once in training mode and once under
``torch.no_grad()``; each first call times the paths that cover it (the cluster kernels, the Triton kernels,
cuDNN) on its own tensors and keeps the fastest (a call of the static policy's choice unless another is 5%
faster). The table gives, per shape, dtype and kind (forward / forward+backward): each candidate's median
milliseconds as the router measured them (one process, interleaved: the ratios against cuDNN are measured in one
run), the static policy's choice, the router's choice, the first call's wall time (the timing's cost, with any
compile and plan tuning), and the module afterwards against ``torch.nn.LSTM`` (cuDNN) in the same dtype, medians
of 10 after 3 warm-ups with CUDA events (``gpu.time_ms``); and the module's worst relative error against float64
cuDNN over the output and every gradient (bounds as ``gpu.py``'s: fp32 1e-5 with TF32 off, 16-bit 1e-2).

Rows run in the order of ``ROWS`` (what the fixed policy leaves to measure first: fp32 at (128, 256, 1024),
where cuDNN trained faster in runs 6 and 7; the host-bound bf16 forward at (35, 20, 650); fp16 at (256, 16, 768)
and (35, 20, 650)); ``--budget-s`` stops starting rows. In the session script it runs after ``gpu.py``, whose
workers compiled every Triton plan the Triton kernels' tuning times (Triton's disk cache), and appends to
``gpu_routed.md`` (``--append``: the device tool brings back at most 8 files).

    PYTHONPATH=src python benchmarks/gpu_route.py --out gpu_route.md            # on a GPU, about a minute
    PYTHONPATH=src python benchmarks/gpu_route.py --dry-run --out /tmp/r.md     # CPU, plumbing only
"""

from __future__ import annotations

import argparse
import sys
import time
from functools import partial
from pathlib import Path

import torch

from lstmkit import kernels
from lstmkit.kernels import route
from lstmkit.nn import LSTM

sys.path.insert(0, str(Path(__file__).parent))
from gpu import TOL, time_ms  # noqa: E402  (the timings' clock, the checks' bounds)

F32, BF16, F16 = torch.float32, torch.bfloat16, torch.float16
#: (T, B, H, dtype), in the order they are timed
ROWS = [(128, 256, 1024, F32), (35, 20, 650, BF16), (256, 16, 768, F16), (35, 20, 650, F16),
        (35, 20, 650, F32), (1024, 8, 256, F32), (256, 16, 768, F32), (100, 1, 512, F32),
        (1024, 8, 256, F16), (100, 1, 512, F16), (128, 256, 1024, F16), (128, 256, 1024, BF16),
        (1024, 8, 256, BF16), (256, 16, 768, BF16), (100, 1, 512, BF16)]  # fmt: skip
DRY_ROWS = [(3, 2, 8, F32), (3, 2, 8, BF16)]
_NAMES = {F32: "fp32", BF16: "bf16", F16: "fp16"}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().double() - b.detach()).norm() / b.detach().norm().clamp_min(1e-300))


def case(T: int, B: int, H: int, dtype: torch.dtype, device: str, warmup: int, iters: int) -> dict:
    torch.manual_seed(0)
    ref = torch.nn.LSTM(H, H, device=device, dtype=torch.float64)
    m = LSTM(H, H, device=device, dtype=dtype).train()  # impl="auto"
    m.load_state_dict(ref.state_dict())
    peer = torch.nn.LSTM(H, H, device=device, dtype=dtype)
    peer.load_state_dict(ref.state_dict())
    x64 = torch.randn(T, B, H, device=device, dtype=torch.float64)
    g64 = torch.randn(T, B, H, device=device, dtype=torch.float64)
    x = x64.to(dtype)
    before = len(route.decisions())
    # the training kind: its first call is timed by the router (and checked against float64 cuDNN)
    xg = x.clone().requires_grad_()
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    y, _ = m(xg)
    (y.double() * g64).sum().backward()
    if device == "cuda":
        torch.cuda.synchronize()
    first_fb = (time.perf_counter() - t0) * 1e3
    x64g = x64.clone().requires_grad_()
    y64, _ = ref(x64g)
    (y64 * g64).sum().backward()
    err = max([_rel(y, y64), _rel(xg.grad, x64g.grad)] + [_rel(p.grad, q.grad) for p, q in
                                                           zip(m.parameters(), ref.parameters())])  # fmt: skip
    # the forward kind: inference (evaluation mode, no gradient), as gpu.py times cuDNN's forward
    m.eval()
    t0 = time.perf_counter()
    with torch.no_grad():
        m(x)
    if device == "cuda":
        torch.cuda.synchronize()
    first_fwd = (time.perf_counter() - t0) * 1e3
    rows = route.decisions()[before:]

    def fwd(mod):
        with torch.no_grad():
            mod(x)

    def fb(mod):
        y, _ = mod(xg)
        y.sum().backward()

    mods = (("auto", m), ("cudnn", peer))
    for _, mod in mods:  # inference in evaluation mode (else cuDNN runs its training forward even under no_grad)
        mod.eval()
    t_fwd = {name: time_ms(partial(fwd, mod), device, warmup, iters) for name, mod in mods}
    for _, mod in mods:
        mod.train()
    times = {name: (t_fwd[name], time_ms(partial(fb, mod), device, warmup, iters)) for name, mod in mods}
    return dict(shape=(T, B, H), dtype=_NAMES[dtype], err=err, ok=err <= TOL[_NAMES[dtype]],
                first=(first_fwd, first_fb), decisions=rows, times=times)  # fmt: skip


def _decision(rows: list[dict], grad: bool) -> dict | None:
    return next((r for r in rows if r["grad"] == grad), None)


def _cell(ms: dict, name: str) -> str:
    return f"{ms[name]:.3g}" if name in ms else "-"


def render_row(r: dict) -> list[str]:
    if "error" in r:
        return [f"| {r['shape']} | {r['dtype']} | | ERROR {r['error']} | | | | | | | | | | |"]
    out = []
    for kind, grad, i in (("fwd", False, 0), ("fwd+bwd", True, 1)):
        d = _decision(r["decisions"], grad)
        ms = d["ms"] if d else {}
        cell = partial(_cell, ms)
        auto, cudnn = r["times"]["auto"][i], r["times"]["cudnn"][i]
        agree = ", ".join(f"{n} {v:.1e}" for n, v in (d or {}).get("rel_diff", {}).items()) or "-"
        out.append(f"| {r['shape']} | {r['dtype']} | {kind} | {cell('cluster')} | {cell('triton')} "
                   f"| {cell('native')} | {d['static'] if d else '(not timed)'} | {d['chosen'] if d else 'native'} "
                   f"| {r['first'][i]:.0f} | {auto:.3g} | {cudnn:.3g} | {cudnn / auto:.2f}x "
                   f"| {agree} | {r['err']:.2e} {'yes' if r['ok'] else 'NO'} |")  # fmt: skip
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("gpu_route.md"))
    ap.add_argument("--append", action="store_true", help="append the section to --out instead of replacing it")
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny, the Triton interpreter: proves the plumbing")
    ap.add_argument("--budget-s", type=float, default=50.0, help="start no row after this many seconds")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iters", type=int, default=10)
    args = ap.parse_args(argv)
    start = time.monotonic()
    device = "cpu" if args.dry_run else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no GPU here: use --dry-run")
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # the fp32 bound (1e-5) is without TF32
        torch.backends.cudnn.allow_tf32 = False
    else:  # the CPU: the router times native against the Triton kernels in the interpreter (plumbing only)
        select = kernels.select_lstm
        kernels.select_lstm = lambda impl, variants=(), **kw: route.lstm if not variants else select(impl, variants,
                                                                                                      **kw)  # fmt: skip
        route._why_not_time = lambda x: None if route.TUNE else "off"
        route._covers = lambda name, *a: name != "cluster"
    where = torch.cuda.get_device_name() if device == "cuda" else "CPU, DRY RUN (the interpreter; times mean nothing)"
    cmd = "python benchmarks/gpu_route.py " + " ".join(sys.argv[1:] if argv is None else argv)
    lines = [f"# impl='auto' timed routing (kernels/route.py): {where}, torch {torch.__version__}", "",
             f"Command: `{cmd}`  ", f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. One layer, input "
             "size = H. cluster / triton / cuDNN: the router's medians of its first call (ms); first call: its wall "
             "time (ms); module and cuDNN: medians of 10 after 3 warm-ups (ms); speed-up = cuDNN / module; error: "
             "worst over output and gradients against float64 cuDNN; vs cuDNN: how far each path's output (and "
             "gradients) landed from cuDNN's in the router's own check (a path past its bound is never chosen).", "",
             "| shape | dtype | kind | cluster | triton | cuDNN | static choice | chosen | first call | module "
             "| torch.nn.LSTM | speed-up | vs cuDNN | error, ok |", "|" + "---|" * 14]  # fmt: skip
    head = args.out.read_text() + "\n" if args.append and args.out.exists() else ""
    results = []
    for T, B, H, dtype in DRY_ROWS if args.dry_run else ROWS:
        if time.monotonic() - start > args.budget_s:
            lines.append(f"| {(T, B, H)} | {_NAMES[dtype]} | time budget ({args.budget_s:.0f} s) spent: this row "
                         "and later not timed | | | | | | | | | | | |")  # fmt: skip
            break
        try:
            r = case(T, B, H, dtype, device, args.warmup, args.iters)
        except Exception as e:  # a failing row is a row, not the end of the run
            r = dict(shape=(T, B, H), dtype=_NAMES[dtype], error=f"{type(e).__name__}: {str(e)[:200]}")
        results.append(r)
        lines += render_row(r)
        args.out.write_text(head + "\n".join(lines) + "\n")
        print("\n".join(lines[-2:]), flush=True)
    args.out.write_text(head + "\n".join(lines) + "\n")
    return 0 if all("error" not in r and r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
