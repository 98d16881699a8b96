"""The float32 GEMM kernel's sm_90 builds (``lstmkit.kernels.gemm``), without a GPU: registers, spills, shared
memory and tf32 wgmma count of each tiling at the three operand layouts of a layer's GEMMs; and the fused input
norm's (``lstmkit.kernels.layer_norm``), at the row lengths that decide its :data:`MAX_N`.

Why the kernel's :data:`gemm.CONFIGS` are what they are: the tf32x3 split keeps a high and a low part of each
operand tile in registers, and the wider tiles spill. Run it with the triton the GPU image has (3.6) to see
what the GPU will run::

    PYTHONPATH=src python benchmarks/gemm_compile.py --out docs/gpu_runs/gemm-compile-2026-11-28.md
    PYTHONPATH=src python benchmarks/gemm_compile.py --configs 128,256,32,8,3 64,128,32,4,4
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

import torch
import triton

from lstmkit.kernels import gemm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu import _resources  # noqa: E402  (cuobjdump on a cubin)

#: the layer's GEMMs: (a layout, b layout, bias, what)
LAYOUTS = (("r", "c", True, "x W_ih^T + b"), ("r", "r", False, "dgx W_ih"), ("c", "r", False, "dgx^T x, da^T h"))
#: tilings the table shows beside CONFIGS: the wider ones that spill
OTHERS = ((128, 256, 32, 8, 3), (64, 128, 32, 4, 4), (128, 128, 64, 8, 3), (256, 128, 32, 16, 3))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", nargs="*", default=None, help="BLOCK_M,BLOCK_N,BLOCK_K,warps,stages ...")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    configs = [tuple(map(int, c.split(","))) for c in args.configs] if args.configs else [*gemm.CONFIGS, *OTHERS]
    lines = [f"# The float32 GEMM kernel's sm_90 builds (triton {triton.__version__}), no GPU", "",
             "Command: `PYTHONPATH=src python benchmarks/gemm_compile.py`  ", f"Date: {datetime.date.today()}", "",
             "Strides: aligned (multiples of 16, K a multiple of BLOCK_K: the issue's shapes but one) or not "
             "(rows of 650 values, K = 650 or 700: (35, 20, 650)); CONFIGS are built both ways, the others aligned.",
             "", "| GEMM | operands | tiling (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages) | in CONFIGS | strides | "
             "registers | stack bytes (spills) | shared bytes | tf32 wgmma per K tile |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for la, lb, bias, what in LAYOUTS:
        for cfg in configs:
            for aligned in (True, False) if cfg in gemm.CONFIGS else (True,):
                k = gemm.compile_ahead(la, lb, bias, cfg, aligned=aligned, even_k=aligned)
                r = _resources(k)
                ptx = k.asm["ptx"]
                lines.append(f"| {what} | {la}{lb} | {cfg} | {'yes' if cfg in gemm.CONFIGS else ''} | "
                             f"{'aligned' if aligned else 'unaligned, K masked'} | {r['reg']} | {r['stack']} | "
                             f"{r['shared_bytes']} | {ptx.count('wgmma.mma_async')} |")  # fmt: skip
    # the fused input norm (kernels/layer_norm.py), forward and backward: 4H of the shapes and its cap
    from lstmkit.kernels import layer_norm

    lines += ["", "## The fused input norm (kernels/layer_norm.py), float32 statistics", "",
              "| 4H | dtype | kernel | warps | registers | stack bytes (spills) |", "|---|---|---|---|---|---|"]
    for N in (1024, 2600, 3072, 4096, layer_norm.MAX_N, 2 * layer_norm.MAX_N):
        for dtype in (torch.bfloat16, torch.float32):
            for name, k in layer_norm.compile_ahead(N, dtype).items():
                r = _resources(k)
                lines.append(f"| {N} | {str(dtype)[6:]} | {name} | {k.metadata.num_warps} | {r['reg']} | "
                             f"{r['stack']} |")  # fmt: skip
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
