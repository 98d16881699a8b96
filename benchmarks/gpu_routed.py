"""On a GPU: what ``impl="auto"`` does since the cluster kernels are routed (issue 6, after run 6).

``lstmkit.nn.LSTM(H, H, impl="auto")``, one layer, at the issue's small-batch shapes in bfloat16 and float16
(where ``cluster_lstm.ROUTE`` sends calls to the thread-block-cluster kernels, or float16 above
``ROUTE_FP16_MAX_H`` units to cuDNN), plain, with the six element-wise variants at once, and with layer norm
on the cluster kernels (``cluster_lstm.ROUTE_LN`` on for the row) and on the Triton kernels (its recurrent
gains at ``gpu_cluster.LN_HH_SCALE``, where the module is not chaotic over these lengths): which kernel ran
(the cluster kernels' layer calls counted), the worst relative error against the same module in float64 over
the output, states and every gradient (beside torch's own path in the same dtype: cuDNN for the plain LSTM,
the PyTorch loop for variants), and the time of a forward (no grad) and of a forward+backward against
``torch.nn.LSTM`` (cuDNN) in the same dtype and in float16 (goal 3). Medians of 10 after 3 warm-ups, CUDA
events. Triton's plan tuning is off (``LSTMKIT_TRITON_TUNE=0``): the routed calls do not use it.

    PYTHONPATH=src python benchmarks/gpu_routed.py --out gpu_routed.md     # on a GPU, about 2 min
    PYTHONPATH=src python benchmarks/gpu_routed.py --dry-run --out /tmp/r.md   # CPU, plumbing only
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("LSTMKIT_TRITON_TUNE", "0")  # (before lstmkit's kernels are imported)

import torch  # noqa: E402

from lstmkit.kernels import cluster_lstm as cl  # noqa: E402
from lstmkit.kernels import route  # noqa: E402
from lstmkit.nn import LSTM  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from gpu import time_ms  # noqa: E402  (the timings' clock)
from gpu_cluster import LN_HH_SCALE  # noqa: E402  (layer norm's recurrent gains, as the variant checks set them)

SHAPES = [(1024, 8, 256), (256, 16, 768), (100, 1, 512)]
DRY_SHAPES = [(4, 2, 16)]
#: first, (35, 20, 650), the small-batch shape outside ROUTE_MAX_BATCH: layer norm in bf16, routed since
#: ROUTE_LN_MAX_BATCH (20 rows, 650 units padded to 768), not yet timed there, beside the Triton kernels' layer norm
#: (run 6: 1.51x / 1.32x cuDNN bf16's plain forward / training); and the plain LSTM on the cluster kernels with the
#: routing's limits lifted (bf16 beside impl="auto"'s Triton kernels; fp16 beside cuDNN, whose timings every row
#: has), which decides ROUTE_MAX_BATCH and ROUTE_FP16_MAX_H there (run 7 timed the layer alone once: fp16 1.52x /
#: 1.15x cuDNN fp16)
LN_FIRST = [(35, 20, 650)]
DRY_LN_FIRST = [(4, 3, 20)]
SIX = dict(peephole=True, coupled_input_forget=True, cell_clip=3.0, recurrent_dropout=0.25, zoneout=(0.1, 0.05),
           weight_drop=0.5)  # fmt: skip
TOL = {torch.bfloat16: 1e-2, torch.float16: 1e-2}
LN = dict(layer_norm=True)
#: (T, B, H, dtype, device) -> cuDNN's (forward, forward+backward) ms, measured once per shape and dtype
_CUDNN: dict = {}
#: the module option sets, each a row: (name, options, cluster_lstm's routing settings for the row)
PLAIN = ("plain", {}, {})
LN_ROUTED = ("layer norm, routed (ROUTE_LN on)", LN, {"ROUTE_LN": True})
LN_TRITON = ("layer norm, Triton (ROUTE_LN off)", LN, {"ROUTE_LN": False})
LIFTED = ("plain, routed past the limits (32 rows, 768 units)", {}, {"ROUTE_MAX_BATCH": 32, "ROUTE_FP16_MAX_H": 768})
LN_MERGED = ("layer norm, routed, merged forward (ROUTE_LN_MERGE on)", LN, {"ROUTE_LN": True, "ROUTE_LN_MERGE": True})
MODULES = [PLAIN, ("six element-wise", SIX, {}), LN_ROUTED, LN_TRITON]
#: the rows at LN_FIRST's shapes: (dtype, module)
FIRST = [(torch.bfloat16, LN_ROUTED), (torch.bfloat16, LN_TRITON), (torch.bfloat16, PLAIN),
         (torch.bfloat16, LIFTED), (torch.float16, LIFTED)]
#: next, layer norm through the merged forward (cluster_lstm.ROUTE_LN_MERGE; config(merge=True): up to 512 units),
#: to set beside the routed layer-norm rows of the same shapes further down
MERGED = [((1024, 8, 256), torch.bfloat16, LN_MERGED), ((100, 1, 512), torch.bfloat16, LN_MERGED)]
DRY_MERGED = [((4, 2, 16), torch.bfloat16, LN_MERGED)]


def _grads(m, x, masks):
    m.zero_grad()
    xl = x.detach().clone().requires_grad_()
    out, (h, c) = m(xl, masks=masks) if masks is not None else m(xl)
    g = torch.Generator(device=x.device).manual_seed(1)
    w = torch.randn(out.shape, generator=g, device=x.device, dtype=torch.float64)
    ((out.double() * w).sum() + h.double().sum() - c.double().sum()).backward()
    return [out, h, c, xl.grad] + [p.grad for p in m.parameters()]


def _worst(got, want) -> float:
    return max(float((a.detach().double() - b.detach()).norm() / b.detach().norm().clamp_min(1e-300))
               for a, b in zip(got, want))  # fmt: skip


def case(T: int, B: int, H: int, dtype: torch.dtype, name: str, opts: dict, routing: dict, device: str, warmup: int,
         iters: int) -> dict:  # fmt: skip
    """One row: the module with ``opts`` under cluster_lstm's routing settings ``routing`` (restored after)."""
    before = {k: getattr(cl, k) for k in routing}
    for k, v in routing.items():
        setattr(cl, k, v)
    try:
        return _case(T, B, H, dtype, name, opts, device, warmup, iters)
    finally:
        for k, v in before.items():
            setattr(cl, k, v)


