"""What unaligned rows and resident float32 weights cost the Triton LSTM kernels, read from their sm_90
machine code (no GPU needed).

Compiles the forward and backward kernels ahead of time (``triton_lstm.compile_ahead``, specialised as the
JIT specialises a launch) at a hidden size that is not a multiple of 16 (the issue's H = 650) with the
alignment padding switched off, and at the size the kernels now run (656), for the plans tuning chooses
from at that shape, and counts in the SASS (``cuobjdump -sass``): all instructions, global loads (LDG),
asynchronous global-to-shared copies (LDGSTS: Triton's software pipeline), local-memory loads and stores
(LDL/STL: register spills), and the registers and stack frame ``cuobjdump --dump-resource-usage`` reports.

    python benchmarks/sass_alignment.py --out docs/gpu_runs/sass-alignment.md      # ~1 min, any machine

Static counts, not timings: the instructions of the whole kernel, not of one step.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import re
import subprocess
import tempfile
from pathlib import Path

import torch
import triton

from lstmkit.kernels import triton_lstm as tk

BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
#: (T, B, H, dtype, plan keywords): the two plans of (35, 20, 650) in bfloat16 that run 2's tuning timed,
#: its float32 plan, and float32 (tf32x3) with resident weights against streamed ones at two aligned shapes
CASES = [
    (35, 20, 650, torch.bfloat16, dict(tiles=(32, 8), resident=True)),
    (35, 20, 650, torch.bfloat16, dict(tiles=(32, 16), resident=False)),
    (35, 20, 650, torch.float32, dict(tiles=(32, 16), resident=False)),
    (1024, 8, 256, torch.float32, dict(tiles=(16, 8), resident=True)),
    (1024, 8, 256, torch.float32, dict(tiles=(16, 32), resident=False)),
    (100, 1, 512, torch.float32, dict(tiles=(16, 8), resident=True)),
    (100, 1, 512, torch.float32, dict(tiles=(16, 32), resident=False)),
]


def cuobjdump(kernel, flag: str) -> str:
    """``cuobjdump flag`` (Triton's own copy) of a compiled kernel's cubin: ``-sass``, ``--dump-resource-usage``."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(kernel.asm["cubin"])
        f.flush()
        return subprocess.run([str(BIN / "cuobjdump"), flag, f.name], capture_output=True, text=True,
                              check=True).stdout  # fmt: skip


def sass_counts(kernel) -> dict:
    """Instruction counts and resources of one compiled kernel."""
    sass, res = cuobjdump(kernel, "-sass"), cuobjdump(kernel, "--dump-resource-usage")
    ops = collections.Counter(re.findall(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)", sass))
    field = lambda name: int(re.search(rf"{name}:(\d+)", res).group(1))  # noqa: E731
    return dict(instr=sum(ops.values()), ldg=ops["LDG"], ldgsts=ops["LDGSTS"], spill_ops=ops["LDL"] + ops["STL"],
                reg=field("REG"), stack=field("STACK"))  # fmt: skip


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    lines = [
        "# SASS of the Triton LSTM kernels: H = 650 unpadded and padded to 656; float32 resident weights "
        "(sm_90, ahead of time)", "",
        "Command: `python benchmarks/sass_alignment.py --out docs/gpu_runs/sass-alignment-DATE.md`  ",
        f"Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, triton {triton.__version__}, "
        "no GPU (static counts of the whole kernel, not timings)", "",
        "| dtype | plan | H the kernel runs | kernel | instructions | LDG | LDGSTS (cp.async) | LDL+STL (spills) "
        "| registers | stack bytes |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    saved = dict(tk.ALIGN_UNITS)
    try:
        for T, B, H, dtype, kw in CASES:
            for align in (1, 16) if H % 16 else (16,):  # (aligned H: the same kernel either way)
                tk.ALIGN_UNITS["cuda"] = align
                kh = tk.kernel_units(H, "cuda")
                p = tk.plan(B, kh, dtype, "cuda", sm_count=132, **kw)
                for name, k in tk.compile_ahead(T, B, H, dtype, **kw).items():
                    c = sass_counts(k)
                    lines.append(f"| {str(dtype)[6:]} | {p!r} | {kh} | {name} | {c['instr']} | {c['ldg']} "
                                 f"| {c['ldgsts']} | {c['spill_ops']} | {c['reg']} | {c['stack']} |")  # fmt: skip
                    print(lines[-1], flush=True)
    finally:
        tk.ALIGN_UNITS.clear()
        tk.ALIGN_UNITS.update(saved)
    text = "\n".join(lines) + "\n"
    if args.out:
        args.out.write_text(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
