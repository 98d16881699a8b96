"""What one time step of the Triton LSTM kernels executes, read from their sm_90 machine code (no GPU).

Run 5's step ablation (docs/gpu.md) left 2.05 us per forward step at (1024, 8, 256) bf16 without the grid
barrier: longer than cuDNN's whole fp16 step (1.53 us), for a (16 x 256) @ (256 x 32) product. This counts,
for run 5's tuned plans, what the time loop of each kernel holds: its SASS instructions (static count of
the loop, an inner K loop counted once), the CTA barriers (``BAR.SYNC``), the tensor-core instructions
(``HMMA``, ``HGMMA``), and the layout conversions in the loop (``ttg.convert_layout`` in the TTGIR), which
Triton lowers through shared memory, between CTA barriers.

    PYTHONPATH=src python benchmarks/sass_loop.py --out docs/gpu_runs/sass-loop-DATE.md     # ~1 min, any machine

Each kernel both ways: as its plan runs by default and with the gate products the other way (", four gate
products" in the plan: the kernels of runs 1-5); with the stack frame (register spills) of each.
Static counts, not timings. Run it with the Triton the GPU image has (3.6 here: /work/venv36).
"""

from __future__ import annotations

import argparse
import collections
import datetime
import re
import sys
from pathlib import Path

import torch
import triton

from lstmkit.kernels import triton_lstm as tk

sys.path.insert(0, str(Path(__file__).parent))
from sass_alignment import cuobjdump, sass_counts  # noqa: E402