def _case(T: int, B: int, H: int, dtype: torch.dtype, name: str, opts: dict, device: str, warmup: int,
          iters: int) -> dict:  # fmt: skip
    torch.manual_seed(0)
    peer_impl = "loop" if opts else "native"
    ref = LSTM(H, H, impl=peer_impl, device=device, dtype=torch.float64, **opts).train()
    with torch.no_grad():  # (at 1, over 100-1024 steps the module is chaotic: no dtype can be checked, LN_HH_SCALE)
        for n, p in ref.named_parameters():
            if "layernorm_hh" in n:
                p.mul_(LN_HH_SCALE)
    m = LSTM(H, H, device=device, dtype=dtype, **opts).train()  # impl="auto"
    peer = LSTM(H, H, impl=peer_impl, device=device, dtype=dtype, **opts).train()
    m.load_state_dict(ref.state_dict())
    peer.load_state_dict(ref.state_dict())
    x = torch.randn(T, B, H, device=device, dtype=torch.float64)
    masks = ref.sample_masks(B, T, like=x) if opts else None
    mk = {k: {n: t.to(dtype) for n, t in v.items()} for k, v in masks.items()} if masks else None
    calls = {"n": 0}
    real = cl._recurrence

    def counted(*a, **k):
        calls["n"] += 1
        return real(*a, **k)

    cl._recurrence = counted
    try:
        err = _worst(_grads(m, x.to(dtype), mk), want := _grads(ref, x, masks))
        n_cluster = calls["n"]
        peer_err = _worst(_grads(peer, x.to(dtype), mk), want)
        # a float64 value the dtype cannot hold cannot come out finite (layer norm over 1024 steps: the gradients
        # grow past float16's range, docs/gpu.md): NaN then passes where torch's own path is not finite either
        beyond = max(float(t.detach().abs().max()) for t in want) > float(torch.finfo(dtype).max)
        xd = x.to(dtype)
        xg = xd.clone().requires_grad_()

        def fwd():
            with torch.no_grad():
                return m(xd)

        def fb():
            y, _ = m(xg)
            y.sum().backward()

        # the plain module's forward as inference, as cuDNN's is timed (evaluation mode: the fixed policy sends some
        # plain calls to cuDNN itself); a variant module's stays in training mode, its masks drawn and applied
        # (stricter than inference, where dropout and zoneout are off)
        m.train(bool(opts))
        t_fwd = time_ms(fwd, device, warmup, iters)
        m.train()
        t_fb = time_ms(fb, device, warmup, iters)
    finally:
        cl._recurrence = real
    cudnn = {}
    for dt in dict.fromkeys([dtype, torch.float16]):
        if (T, B, H, dt, device) in _CUDNN:  # (timed once per shape and dtype: each module's rows share it)
            cudnn[dt] = _CUDNN[T, B, H, dt, device]
            continue
        base = torch.nn.LSTM(H, H, device=device, dtype=dt)
        base_inf = copy.deepcopy(base).eval()  # (inference: else cuDNN's training forward even under no_grad)
        xb = torch.randn(T, B, H, device=device, dtype=dt)
        xbg = xb.clone().requires_grad_()

        def bf(base=base_inf, xb=xb):
            with torch.no_grad():
                return base(xb)

        def bfb(base=base, xbg=xbg):
            y, _ = base(xbg)
            y.sum().backward()

        cudnn[dt] = _CUDNN[T, B, H, dt, device] = (time_ms(bf, device, warmup, iters),
                                                   time_ms(bfb, device, warmup, iters))
    ok = err <= max(TOL[dtype], 1.5 * peer_err) or (err != err and peer_err != peer_err and beyond)
    return dict(shape=(T, B, H), dtype=str(dtype).replace("torch.", ""), module=name, cluster_calls=n_cluster,
                err=err, peer_err=peer_err, ok=ok, fwd=t_fwd, fb=t_fb, cudnn=cudnn[dtype],
                cudnn16=cudnn[torch.float16])  # fmt: skip


