"""Can Triton's multi-CTA mode (``num_ctas > 1``: one program spread over a thread-block cluster) compile an
LSTM recurrence for sm_90? If it could, the cluster exchange of goal 3 (docs/gpu.md) could stay in Triton.

Compiles, without a GPU, a minimal recurrence (four resident gate weights, ``tl.dot`` per gate, the cell,
one store per step) and our forward kernel with one program for all hidden units, for num_ctas = 1, 2, 8,
and reports whether each compiles and, if not, the failing compiler pass. Run it with the Triton of the GPU
image (triton==3.6.0):

    PYTHONPATH=src python benchmarks/triton_num_ctas.py --out docs/gpu_runs/triton-num-ctas-2026-11-27.md
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from pathlib import Path

import torch
import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from lstmkit.kernels import triton_lstm as tk


@triton.jit
def _minimal(w_ptr, gx_ptr, out_ptr, T, B: tl.constexpr, H: tl.constexpr):
    ob = tl.arange(0, B)[:, None]
    ok = tl.arange(0, H)[:, None]
    oj = tl.arange(0, H)[None, :]
    wi = tl.load(w_ptr + ok * H + oj)
    wf = tl.load(w_ptr + H * H + ok * H + oj)
    wg = tl.load(w_ptr + 2 * H * H + ok * H + oj)
    wo = tl.load(w_ptr + 3 * H * H + ok * H + oj)
    h = tl.zeros((B, H), dtype=tl.bfloat16)
    c = tl.zeros((B, H), dtype=tl.float32)
    for t in range(T):
        base = gx_ptr + t * B * 4 * H + ob * 4 * H + oj
        i = tl.sigmoid(tl.dot(h, wi) + tl.load(base).to(tl.float32))
        f = tl.sigmoid(tl.dot(h, wf) + tl.load(base + H).to(tl.float32))
        g = 2 * tl.sigmoid(2 * (tl.dot(h, wg) + tl.load(base + 2 * H).to(tl.float32))) - 1
        o = tl.sigmoid(tl.dot(h, wo) + tl.load(base + 3 * H).to(tl.float32))
        c = f * c + i * g
        hn = o * (2 * tl.sigmoid(2 * c) - 1)
        tl.store(out_ptr + t * B * H + ob * H + oj, hn.to(tl.bfloat16))
        h = hn.to(tl.bfloat16)


def _try(build) -> str:
    """'compiles' or the failing pass (Triton prints its pipeline failure to stderr)."""
    fd = os.dup(2)
    with tempfile.TemporaryFile(mode="w+") as log:
        os.dup2(log.fileno(), 2)  # MLIR writes its reproducer to the process's stderr, not sys.stderr
        try:
            build()
            return "compiles"
        except Exception as e:  # noqa: BLE001  (any compiler failure is the answer)
            sys.stderr.flush()
            log.seek(0)
            msg = str(e) + log.read()
            m = re.search(r"Pipeline failed while executing \[`(\w+)`", msg)
            llvm = re.search(r"LLVM ERROR: ([^.]+)", msg)
            return (f"fails in {m.group(1)}" if m else "fails") + (f" (LLVM ERROR: {llvm.group(1)})" if llvm else "")
        finally:
            os.dup2(fd, 2)
            os.close(fd)


def _minimal_build(num_ctas: int):
    sig = {"w_ptr": "*bf16", "gx_ptr": "*bf16", "out_ptr": "*bf16", "T": "i32", "B": "constexpr", "H": "constexpr"}
    src = ASTSource(fn=_minimal, signature=sig, constexprs={(4,): 16, (5,): 256})
    return lambda: triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4, "num_ctas": num_ctas})


def _ours_build(num_ctas: int, fuse: bool):
    def build():
        orig = triton.compile
        budget = tk.SMEM_BUDGET
        tk.SMEM_BUDGET = 1 << 30  # one program for all 256 units: its weights exist only split over the cluster
        triton.compile = lambda src, target=None, options=None: orig(src, target=target,
                                                                     options={**options, "num_ctas": num_ctas})
        try:
            tk.compile_ahead(64, 8, 256, torch.bfloat16, tiles=(16, 256), resident=True, fuse=fuse, which=("fwd",))
        finally:
            triton.compile, tk.SMEM_BUDGET = orig, budget

    return build


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    rows = []
    for n in (1, 2, 8):
        rows.append((n, "minimal recurrence, (16, 256) bf16", _try(_minimal_build(n))))
        for fuse in (True, False):
            rows.append((n, f"our forward kernel, one (16, 256) program, fuse={fuse}", _try(_ours_build(n, fuse))))
    lines = [f"# Triton {triton.__version__}: num_ctas > 1 on an LSTM recurrence, sm_90 (compile only)", "",
             f"Command: `PYTHONPATH=src python {' '.join(sys.argv)}`", "",
             "| num_ctas | kernel | result |", "|---|---|---|"]  # fmt: skip
    lines += [f"| {n} | {k} | {r} |" for n, k, r in rows]
    text = "\n".join(lines) + "\n"
    if args.out:
        args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