#: run 5's tuned plans (docs/gpu_runs/2026-11-27-h200-run5.md), bf16 at the five shapes, and fp32 plans
CASES = [
    (1024, 8, 256, torch.bfloat16, "fwd", dict(tiles=(16, 8), resident=True)),
    (1024, 8, 256, torch.bfloat16, "bwd", dict(tiles=(16, 32), resident=True)),
    (256, 16, 768, torch.bfloat16, "fwd", dict(tiles=(16, 8), resident=True)),
    (256, 16, 768, torch.bfloat16, "bwd", dict(tiles=(16, 32), resident=False)),
    (100, 1, 512, torch.bfloat16, "fwd", dict(tiles=(16, 32), resident=True)),
    (100, 1, 512, torch.bfloat16, "bwd", dict(tiles=(16, 32), resident=True)),
    (35, 20, 650, torch.bfloat16, "fwd", dict(tiles=(32, 8), resident=True)),
    (35, 20, 650, torch.bfloat16, "bwd", dict(tiles=(32, 16), resident=False)),
    (128, 256, 1024, torch.bfloat16, "fwd", dict(tiles=(64, 32), resident=False)),
    (128, 256, 1024, torch.bfloat16, "bwd", dict(tiles=(64, 32), resident=False)),
    (1024, 8, 256, torch.float32, "fwd", dict(tiles=(16, 32), resident=False)),
    (35, 20, 650, torch.float32, "fwd", dict(tiles=(32, 16), resident=False)),
    (35, 20, 650, torch.float32, "bwd", dict(tiles=(32, 16), resident=False)),
    (128, 256, 1024, torch.float32, "fwd", dict(tiles=(64, 32), resident=False)),
    # 16-bit streamed plans with K chunks of 128 (triton_lstm.DEEP_K), the candidates tuning times beside 64
    (128, 256, 1024, torch.bfloat16, "fwd", dict(tiles=(64, 32, 128), resident=False)),
    (128, 256, 1024, torch.bfloat16, "bwd", dict(tiles=(64, 32, 128), resident=False)),
    (128, 256, 1024, torch.bfloat16, "bwd", dict(tiles=(128, 32, 128), resident=False)),
    (128, 256, 1024, torch.bfloat16, "fwd", dict(tiles=(64, 32, 128), resident=False, stages=4)),
    (128, 256, 1024, torch.bfloat16, "bwd", dict(tiles=(64, 32, 128), resident=False, stages=4)),
    (35, 20, 650, torch.bfloat16, "bwd", dict(tiles=(32, 16, 128), resident=False)),
    (256, 16, 768, torch.bfloat16, "bwd", dict(tiles=(16, 32, 128), resident=False)),
    # float32 with fp32 FMA products (precision="ieee"), the small-batch candidates tuning times beside tf32x3
    (1024, 8, 256, torch.float32, "fwd", dict(tiles=(16, 8), resident=True, precision="ieee")),
    (1024, 8, 256, torch.float32, "bwd", dict(tiles=(16, 8), resident=True, precision="ieee")),
    (256, 16, 768, torch.float32, "fwd", dict(tiles=(16, 8), resident=True, precision="ieee")),
    (256, 16, 768, torch.float32, "bwd", dict(tiles=(16, 8), resident=True, precision="ieee")),
    (100, 1, 512, torch.float32, "fwd", dict(tiles=(16, 8), resident=True, precision="ieee")),
    (100, 1, 512, torch.float32, "bwd", dict(tiles=(16, 8), resident=True, precision="ieee")),
    (35, 20, 650, torch.float32, "fwd", dict(tiles=(32, 16), resident=False, precision="ieee")),
    (35, 20, 650, torch.float32, "bwd", dict(tiles=(32, 16), resident=False, precision="ieee")),
    (35, 20, 650, torch.float32, "fwd", dict(tiles=(32, 8), resident=False, precision="ieee")),
    (35, 20, 650, torch.float32, "bwd", dict(tiles=(32, 8), resident=False, precision="ieee")),
    # left out of the candidates for their spills (triton_lstm._other_precision, DEEP_K): larger FMA tiles, and
    # float32 (tf32x3) with K chunks of 128
    (128, 256, 1024, torch.float32, "fwd", dict(tiles=(64, 32), resident=False, precision="ieee")),
    (128, 256, 1024, torch.float32, "fwd", dict(tiles=(128, 64), resident=False, precision="ieee")),
    (100, 1, 512, torch.float32, "fwd", dict(tiles=(16, 16), resident=True, precision="ieee")),
    (35, 20, 650, torch.float32, "fwd", dict(tiles=(32, 16, 128), resident=False)),
    (35, 20, 650, torch.float32, "bwd", dict(tiles=(32, 16, 128), resident=False)),
    (128, 256, 1024, torch.float32, "fwd", dict(tiles=(64, 32, 128), resident=False)),
    (128, 256, 1024, torch.float32, "bwd", dict(tiles=(64, 32, 128), resident=False)),
]


#: layer norm at (128, 256, 1024) bf16 (goal 2 there: run 6's Triton layer norm 2.0-2.2x cuDNN), its tuned plans
#: forward and backward (statistics behind a counter) beside the plain kernels of the same tiling, and the
#: backward with 16 warps (session 11's tuning candidate against its spills): ``--layer-norm``
LN_CASES = [
    (128, 256, 1024, torch.bfloat16, "fwd", dict(tiles=(64, 32), resident=False), ()),
    (128, 256, 1024, torch.bfloat16, "fwd", dict(tiles=(64, 32), resident=False, ln_sync=True), ("LN",)),
    (128, 256, 1024, torch.bfloat16, "bwd", dict(tiles=(64, 32, 128), resident=False, stages=4), ()),
    (128, 256, 1024, torch.bfloat16, "bwd", dict(tiles=(64, 32, 128), resident=False, stages=4, ln_sync=True),
     ("LN",)),
    (128, 256, 1024, torch.bfloat16, "bwd",
     dict(tiles=(64, 32, 128), resident=False, stages=4, ln_sync=True, warps=16), ("LN",)),
]  # fmt: skip