def main(argv=None) -> int:
    route.TUNE = False  # (impl="auto"'s fixed policy, which this script measures; the timed routing: gpu_route.py)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("gpu_routed.md"))
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny, the CPU's kernels: proves the script runs")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iters", type=int, default=10)
    args = ap.parse_args(argv)
    device = "cpu" if args.dry_run else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no GPU here: use --dry-run")
    where = torch.cuda.get_device_name() if device == "cuda" else "CPU, DRY RUN (the CPU's kernels; times mean nothing)"
    cmd = "python benchmarks/gpu_routed.py " + " ".join(sys.argv[1:] if argv is None else argv)
    lines = [f"# impl='auto' with the cluster kernels routed: {where}, torch {torch.__version__}", "",
             f"Command: `{cmd}`  ", f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
             f"cluster_lstm.ROUTE={cl.ROUTE}, exchange {cl.ROUTE_EXCHANGE}, at most {cl.ROUTE_MAX_BATCH} rows "
             f"(layer norm {cl.ROUTE_LN_MAX_BATCH}), "
             f"float16 at most {cl.ROUTE_FP16_MAX_H} units. Times in ms; speed-up = cuDNN / ours.", "",
             "| shape | dtype | module | cluster-kernel calls | worst rel. error vs float64 | torch's own in this "
             "dtype | ok | ours fwd | cuDNN fwd | speed-up | ours fwd+bwd | cuDNN fwd+bwd | speed-up "
             "| vs cuDNN fp16 fwd / fwd+bwd |", "|" + "---|" * 14]  # fmt: skip
    rows = []
    shapes = DRY_SHAPES if args.dry_run else SHAPES
    rows_todo = [(s, dtype, m) for s in (DRY_LN_FIRST if args.dry_run else LN_FIRST) for dtype, m in FIRST]
    rows_todo += DRY_MERGED if args.dry_run else MERGED
    rows_todo += [(s, dtype, m) for s in shapes for dtype in (torch.bfloat16, torch.float16) for m in MODULES]
    for (T, B, H), dtype, (name, opts, routing) in rows_todo:
        try:
            r = case(T, B, H, dtype, name, opts, routing, device, args.warmup, args.iters)
        except Exception as e:  # a failing case is a row, not the end of the run
            r = dict(shape=(T, B, H), dtype=str(dtype), module=name, error=str(e)[:200])
        rows.append(r)
        if "error" in r:
            lines.append(f"| {r['shape']} | {r['dtype']} | {r['module']} | ERROR {r['error']} "
                         "| | | | | | | | | | |")  # fmt: skip
        else:
            (cf, cb), (hf, hb) = r["cudnn"], r["cudnn16"]
            lines.append(f"| {r['shape']} | {r['dtype']} | {r['module']} | {r['cluster_calls']} "
                         f"| {r['err']:.2e} | {r['peer_err']:.2e} | {'yes' if r['ok'] else 'NO'} "
                         f"| {r['fwd']:.3g} | {cf:.3g} | {cf / r['fwd']:.2f}x | {r['fb']:.3g} | {cb:.3g} "
                         f"| {cb / r['fb']:.2f}x | {hf / r['fwd']:.2f}x / {hb / r['fb']:.2f}x |")  # fmt: skip
        args.out.write_text("\n".join(lines) + "\n")
        print(lines[-1], flush=True)
    # a dry run's 16-bit rows at 16 units: too few values for the bound (plumbing); errors still fail it
    return 0 if all(("error" not in r) and (r["ok"] or args.dry_run) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
