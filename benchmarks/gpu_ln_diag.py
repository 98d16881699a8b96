"""On a GPU: where the Triton layer-norm kernel's bf16 error on the user's path comes from (issue 6, goal 5).

Runs 5 and 6 measured ``gpu_user_path.py``'s layer-norm case in bf16 (2 layers, both directions, four other
variants, ``lengths=``) at 0.93 (T = 40) and 0.87 (T = 10) from float64, where torch's own bf16 loop is 0.57
and 0.18; run 5 found that error the same for every launch plan and both exchanges of the row statistics. This
asks the GPU whether the gap is there at one step (a defect: at T = 1 nothing has had time to amplify) or grows
with T (rounding the module amplifies), which output or gradient carries it, and which part of the case it
needs: one layer, one direction, no other variant, no lengths, T = 1 and 10; then the user-path module at
T = 10, with layer norm's recurrent gains halved (a well-conditioned module), and without each of its parts in
turn. Each row: relative error of every output and gradient against the same module in float64 (the
pure-torch loop), for the Triton kernels (``impl="triton"``) and torch's loop in bf16, and the tensor where
ours is worst. Run 7's answers: docs/gpu.md. ``--save``: the user path's case at gains 1, for
``benchmarks/ln_case_replay.py`` (the same numbers through Triton's interpreter on a CPU).

    PYTHONPATH=src python benchmarks/gpu_ln_diag.py --out ln_diag.md            # on a GPU, seconds
    PYTHONPATH=src python benchmarks/gpu_ln_diag.py --dry-run --out /tmp/d.md   # CPU (its kernels): plumbing only
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from lstmkit.kernels import triton_lstm as tk
from lstmkit.nn import LSTM

FOUR = dict(peephole=True, zoneout=(0.1, 0.05), recurrent_dropout=0.25, weight_drop=0.3)
USER = "user path"
CASES = [  # (name, module options besides layer norm, layers, bidirectional, T, lengths, g_hh scale)
    ("LN only, 1 layer", {}, 1, False, 1, False, 1.0),
    ("LN only, 1 layer", {}, 1, False, 10, False, 1.0),
    (USER + ": LN + the four, 2 layers, both directions, lengths=", FOUR, 2, True, 10, True, 1.0),
    (USER + ", layer norm's recurrent gains halved", FOUR, 2, True, 10, True, 0.5),
    (USER + " without peepholes", {k: v for k, v in FOUR.items() if k != "peephole"}, 2, True, 10, True, 1.0),
    (USER + " without zoneout", {k: v for k, v in FOUR.items() if k != "zoneout"}, 2, True, 10, True, 1.0),
    (USER + " without recurrent dropout", {k: v for k, v in FOUR.items() if k != "recurrent_dropout"}, 2, True, 10,
     True, 1.0),
    (USER + " without weight drop", {k: v for k, v in FOUR.items() if k != "weight_drop"}, 2, True, 10, True, 1.0),
    (USER + " without lengths=", FOUR, 2, True, 10, False, 1.0),
    (USER + ", 1 layer", FOUR, 1, True, 10, True, 1.0),
    (USER + ", one direction", FOUR, 2, False, 10, True, 1.0),
    ("LN + peepholes only, 1 layer", {"peephole": True}, 1, False, 10, False, 1.0),
    ("LN + zoneout only, 1 layer", {"zoneout": (0.1, 0.05)}, 1, False, 10, False, 1.0),
    ("LN, 1 layer, lengths=", {}, 1, False, 10, True, 1.0),
]
ORIG = tk.variant_layer


def forced(plan: dict):
    """``triton_lstm.variant_layer`` with ``plan`` given to every call (the module looks it up at each call)."""

    def f(*a, **k):
        return ORIG(*a, **{**k, **plan})

    f.per_layer, f.linear, f.fuses_input_norm, f.__name__ = True, None, True, "variant_layer"
    return f


def errors(opts: dict, layers: int, bidir: bool, T: int, lengths: bool, scale: float, dtype, device: str,
           H: int = 100, B: int = 6, save: Path | None = None) -> tuple[dict, dict]:  # fmt: skip
    """{tensor name: relative error vs float64} for ours (impl="triton" on a GPU, "auto" on the CPU) and the loop;
    ``scale``: layer norm's recurrent gains times this; ``save``: write the case (module options, float64
    parameters, input, masks, lengths, the loss's weights) and both error dicts there, for
    ``benchmarks/ln_case_replay.py`` to run the same numbers through Triton's interpreter on a CPU."""
    torch.manual_seed(0)
    kw = dict(num_layers=layers, bidirectional=bidir, batch_first=True, device=device, layer_norm=True, **opts)
    ref = LSTM(H, H, **kw, impl="loop", dtype=torch.float64).train()
    with torch.no_grad():
        for n, p in ref.named_parameters():
            if "layernorm_hh" in n:
                p.mul_(scale)
    mods = [LSTM(H, H, **kw, impl=impl, dtype=dtype).train() for impl in
            ("triton" if device == "cuda" else "auto", "loop")]  # fmt: skip
    for m in mods:
        m.load_state_dict(ref.state_dict())
    x = torch.randn(B, T, H, device=device, dtype=torch.float64)
    ln = torch.tensor([40, 7, 33, 40, 1, 25]).clamp(max=T) if lengths else None
    masks = ref.sample_masks(B, T, like=x)
    mk = {k: {n: t.to(dtype) for n, t in v.items()} for k, v in masks.items()}

    g = torch.Generator(device=device).manual_seed(1)
    w = torch.randn(B, T, (2 if bidir else 1) * H, generator=g, device=device, dtype=torch.float64)
    want = run_case(ref, x, ln, masks, w)
    found = tuple(compare(run_case(m, x.to(dtype), ln, mk, w), want) for m in mods)
    if save is not None:
        cpu = lambda d: {k: v.detach().cpu() for k, v in d.items()}  # noqa: E731
        torch.save(dict(opts=kw | {"device": "cpu"}, H=H, state=cpu(ref.state_dict()), x=x.cpu(), lengths=ln,
                        masks={k: cpu(v) for k, v in masks.items()}, w=w.cpu(), ours=found[0], loop=found[1],
                        where=torch.cuda.get_device_name() if device == "cuda" else "cpu",
                        input_norm="fused"), save)  # fmt: skip (kernels/layer_norm.py since session 12)
    return found


