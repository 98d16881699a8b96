"""The cluster kernels' layer norm on padded layers and its merged forward, without a GPU (issue 6, session 11).

Prints the figures docs/gpu.md quotes for them, from the tests' own check (``tests/test_cluster_lstm.py``,
``_variant_errors``: the kernels emulated on the CPU against the NumPy spec in float64, forward and every
gradient): padded layer norm; the same with the padding counted in the forward's statistics or the backward's
means (what the kernels must not do); layer norm under 16 units padded to 16 (why ``LN_MIN_UNITS``); the merged
forward (``config(merge=True)``); and what NVRTC's sm_90 build of those configurations uses (cuobjdump, Triton's
copy). Needs g++ and NVRTC (the test extra).

    PYTHONPATH=src python benchmarks/ln_padding_check.py --out docs/gpu_runs/ln-padding-merge-2026-11-28.md
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from lstmkit.kernels import cluster_lstm as cl

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_cluster_lstm import _resources, _variant_errors  # noqa: E402  (the tests' check and compile report)

BF16, FP16 = torch.bfloat16, torch.float16
EVERY = ("ln", "peephole", "cifg", "clip", "rec", "zh", "zc", "valid")
#: (switches, cluster, exchange, dtype, seed, (T, B, H)): test_padded_variants' layer-norm cases
PADDED = [(("ln",), None, "barrier", BF16, 42, (3, 5, 40)), (EVERY, None, "mbarrier", FP16, 43, (3, 5, 40)),
          (("ln",), None, "mbarrier", BF16, 44, (2, 3, 300)), (("ln",), None, "barrier", BF16, 45, (3, 5, 20))]
#: the padding counted anyway: (what, kernel text, the same without the padding left out)
COUNTED = [("in the forward's statistics", "_HEAD", [("#define LNPAD (LN && HREAL < HID)", "#define LNPAD 0")]),
           ("in the backward's means", "_KERNEL", [("(1.0f / HREAL)", "(1.0f / HID)"),
                                                   ("(1.0f / (4 * HREAL))", "(1.0f / G4)")])]
#: layer norm under LN_MIN_UNITS, padded to 16 anyway
TINY = [(("ln",), None, "barrier", dt, seed, (3, 5, H)) for H in (5, 8) for dt, seed in ((BF16, 1), (BF16, 2),
                                                                                       (FP16, 1))]
#: test_merged_layer_norm_matches_the_reference's cases
MERGED = [(("ln",), 2, "mbarrier", BF16, 20, (4, 5, 64)),
          (("ln", "peephole", "cifg", "clip"), 4, "mbarrier", FP16, 21, (4, 5, 64)),
          (("ln",), 8, "mbarrier", BF16, 22, (3, 16, 256)), (("ln",), 2, "mbarrier", BF16, 23, (1, 5, 64)),
          (("ln",), None, "mbarrier", FP16, 24, (2, 3, 384))]


def _row(case, **kw) -> str:
    on, C, exchange, dtype, seed, shape = case
    errs, bound = _variant_errors(on, C, exchange, dtype, seed, shape, **kw)
    grads = [v for k, v in errs.items() if k not in ("y", "hT", "cT", "plain") and v is not None]
    name = "bf16" if dtype == BF16 else "fp16"
    return (f"| {shape}, seed {seed} | {'+'.join(on)} | {name} | {exchange} | {errs['y']:.2e} | {errs['hT']:.2e} | "
            f"{errs['cT']:.2e} | {max(grads):.2e} | {bound:g} |")


HEAD = ["| (T, B, H) | variants | dtype | exchange | y | h_T | c_T | worst gradient | bound |", "|" + "---|" * 9]


def _counted(what: str, attr: str, edits: list) -> str:
    text = mutated = getattr(cl, attr)
    for old, new in edits:
        assert mutated.count(old) == 1, (what, old)
        mutated = mutated.replace(old, new)
    setattr(cl, attr, mutated)
    cl._emulator.cache_clear()
    try:
        return _row(PADDED[0]).replace(" |", f", the padding counted {what} |", 1)
    finally:
        setattr(cl, attr, text)
        cl._emulator.cache_clear()


def _registers(tmp: Path) -> list[str]:
    rows = []
    for B, H, real, exchange, merge in [(8, 768, 650, "barrier", False), (8, 768, 650, "mbarrier", False),
                                        (16, 256, None, "mbarrier", False), (16, 256, None, "mbarrier", True),
                                        (8, 512, None, "mbarrier", False), (8, 512, None, "mbarrier", True)]:
        cfg = cl.config(B, H, BF16, exchange=exchange, flags=("LN",), real=real, merge=merge)
        res = _resources(cl.compile_cubin(cfg)[0], tmp)
        cells = " | ".join(f"{res[k][0]} / {res[k][1]}" for k in ("lstm_cluster_fwd", "lstm_cluster_bwd"))
        rows.append(f"| ({B}, {H}) | {real or H} | {exchange} | {'merged' if merge else 'two exchanges'} | {cells} |")
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    cmd = "python benchmarks/ln_padding_check.py" + (f" --out {args.out}" if args.out else "")
    lines = ["# Layer norm on padded layers, and its merged forward: the cluster kernels emulated (CPU)", "",
             f"Command: `{cmd}`  ", f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
             f"{platform.machine()}, torch {torch.__version__}, NVRTC {'.'.join(map(str, cl.nvrtc_version()))}. "
             "Relative errors against the NumPy spec (float64); no GPU.", "",
             "## Padded layer norm (test_padded_variants)", "", *HEAD, *map(_row, PADDED), "",
             "## The same with the padding counted (what the kernels must not do)", "", *HEAD,
             *(_counted(*c) for c in COUNTED), "",
             f"## Layer norm under LN_MIN_UNITS = {cl.LN_MIN_UNITS}, padded to 16 anyway", "", *HEAD]  # fmt: skip
    floor = cl.LN_MIN_UNITS
    cl.LN_MIN_UNITS = 1
    try:
        lines += map(_row, TINY)
    finally:
        cl.LN_MIN_UNITS = floor
    lines += ["", "## The merged forward (config(merge=True))", "", *HEAD, *(_row(c, merge=True) for c in MERGED)]
    with tempfile.TemporaryDirectory() as tmp:
        lines += ["", "## NVRTC's sm_90 build, layer norm, bf16: registers / stack bytes (spills)", "",
                  "| (B, H) | real units | exchange | forward | lstm_cluster_fwd | lstm_cluster_bwd |",
                  "|---|---|---|---|---|---|", *_registers(Path(tmp))]  # fmt: skip
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