def loop_counts(kernel) -> dict:
    """Counts in the time loop: the backward branch that spans the most code; ``inner``: the instructions of the
    longest loop inside it (a streamed plan's K loop), ``local``: its local-memory loads and stores (spills)."""
    sass = cuobjdump(kernel, "-sass")
    rows = [(int(m.group(1), 16), m.group(2).strip()) for m in re.finditer(r"/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;", sass)]
    lo, hi = 0, -1
    for addr, ins in rows:
        m = re.search(r"\bBRA\s+(?:!?U?P\w+,\s*)?0x([0-9a-f]+)", ins)
        if m and int(m.group(1), 16) < addr and addr - int(m.group(1), 16) > hi - lo:
            lo, hi = int(m.group(1), 16), addr
    body = [re.sub(r"^@!?U?P\w+\s+", "", ins).split()[0] for addr, ins in rows if lo <= addr <= hi]
    inner = 0
    for addr, ins in rows:  # the longest backward branch strictly inside the time loop
        m = re.search(r"\bBRA\s+(?:!?U?P\w+,\s*)?0x([0-9a-f]+)", ins)
        if m and lo < int(m.group(1), 16) < addr < hi:
            inner = max(inner, sum(1 for a, _ in rows if int(m.group(1), 16) <= a <= addr))
    ops = collections.Counter(body)
    ir = kernel.asm["ttgir"]
    loop_ir = ir[ir.index("scf.for") :]
    return dict(instr=len(body), bar=ops["BAR.SYNC.DEFER_BLOCKING"] + ops["BAR.SYNC"],
                hmma=sum(v for k, v in ops.items() if k.startswith(("HMMA", "HGMMA"))),
                membar=sum(v for k, v in ops.items() if k.startswith("MEMBAR")),
                convert=loop_ir.count("ttg.convert_layout"), inner=inner,
                local=sum(v for k, v in ops.items() if k.startswith(("STL", "LDL"))))  # fmt: skip


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--layer-norm", action="store_true", help="LN_CASES: layer norm beside plain at batch 256")
    args = ap.parse_args(argv)
    lines = [
        "# One time step of the Triton LSTM kernels in sm_90 machine code (ahead of time, no GPU)", "",
        f"Command: `python benchmarks/sass_loop.py{' --layer-norm' if args.layer_norm else ''} --out "
        "docs/gpu_runs/sass-loop-DATE.md`  ",
        f"Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, triton {triton.__version__}; "
        "run 5's tuned plans and, since session 8, the fp32 FMA and 16-bit deeper-K tuning candidates; "
        "static counts of the time loop (an inner K loop of a streamed plan counted once)",
        "",
        "| shape (T, B, H) | dtype | kernel | variants | plan | loop instructions | of which the inner K loop "
        "| BAR.SYNC (CTA barriers) | HMMA + HGMMA (tensor core) | MEMBAR | layout conversions in the loop (TTGIR) "
        "| local loads / stores in the loop (spills) | stack bytes (spills) | shared memory bytes |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for T, B, H, dtype, kind, kw, *var in LN_CASES if args.layer_norm else CASES:
        variants = var[0] if var else ()
        # the kernel as it runs (FUSE where Plan fuses by default) and the other way, as tuning times it
        default = tk.plan(B, tk.kernel_units(H, "cuda"), dtype, "cuda", sm_count=132, mode="persistent", **kw).fuse
        for fuse in (default, not default):
            p = tk.plan(B, tk.kernel_units(H, "cuda"), dtype, "cuda", sm_count=132, mode="persistent", fuse=fuse, **kw)
            k = tk.compile_ahead(T, B, H, dtype, mode="persistent", which=(kind,), fuse=fuse, variants=variants,
                                 **kw)[kind]  # fmt: skip
            c = loop_counts(k)
            lines.append(f"| ({T}, {B}, {H}) | {str(dtype)[6:]} | {kind} | {' '.join(variants) or 'plain'} | "
                         f"{p!r} | {c['instr']} | {c['inner']} | {c['bar']} | {c['hmma']} | {c['membar']} | "
                         f"{c['convert']} | {c['local']} | {sass_counts(k)['stack']} | "
                         f"{k.metadata.shared} |")  # fmt: skip
            print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    if args.out:
        args.out.write_text(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