def run_case(m, xin, lengths, masks, w) -> dict:
    """Output, final states and every gradient of the fixed loss (out * w).sum() + h_n.sum() - c_n.sum()."""
    m.zero_grad()
    xl = xin.detach().clone().requires_grad_()
    out, (h, c) = m(xl, lengths=lengths, masks=masks)
    ((out.double() * w).sum() + h.double().sum() - c.double().sum()).backward()
    return {"out": out, "h_n": h, "c_n": c, "x grad": xl.grad, **{n: p.grad for n, p in m.named_parameters()}}


def compare(got: dict, want: dict) -> dict:
    """{name: ||got - want|| / ||want||}."""
    return {k: float((v.detach().double() - want[k]).norm() / want[k].norm().clamp_min(1e-300)) for k, v in got.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("gpu_ln_diag.md"))
    ap.add_argument("--dry-run", action="store_true", help="CPU, the CPU's kernels: proves the script runs")
    ap.add_argument("--save", type=Path, default=None,
                    help="write the user path's case at gains 1 (run 6's 0.87) here, for ln_case_replay.py")
    args = ap.parse_args(argv)
    device = "cpu" if args.dry_run else "cuda"
    if device == "cuda":
        tk.SYNC_CHECK, tk.TUNE = True, False  # (the heuristic plans, as gpu_user_path.py runs them)
    where = torch.cuda.get_device_name() if device == "cuda" else "CPU, DRY RUN (the CPU's kernels)"
    lines = [f"# The Triton layer-norm kernel in bf16 against float64, step by step: {where}", "",
             f"Command: `python benchmarks/gpu_ln_diag.py {' '.join(sys.argv[1:] if argv is None else argv)}`  ",
             f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, torch {torch.__version__}; B = 6, H = 100",
             "", "| case | T | plan (forward, first layer) | ours: worst | where | ours there / torch's loop there | "
             "torch's loop: worst | ours: out / h_n / c_n / x grad |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, opts, layers, bidir, T, lengths, scale in CASES:
        plan: dict = {}  # (run 10 measured three plans: the same errors to three digits; the heuristic's here)
        try:
            shown = "the heuristic"
            if device == "cuda":
                given = {k: plan.get(k) for k in ("mode", "tiles", "resident", "poll", "ll", "ln_sync", "fuse")}
                shown = repr(tk._plan_for("fwd", 6, 112, torch.bfloat16, torch.device("cuda"), given, True))
            tk.variant_layer = forced(plan)
            keep = args.save if (name.startswith(USER + ":") and scale == 1.0) else None
            ours, loop = errors(opts, layers, bidir, T, lengths, scale, torch.bfloat16, device, save=keep)
            at = max(ours, key=ours.get)
            lines.append(f"| {name} | {T} | {shown} | {ours[at]:.3g} | {at} | {ours[at]:.3g} / {loop[at]:.3g} | "
                         f"{max(loop.values()):.3g} | {ours['out']:.3g} / {ours['h_n']:.3g} / {ours['c_n']:.3g} / "
                         f"{ours['x grad']:.3g} |")  # fmt: skip
        except Exception as e:  # noqa: BLE001  (a failing case is a row)
            lines.append(f"| {name} | {T} | {plan} | ERROR {type(e).__name__}: {str(e)[:200]} | | | | |")
        finally:
            tk.variant_layer = ORIG
        args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
