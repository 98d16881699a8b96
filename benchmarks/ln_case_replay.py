"""Replay a layer-norm case saved on a GPU (``gpu_ln_diag.py --save``) through Triton's interpreter on the CPU.

Run 7 found the Triton layer-norm kernel 0.866 from float64 on one bf16 case on the GPU (the user path: 2 layers,
both directions, four variants, ``lengths=``, T = 10, gains 1) where torch's own bf16 loop is 0.177, while the
interpreter, on CPU-drawn cases of the same kind, stayed at or below the loop's error. Same numbers on both
sides decide between the two readings: if the interpreter lands near the GPU's error on the GPU's draw, that
draw is what amplifies the kernels' rounding (no GPU-only behaviour); if it lands near the loop's, something
the GPU does differently (not the interpreter) is at fault. Prints, per output and gradient, the GPU's error
(saved), the interpreter's and torch's loop's (bf16, recomputed here), all against the same float64 module.

    PYTHONPATH=src python benchmarks/ln_case_replay.py ln_case.pt [--out replay.md]    # CPU, about 10 s

The kernels run with one hidden tile (the GPU's plans, 14 programs of 8 units or one of 128, gave identical
errors in run 7); the interpreter runs programs one after another. Triton's interpreter rounds float32 to
bfloat16 toward zero where the GPU rounds to nearest (``lstmkit.kernels.interpreter``); the replay rounds as the
GPU does unless ``--interpreter-rounding toward-zero`` (what the replays before session 12 did). The input
projection's layer norm is computed as the saved case's code did: torch's for cases saved before session 12
(run 7's), the fused kernel (``kernels.layer_norm``) for later ones.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from pathlib import Path

os.environ.setdefault("TRITON_INTERPRET", "1")  # (before triton is imported)

import torch  # noqa: E402

from lstmkit import kernels  # noqa: E402
from lstmkit.kernels import interpreter  # noqa: E402
from lstmkit.kernels import triton_lstm as tk  # noqa: E402
from lstmkit.nn import LSTM  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from gpu_ln_diag import compare, run_case  # noqa: E402


def _run7_input_norm(gx, weight, bias, eps, out_dtype, interpret=False):
    """The input projection's layer norm and bias as run 7's code computed them (torch, two roundings)."""
    from lstmkit.nn.variants import input_norm

    y = input_norm(gx, weight, eps)
    return (y if bias is None else y + bias).to(out_dtype)


def replay(case: dict, dtype=torch.bfloat16) -> tuple[dict, dict]:
    """(interpreter's errors, torch loop's errors) for the saved case, each {name: relative error}."""
    H, opts = case["H"], dict(case["opts"])
    ref = LSTM(H, H, **opts, impl="loop", dtype=torch.float64).train()
    ref.load_state_dict(case["state"])
    mods = []
    for _ in range(2):
        m = LSTM(H, H, **opts, impl="loop", dtype=dtype).train()
        m.load_state_dict(case["state"])
        mods.append(m)
    masks = case["masks"]
    mk = {k: {n: t.to(dtype) for n, t in v.items()} for k, v in masks.items()}
    x, ln, w = case["x"], case["lengths"], case["w"]
    want = run_case(ref, x, ln, masks, w)
    kern = functools.partial(tk.variant_layer, tiles=(8, 128))  # (all units in one program)
    kern.per_layer, kern.linear, kern.fuses_input_norm = True, None, True
    real, real_norm = kernels.select_lstm, tk.input_norm
    kernels.select_lstm = lambda *a, **k: kern  # (the module's forward asks at each call)
    if case.get("input_norm") != "fused":  # a case saved before session 12 (run 7's): its input norm as then
        tk.input_norm = _run7_input_norm
    try:
        ours = compare(run_case(mods[0], x.to(dtype), ln, mk, w), want)
    finally:
        kernels.select_lstm, tk.input_norm = real, real_norm
    loop = compare(run_case(mods[1], x.to(dtype), ln, mk, w), want)
    return ours, loop


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("case", type=Path, help="the file gpu_ln_diag.py --save wrote")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--interpreter-rounding", choices=("nearest", "toward-zero"), default="nearest",
                    help="float32 -> bfloat16 in the interpreter: as the GPU (nearest), or Triton's own")
    args = ap.parse_args(argv)
    if args.interpreter_rounding == "nearest":
        assert interpreter.install(), "could not make Triton's interpreter round to nearest (see the warning)"
    else:  # Triton's own rounding, for the rest of this process (our kernels' install() then leaves it)
        interpreter.uninstall()
    case = torch.load(args.case, weights_only=False)
    ours, loop = replay(case)
    gpu = case["ours"]
    worst = max(gpu, key=gpu.get)
    lines = [f"# A layer-norm case from {case['where']} replayed in Triton's interpreter (CPU), bf16", "",
             f"Command: `python benchmarks/ln_case_replay.py {args.case.name} --interpreter-rounding "
             f"{args.interpreter_rounding}` (float32 -> bfloat16 in the interpreter: "
             f"{'to nearest, as the GPU' if args.interpreter_rounding == 'nearest' else 'toward zero'})",
             "",
             f"Worst on the GPU: {gpu[worst]:.3g} ({worst}); here: {max(ours.values()):.3g} "
             f"({max(ours, key=ours.get)}); torch's bf16 loop: {max(loop.values()):.3g} (GPU: "
             f"{max(case['loop'].values()):.3g})", "",
             "| output / gradient | GPU kernels | interpreter | torch's loop here | torch's loop on the GPU |",
             "|---|---|---|---|---|"]  # fmt: skip
    for k in gpu:
        lines.append(f"| {k} | {gpu[k]:.3g} | {ours[k]:.3g} | {loop[k]:.3g} | {case['loop'][k]:.3g} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
