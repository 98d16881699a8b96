"""LSTM layers on the GPU in Triton: a persistent recurrent kernel, forward and backward.

The equations are those of :mod:`lstmkit.reference`, in torch's gate order (i, f, g, o)::

    a_t = x_t W_ih^T + b_ih + b_hh + h_{t-1} W_hh^T        (B, 4H) pre-activations
    i_t, f_t, o_t = sigma(a_t[i]), sigma(a_t[f]), sigma(a_t[o])
    g_t = tanh(a_t[g])                                       candidate c~_t
    c_t = f_t * c_{t-1} + i_t * g_t
    h_t = o_t * tanh(c_t)

One layer, one direction, is split as cuDNN splits it:

* the input projection ``gx = x W_ih^T + b`` for all T steps is ONE GEMM (``torch.nn.functional.linear``),
  left to autograd, so ``dW_ih``, ``db`` and ``dx`` are GEMMs too;
* the time loop is ONE Triton kernel launch (:func:`_fwd_kernel`), and its BPTT another
  (:func:`_bwd_kernel`), wrapped in :class:`_Recurrence`, a ``torch.autograd.Function``;
* ``dW_hh = sum_t da_t^T h_{t-1}`` and ``dh_0 = da_0 W_hh`` are GEMMs after the backward kernel.

Layers and directions are composed in Python (:func:`lstm`), exactly as ``torch.nn.LSTM`` stacks them.

The persistent design (how the time loop runs)
----------------------------------------------

The hidden units are cut into tiles of ``BLOCK_H`` units, the batch into tiles of ``BLOCK_B`` rows; one
program (CTA) owns one (batch tile, hidden tile) pair for the whole sequence::

            hidden units 0 .. H-1
          +--------+--------+-----+--------+
  batch   | (0, 0) | (0, 1) | ... | (0, n) |   program (pid_b, pid_h) keeps on chip, across all T steps:
  rows    +--------+--------+-----+--------+     * its rows of W_hh: 4 gates x BLOCK_H units x H  (loaded once;
  0..B-1  | (1, 0) | ...                   |       Triton puts them in shared memory)
          +--------+-----------------------+     * its cell state c (BLOCK_B, BLOCK_H), float32, in registers

  step t, program (b, j):   h_{t-1}[b, :]  (all H units, read from global / L2)
                            a = h_{t-1}[b, :] @ W_hh[gates of j, :]^T + gx[t, b, gates of j]   fp32 accumulate
                            c[b, j], h_t[b, j] = cell(a, c[b, j])  -> h_t[b, j] written to global
                            grid barrier among the programs of batch tile b (one per step)

Batch tiles never talk to each other, so each batch tile has its own barrier counters. The barrier is
one counter per (batch tile, step) in global memory: every program adds 1 (release) and polls until
the counter equals the number of hidden tiles (acquire); a counter is used once, so polling for
equality cannot miss (triton < 3.9 has no ``tl.atomic_poll``: a bounded spin on an atomic read does the
same). This needs all programs resident at once, which a cooperative launch
(``launch_cooperative_grid=True``) guarantees or refuses, so the persistent mode is used only when the
grid fits the GPU (``programs <= SMs``); the polls carry a timeout that turns a deadlock into an error.

When the weight tile and the ``h`` tile do not fit in shared memory (large H in float32, large batch
tiles) the weights are **streamed**: the same loop reads W_hh from L2 in chunks of ``BLOCK_K`` rows at
every step instead of keeping it (``RESIDENT=False``); the launch can still be persistent.

The backward kernel is the mirror image: program (b, j) keeps the *columns* j of W_hh (4H x BLOCK_H),
reads the whole ``da_{t+1}`` (B, 4H) written by all programs at the previous step, forms
``dh_t[b, j] = da_{t+1} W_hh[:, j] + dy_t[b, j]``, then its own ``da_t[b, gates of j]`` and the carried
``dc`` (float32, in registers), writes ``da_t`` and synchronises.

The same kernels also run **step-wise**: ``n_steps = 1`` per launch, T launches, no barrier (kernel
boundaries synchronise). That mode needs no co-residency; it is the fallback for grids larger than the
GPU and what the Triton interpreter runs when there is more than one hidden tile (the interpreter runs
programs one after another, so a grid barrier among several programs could never be passed there).

Precision: ``h`` and the weights are in the input dtype (float32, bfloat16 or float16); products are
accumulated in float32 (``tl.dot``), gates and the cell state are float32, and the saved activations
for the backward pass are float32. In float32 the recurrent product is ``tf32x3`` (three TF32
tensor-core products, close to fp32; :data:`FP32_PRECISION`) or ``ieee`` (exact fp32 FMA, no tensor
cores), whichever tuning measures faster (:class:`Plan`'s ``precision``), and plain TF32 when TF32 is on
(``torch.backends.cuda.matmul.fp32_precision = "tf32"`` or the legacy ``allow_tf32``: :func:`gemm.tf32_allowed`).
The layer's GEMMs around the recurrence (input projection, its gradients, dW_hh) go through :mod:`.gemm`:
in float32 without TF32 a tf32x3 Triton GEMM where tuning measures it faster than cuBLAS's fp32 FMA, else
torch's. Float64 runs only under the interpreter (tests).

Measured on an NVIDIA H200 (docs/gpu.md): about 2.8 us per step at small batch whatever the tiling (the
chain barrier -> read h -> product -> write h is L2 latency, not arithmetic); bfloat16 is 1-5x cuDNN's
bfloat16, which has no persistent path. The tiling is not guessed: :func:`tuned_plan` times the
:func:`candidates` on the first call per (kernel, B, H, dtype) and keeps the fastest.

Variants are compile-time switches of the same two kernels (plain code is unchanged when they are off):
peephole, CIFG, cell clip, recurrent dropout, zoneout and padding (``lengths=``) change only the cell
math, marked ``# cell``; weight drop is a mask on W_hh before the call; layer norm (``LN``) needs row
statistics over all 4H (recurrent projection) and H (cell) units, which live in several programs, so
each program publishes its per-row partial sums and reads everyone's (:func:`_exchange_sums`) inside the
persistent launch: two such exchanges per step forward and two backward. ``ll=True`` exchanges h_t
itself as words that carry a ready flag instead of using the counter barrier: correct on the GPU, but
measured slower, so tuning does not try it.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
import os
import time

import torch
from torch import Tensor

from . import gemm, interpreter
from .layer_norm import input_norm
from .stack import pad_dim as _pad_dim  # (zero padding of the hidden units, shared with cluster_lstm)
from .stack import pad_gates as _pad_gates
from .stack import pad_recurrent as _pad_recurrent

try:  # Triton is optional: without it the dispatcher never selects this module.
    import triton
    import triton.language as tl

    HAVE_TRITON = True
except ImportError:  # pragma: no cover - exercised only where triton is absent
    triton = None
    tl = None
    HAVE_TRITON = False

__all__ = [
    "HAVE_TRITON", "lstm", "lstm_or_native", "layer", "is_supported", "unsupported_reason", "why_not", "plan", "Plan",
    "warmup", "compile_ahead", "candidates", "tuned_plan", "tune_key", "kernel_units", "step_ablation",
    "ln_step_ablation",
]  # fmt: skip

log = logging.getLogger(__name__)

#: dtypes the GPU path takes; float64 runs only under the interpreter (CPU tensors).
GPU_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
#: nanoseconds a program waits at a grid barrier before it gives up and flags a deadlock.
BARRIER_TIMEOUT_NS = 2_000_000_000
#: the same bound, counted in spins, where triton has no tl.atomic_poll (each spin is an L2 round trip).
SPIN_LIMIT = 2_000_000
#: tl.atomic_poll appeared in triton 3.9; older versions spin on an acquire load (inline PTX).
HAVE_POLL = HAVE_TRITON and hasattr(tl, "atomic_poll")
#: how the GPU kernels wait at the grid barrier: 2 = tl.atomic_poll, 1 = spin on ``ld.acquire.gpu`` (every
#: thread, no CTA barrier), 0 = spin on ``tl.atomic_add(ptr, 0)``, which triton lowers to one thread's
#: ``ld.acquire`` and a CTA broadcast per spin (seen in the PTX; both measured the same on an H200).
#: Environment variable LSTMKIT_TRITON_POLL overrides; the interpreter always uses 0.
GPU_POLL = int(os.environ.get("LSTMKIT_TRITON_POLL", "2" if HAVE_POLL else "1"))
_LD_ACQUIRE = tl.constexpr("ld.acquire.gpu.global.b32 $0, [$1];") if HAVE_TRITON else None
#: cooperative launch (all programs co-resident, or the launch fails) appeared in triton 3.2 or so.
HAVE_COOPERATIVE = False
if HAVE_TRITON:
    try:
        from triton.backends.nvidia.compiler import CUDAOptions

        HAVE_COOPERATIVE = "launch_cooperative_grid" in CUDAOptions.__dataclass_fields__
    except Exception:  # pragma: no cover - no NVIDIA backend in this triton
        pass


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


# ---------------------------------------------------------------------------------------------
# Kernels. Plain Python functions, wrapped below by triton.jit (GPU) or interpreter.interpreted (CPU).
# They call no other @triton.jit function (tl.sigmoid etc. are jit functions the interpreter could
# not call when it is chosen per call rather than by TRITON_INTERPRET), so sigma and tanh are
# written with tl.exp.
# ---------------------------------------------------------------------------------------------


def _add(a, b):  # tl.reduce's combine function: row sums (tl.sum is a jit function the interpreter cannot call)
    return a + b


def _min(a, b):  # the same for "every flag set"
    return tl.minimum(a, b)


def _grid_arrive(ctr):
    """One step's grid barrier among the hidden tiles of a batch tile, first half: add 1 to this step's
    counter ``ctr`` (release), as soon as what the others wait for (h_t; backward da_t) is stored. The
    program's own remaining work of the step (saving for backward, prefetching the next step's inputs) runs
    between this and :func:`_grid_wait`, while the others arrive, instead of before the arrival."""
    tl.debug_barrier()  # all threads' stores of the exchanged tile precede the release
    tl.atomic_add(ctr, 1, sem="release", scope="gpu")


def _grid_wait(ctr, n_htiles, err_ptr, wait_ns, wait_spins, POLL: tl.constexpr):
    """Second half: wait until ``ctr`` reaches ``n_htiles`` (acquire). A counter is used once, so waiting for
    equality cannot miss. On a timeout the error flag is set and the patience drops to 0, so a broken
    barrier costs one timeout, not T of them. Returns the remaining patience (wait_ns, wait_spins)."""
    if POLL == 2:  # triton >= 3.9: one thread spins, with a timeout on the GPU clock
        ok = tl.atomic_poll(ctr, n_htiles, sem="acquire", scope="gpu", timeout_ns=wait_ns)
    elif POLL == 1:  # every thread spins on a plain acquire load: no read-modify-write, no CTA barrier
        seen = tl.inline_asm_elementwise(_LD_ACQUIRE, "=r,l", [ctr], dtype=tl.int32, is_pure=False, pack=1)
        spins = 0
        while (seen < n_htiles) & (spins < wait_spins):
            seen = tl.inline_asm_elementwise(_LD_ACQUIRE, "=r,l", [ctr], dtype=tl.int32, is_pure=False, pack=1)
            spins += 1
        ok = seen >= n_htiles
    else:  # spin on tl.atomic_add(ptr, 0): triton lowers it to one thread's ld.acquire + a CTA broadcast
        seen = tl.atomic_add(ctr, 0, sem="acquire", scope="gpu")
        spins = 0
        while (seen < n_htiles) & (spins < wait_spins):
            seen = tl.atomic_add(ctr, 0, sem="acquire", scope="gpu")
            spins += 1
        ok = seen >= n_htiles
    if not ok:
        tl.atomic_xchg(err_ptr, 1)
        wait_ns = wait_ns * 0
        wait_spins = wait_spins * 0
    tl.debug_barrier()
    return wait_ns, wait_spins


def _unit_rows(ptr, n: tl.constexpr, offs_j, mj, H, ACC: tl.constexpr):
    """My units' columns of the first ``n`` (1..4) consecutive H-vectors at ``ptr`` (peepholes: 3; layer-norm
    gains: 4, 1), each a (1, BLOCK_H) row in ACC, kept for the whole launch; always four (the rest repeat)."""
    r0 = tl.load(ptr + offs_j, mask=mj, other=0.0).to(ACC)[None, :]
    r1 = r0
    r2 = r0
    r3 = r0
    if n > 1:
        r1 = tl.load(ptr + H + offs_j, mask=mj, other=0.0).to(ACC)[None, :]
    if n > 2:
        r2 = tl.load(ptr + 2 * H + offs_j, mask=mj, other=0.0).to(ACC)[None, :]
    if n > 3:
        r3 = tl.load(ptr + 3 * H + offs_j, mask=mj, other=0.0).to(ACC)[None, :]
    return r0, r1, r2, r3


def _gates4(a, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    """The four (BLOCK_B, BLOCK_H) gate blocks i, f, g, o of a (BLOCK_B, 4 BLOCK_H) tile whose column
    ``gate * BLOCK_H + j`` holds unit j of that gate (the fused product's layout, see ``FUSE``)."""
    r = tl.reshape(tl.permute(tl.reshape(a, (BLOCK_B, 4, BLOCK_H)), (0, 2, 1)), (BLOCK_B, BLOCK_H, 2, 2))
    even, odd = tl.split(r)  # gate = 2 * hi + lo: lo = 0 holds gates 0 and 2, lo = 1 gates 1 and 3
    a_i, a_g = tl.split(even)
    a_f, a_o = tl.split(odd)
    return a_i, a_f, a_g, a_o


def _gate_tiles(ptr, b4h, m_bj, b4c, m_bc, H, ONE_TILE: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    """My units' four gate blocks (i, f, g, o) of a (B, 4H) slab at ``ptr``: four (BLOCK_B, BLOCK_H) loads at
    ``b4h`` + gate * H, or (``ONE_TILE``) one (BLOCK_B, 4 BLOCK_H) load at ``b4c`` split in registers."""
    if ONE_TILE:
        a_i, a_f, a_g, a_o = _gates4(tl.load(ptr + b4c, mask=m_bc, other=0.0), BLOCK_B, BLOCK_H)
    else:
        sv = ptr + b4h
        a_i = tl.load(sv + 0 * H, mask=m_bj, other=0.0)
        a_f = tl.load(sv + 1 * H, mask=m_bj, other=0.0)
        a_g = tl.load(sv + 2 * H, mask=m_bj, other=0.0)
        a_o = tl.load(sv + 3 * H, mask=m_bj, other=0.0)
    return a_i, a_f, a_g, a_o


def _join4(a_i, a_f, a_g, a_o, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    """The inverse of :func:`_gates4`: four (BLOCK_B, BLOCK_H) gate blocks as one (BLOCK_B, 4 BLOCK_H) tile."""
    r = tl.join(tl.join(a_i, a_g), tl.join(a_f, a_o))  # (BLOCK_B, BLOCK_H, hi, lo): gate 2 * hi + lo
    return tl.reshape(tl.permute(tl.reshape(r, (BLOCK_B, BLOCK_H, 4)), (0, 2, 1)), (BLOCK_B, 4 * BLOCK_H))


def _exchange_sums(st_ptr, base, pid_h, offs_b, mb, m_st, st_rd, p1, p2, B, wait_ns, wait_spins, err_ptr, cnt,
                   n_tot, stc_ptr, stc_idx, n_htiles, ACC: tl.constexpr, ST_RAW: tl.constexpr, LL_SPIN: tl.constexpr,
                   CHAN: tl.constexpr, ST_SYNC: tl.constexpr, POLL: tl.constexpr):  # fmt: skip
    """Layer norm's cross-program reduction over one row statistic. Publish my rows' two partials (p1, p2) in
    slot ``base`` of the exchange buffer, wait until every hidden tile has published, combine.

    Plain (CHAN False): p1, p2 are partial sums; returns their totals. CHAN: p1 is my tiles' mean and p2 their
    centred sum of squares M2 over ``cnt`` values ((NH_PAD, 1): each tile's count); returns the mean and M2
    over all ``n_tot`` values (Chan et al.'s parallel variance, numerically safe where E[x^2] - mean^2 is
    not). Also returns the remaining patience (wait_ns, wait_spins). Words are LL words (fp32 + ready flag in
    int64), each reader spinning on every tile's words; with ST_RAW plain values: either float64 in the
    interpreter (one program), or with ST_SYNC, where the readers wait on one counter per exchange
    (``stc_ptr + stc_idx``, a grid barrier) and then read every tile's values once."""
    sp = st_ptr + base + pid_h * B * 2 + offs_b * 2
    sr = st_ptr + base + st_rd
    if ST_RAW:
        tl.store(sp, p1, mask=mb)
        tl.store(sp + 1, p2, mask=mb)
        if ST_SYNC:  # every tile's partials are out once this exchange's counter says so
            _grid_arrive(stc_ptr + stc_idx)
            wait_ns, wait_spins = _grid_wait(stc_ptr + stc_idx, n_htiles, err_ptr, wait_ns, wait_spins, POLL)
        v1 = tl.load(sr, mask=m_st, other=0.0, cache_modifier=".cg")  # (L2: written by other SMs)
        v2 = tl.load(sr + 1, mask=m_st, other=0.0, cache_modifier=".cg")
    else:
        tl.store(sp, (p1.to(tl.int32, bitcast=True).to(tl.int64) << 32) | 1, mask=mb, cache_modifier=".cg")
        tl.store(sp + 1, (p2.to(tl.int32, bitcast=True).to(tl.int64) << 32) | 1, mask=mb, cache_modifier=".cg")
        q1 = tl.load(sr, mask=m_st, other=1, volatile=True)
        q2 = tl.load(sr + 1, mask=m_st, other=1, volatile=True)
        if LL_SPIN:
            ready = tl.reduce(tl.reduce((q1 & q2 & 1).to(tl.int32), 1, _min), 0, _min)
            spins = 0
            while (ready == 0) & (spins < wait_spins):
                q1 = tl.load(sr, mask=m_st, other=1, volatile=True)
                q2 = tl.load(sr + 1, mask=m_st, other=1, volatile=True)
                ready = tl.reduce(tl.reduce((q1 & q2 & 1).to(tl.int32), 1, _min), 0, _min)
                spins += 1
            if ready == 0:
                tl.atomic_xchg(err_ptr, 1)
                wait_spins = wait_spins * 0
        v1 = (q1 >> 32).to(tl.int32).to(tl.float32, bitcast=True).to(ACC)  # (NH_PAD, BLOCK_B)
        v2 = (q2 >> 32).to(tl.int32).to(tl.float32, bitcast=True).to(ACC)
    if CHAN:
        s1 = tl.reduce(v1 * cnt, 0, _add) / n_tot  # the row mean
        dm = v1 - s1[None, :]
        s2 = tl.reduce(v2 + cnt * dm * dm, 0, _add)  # the row's M2 (tiles that do not exist have cnt 0)
    else:
        s1 = tl.reduce(v1, 0, _add)
        s2 = tl.reduce(v2, 0, _add)
    return s1, s2, wait_ns, wait_spins


def _fwd_kernel(
    gx_ptr,  # (T, B, 4H) x W_ih^T + b, input dtype
    w_ptr,  # (4H, H) W_hh, input dtype, contiguous
    hs_ptr,  # (T+1, B, H) input dtype; hs[0] = h_0 on entry, hs[t+1] = h_t on exit
    cs_ptr,  # (T+1, B, H) ACC; cs[t_start] = c_{t_start-1} on entry; cs[t+1] = c_t on exit: every step
    # when SAVE, else only the launch's last step (the carry, or c_T)
    gates_ptr,  # (T, B, 4H) ACC: i, f, g, o after activation (written when SAVE)
    sync_ptr,  # (n_btiles, T) int32 zeros: barrier counters (PERSIST)
    err_ptr,  # (1,) int32: set to 1 when a barrier times out
    t_start,  # first step of this launch
    n_steps,  # steps of this launch (T when persistent, 1 when step-wise)
    T,
    B,
    H,
    n_htiles,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_K: tl.constexpr,  # reduction chunk when the weights are streamed (not RESIDENT)
    H_PAD: tl.constexpr,  # next power of two >= H: the reduction width of resident weights
    ACC: tl.constexpr,  # accumulation / cell dtype (float32; float64 in interpreter tests)
    DOT: tl.constexpr,  # operand dtype of tl.dot (the input dtype; fp32 for bf16 in the interpreter)
    PRECISION: tl.constexpr,  # "ieee" or "tf32"
    PERSIST: tl.constexpr,  # grid barrier after every step (all programs co-resident)
    RESIDENT: tl.constexpr,  # W_hh tile loaded once, kept on chip; else streamed from L2 every step
    SAVE: tl.constexpr,
    TIMEOUT_NS: tl.constexpr,
    POLL: tl.constexpr,  # barrier wait: 2 tl.atomic_poll (triton >= 3.9), 1 acquire-load spin, 0 atomic spin
    SPIN_LIMIT: tl.constexpr,  # barrier spins before a timeout is flagged when there is no atomic_poll
    # variants (lstmkit.nn.variants has the equations); None / False: the plain LSTM, compiled without them
    rec_ptr=None,  # (B, H) recurrent-dropout mask: h_{t-1} * rec enters the recurrent product
    wch_ptr=None,  # (3H) peepholes w_ci, w_cf, w_co
    zh_ptr=None,  # (T, B, H) zoneout of h: 1 (or the rate) where h_{t-1} is kept
    zc_ptr=None,  # (T, B, H) zoneout of c
    valid_ptr=None,  # (T, B) 1 where t < length: elsewhere h and c are carried unchanged
    hm_ptr=None,  # (T+1, B, H) input dtype, RDROP without LL: h_t * rec, written by its producer (hm[0] by the
    # host), read by every program instead of h_t, so no program multiplies a whole (B, H) tile by the mask
    clip=0.0,  # cell clip value (CLIP)
    xs_ptr=None,  # (T+1, B, H) int32 (16-bit dtypes) / int64 (float32): h_t packed with a ready flag (LL)
    LL: tl.constexpr = False,  # exchange h through xs_ptr, no grid barrier: the flag travels with the data
    XS_BITS: tl.constexpr = 32,  # width of a packed word: 32 (16-bit value + flag) or 64 (float32 + flag)
    LL_SPIN: tl.constexpr = True,  # wait for the flags (off in the interpreter, where no one else writes)
    # layer norm (LN): of the recurrent projection over 4H and of c'_t over H; row statistics across programs
    # are exchanged like h (LL words, fp32 + flag in int64)
    lnhh_ptr=None,  # (4H) gain of the recurrent LN
    lncw_ptr=None,  # (H) gain of the cell LN
    lncb_ptr=None,  # (H) bias of the cell LN
    st_ptr=None,  # (T, 2, n_htiles, B, 2) int64 zeros: per-program partial sums (LL words)
    rh_ptr=None,  # (T, B, 4H) ACC: normalised recurrent projection (saved when SAVE)
    rs_ptr=None,  # (T, B, 3) ACC: rstd of the recurrent projection, mean and rstd of c'_t (saved when SAVE)
    eps=1e-5,
    ln_units=0,  # the units the statistics are over: the layer's H (the kernels' H may carry alignment padding)
    LN: tl.constexpr = False,
    NH_PAD: tl.constexpr = 1,  # next power of two >= n_htiles
    ST_RAW: tl.constexpr = False,  # st_ptr holds plain ACC sums (float64 in the interpreter, or ST_SYNC)
    ST_SYNC: tl.constexpr = False,  # each statistics exchange waits on a counter (stc_ptr), not on LL words
    stc_ptr=None,  # (n_btiles, T, 2) int32 zeros: those counters (ST_SYNC)
    RDROP: tl.constexpr = False,
    PEEP: tl.constexpr = False,
    CIFG: tl.constexpr = False,  # i_t = 1 - f_t
    CLIP: tl.constexpr = False,
    ZONE_H: tl.constexpr = False,
    ZONE_C: tl.constexpr = False,
    VALID: tl.constexpr = False,
    # timing diagnostics only (step_ablation, ln_step_ablation), wrong numbers: 1 drops the grid barrier, 2 also
    # re-reads no h; with layer norm 3 drops its two statistic exchanges (each program its own tile's statistics),
    # 4 those and the grid barrier
    ABLATE: tl.constexpr = 0,
    # the four gates' products as one (BLOCK_B, H) @ (H, 4 BLOCK_H) product, split afterwards (_gates4): in the
    # sm_90 code a step has a third of the CTA barriers and layout conversions of four separate products,
    # which at BLOCK_H = 8 also ran every product on all four warps (benchmarks/sass_loop.py)
    FUSE: tl.constexpr = False,
):
    pid_h = tl.program_id(0)
    pid_b = tl.program_id(1)
    offs_b = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)  # (BLOCK_B,) my batch rows
    offs_j = pid_h * BLOCK_H + tl.arange(0, BLOCK_H)  # (BLOCK_H,) my hidden units
    mb = offs_b < B
    mj = offs_j < H
    m_bj = mb[:, None] & mj[None, :]  # (BLOCK_B, BLOCK_H)
    bh = offs_b[:, None] * H + offs_j[None, :]  # (BLOCK_B, BLOCK_H) offsets in a (B, H) slab
    b4h = offs_b[:, None] * (4 * H) + offs_j[None, :]  # same, in a (B, 4H) slab, gate block 0
    if FUSE:  # my units of all four gates side by side: column gate * BLOCK_H + j
        offs_c = tl.arange(0, 4 * BLOCK_H)
        j_c = pid_h * BLOCK_H + offs_c % BLOCK_H
        mj_c = j_c < H
        col_c = (offs_c // BLOCK_H) * H + j_c  # its column in a (B, 4H) slab, its row of W_hh
        m_bc = mb[:, None] & mj_c[None, :]
        b4c = offs_b[:, None] * (4 * H) + col_c[None, :]
    if RESIDENT:
        # W_g^T restricted to my units, (H_PAD, BLOCK_H) per gate, loaded once for all steps.
        offs_k = tl.arange(0, H_PAD)
        mk = offs_k < H
        m_bk = mb[:, None] & mk[None, :]  # (BLOCK_B, H_PAD)
        bk = offs_b[:, None] * H + offs_k[None, :]
        if FUSE:  # (H_PAD, 4 BLOCK_H)
            w_all = tl.load(w_ptr + offs_k[:, None] + col_c[None, :] * H, mask=mk[:, None] & mj_c[None, :],
                            other=0.0).to(DOT)  # fmt: skip
        else:
            w_t = offs_k[:, None] + offs_j[None, :] * H  # element (k, j) -> W_hh[j, k] of gate block 0
            m_kj = mk[:, None] & mj[None, :]
            w_i = tl.load(w_ptr + 0 * H * H + w_t, mask=m_kj, other=0.0).to(DOT)
            w_f = tl.load(w_ptr + 1 * H * H + w_t, mask=m_kj, other=0.0).to(DOT)
            w_g = tl.load(w_ptr + 2 * H * H + w_t, mask=m_kj, other=0.0).to(DOT)
            w_o = tl.load(w_ptr + 3 * H * H + w_t, mask=m_kj, other=0.0).to(DOT)
        if ABLATE == 2:
            h_fixed = tl.load(hs_ptr + t_start * B * H + bk, mask=m_bk, other=0.0)
    c = tl.load(cs_ptr + t_start * B * H + bh, mask=m_bj, other=0.0).to(ACC)  # carried cell state
    if RDROP:  # my units' recurrent-dropout mask: I publish h_t * rec for the others (LL: they multiply)
        rec_own = tl.load(rec_ptr + bh, mask=m_bj, other=0.0).to(ACC)
    if ZONE_H or VALID:  # my own tile of h_{t-1}, as stored (zoneout and padding carry it)
        h_own = tl.load(hs_ptr + t_start * B * H + bh, mask=m_bj, other=0.0).to(ACC)
    if PEEP:
        w_ci, w_cf, w_co, _ = _unit_rows(wch_ptr, 3, offs_j, mj, H, ACC)
    if LN:
        g_hi, g_hf, g_hg, g_ho = _unit_rows(lnhh_ptr, 4, offs_j, mj, H, ACC)
        g_c, b_c = _unit_rows(lncw_ptr, 1, offs_j, mj, H, ACC)[0], _unit_rows(lncb_ptr, 1, offs_j, mj, H, ACC)[0]
        offs_nh = tl.arange(0, NH_PAD)
        m_st = (offs_nh[:, None] < n_htiles) & mb[None, :]  # (NH_PAD, BLOCK_B): every program's partials
        st_rd = offs_nh[:, None] * B * 2 + offs_b[None, :] * 2
        # the units of each tile (of mine) that count: the weights of the tiles' means (0 for a tile of padding)
        mj_ln = offs_j < ln_units
        cnt = tl.where(offs_nh < n_htiles, tl.maximum(tl.minimum(ln_units - offs_nh * BLOCK_H, BLOCK_H), 0), 0)
        cnt = cnt.to(ACC)[:, None]
        n_mine = tl.maximum(tl.minimum(ln_units - pid_h * BLOCK_H, BLOCK_H), 0).to(ACC)
        n_div = tl.maximum(n_mine, 1.0)
    wait_ns = tl.full([], TIMEOUT_NS, tl.int64)  # barrier patience; 0 once a barrier has timed out
    wait_spins = tl.full([], SPIN_LIMIT, tl.int32)
    # gx of the first step (the next step's is loaded before each barrier, off the critical path): with fused
    # products of large tiles, one (BLOCK_B, 4 BLOCK_H) tile that starts the product's
    # accumulator; else per gate, added after the split (small tiles: 5 instead of 7 CTA barriers a step at
    # 16 x 8, 26 instead of 20 at 64 x 32, benchmarks/sass_loop.py)
    GX4: tl.constexpr = FUSE and BLOCK_B * BLOCK_H > 512
    if GX4:
        gx4 = tl.load(gx_ptr + t_start * B * 4 * H + b4c, mask=m_bc, other=0.0)  # (BLOCK_B, 4 BLOCK_H)
    else:  # (BLOCK_B, BLOCK_H) each
        gx_i, gx_f, gx_g, gx_o = _gate_tiles(gx_ptr + t_start * B * 4 * H, b4h, m_bj, b4h, m_bj, H, False, BLOCK_B,
                                             BLOCK_H)  # fmt: skip
    for s in range(n_steps):
        t = t_start + s
        if FUSE:
            if LN or not GX4:  # the recurrent product alone (layer norm normalises it before gx is added)
                a4 = tl.full([BLOCK_B, 4 * BLOCK_H], 0.0, ACC)
            else:
                a4 = gx4.to(ACC)
        else:
            a_i = gx_i.to(ACC)
            a_f = gx_f.to(ACC)
            a_g = gx_g.to(ACC)
            a_o = gx_o.to(ACC)
            if LN:
                a_i = tl.full([BLOCK_B, BLOCK_H], 0.0, ACC)
                a_f = tl.full([BLOCK_B, BLOCK_H], 0.0, ACC)
                a_g = tl.full([BLOCK_B, BLOCK_H], 0.0, ACC)
                a_o = tl.full([BLOCK_B, BLOCK_H], 0.0, ACC)
        # a += h_{t-1} W_hh^T for my units: (BLOCK_B, H) @ (H, BLOCK_H) per gate
        if RESIDENT:
            if ABLATE == 2:
                h_prev = h_fixed
            elif LL:  # spin until every word of h_{t-1} carries its ready flag; the words are the data
                xw = tl.load(xs_ptr + t * B * H + bk, mask=m_bk, other=1, volatile=True)
                if LL_SPIN:  # (the interpreter runs one program at a time: its words are always there)
                    ready = tl.reduce(tl.reduce((xw & 1).to(tl.int32), 1, _min), 0, _min)
                    spins = 0
                    while (ready == 0) & (spins < wait_spins):
                        xw = tl.load(xs_ptr + t * B * H + bk, mask=m_bk, other=1, volatile=True)
                        ready = tl.reduce(tl.reduce((xw & 1).to(tl.int32), 1, _min), 0, _min)
                        spins += 1
                    if ready == 0:
                        tl.atomic_xchg(err_ptr, 1)
                        wait_spins = wait_spins * 0
                if XS_BITS == 64:
                    h_prev = (xw >> 32).to(tl.int32).to(tl.float32, bitcast=True)
                else:
                    h_prev = (xw >> 16).to(tl.int16).to(hs_ptr.dtype.element_ty, bitcast=True)
            elif RDROP:  # h_{t-1} * rec, as its producers published it
                h_prev = tl.load(hm_ptr + t * B * H + bk, mask=m_bk, other=0.0, cache_modifier=".cg")
            else:
                h_prev = tl.load(hs_ptr + t * B * H + bk, mask=m_bk, other=0.0, cache_modifier=".cg")
            if RDROP and LL:  # (the LL words carry h itself)
                h_prev = h_prev.to(ACC) * tl.load(rec_ptr + bk, mask=m_bk, other=0.0).to(ACC)
            h_prev = h_prev.to(DOT)
            if FUSE:
                a4 = tl.dot(h_prev, w_all, a4, input_precision=PRECISION, out_dtype=ACC)
            else:
                a_i = tl.dot(h_prev, w_i, a_i, input_precision=PRECISION, out_dtype=ACC)
                a_f = tl.dot(h_prev, w_f, a_f, input_precision=PRECISION, out_dtype=ACC)
                a_g = tl.dot(h_prev, w_g, a_g, input_precision=PRECISION, out_dtype=ACC)
                a_o = tl.dot(h_prev, w_o, a_o, input_precision=PRECISION, out_dtype=ACC)
        else:
            for k0 in range(0, H, BLOCK_K):
                offs_k = k0 + tl.arange(0, BLOCK_K)
                mk = offs_k < H
                bkk = offs_b[:, None] * H + offs_k[None, :]
                if RDROP:  # h_{t-1} * rec, as its producers published it
                    h_prev = tl.load(hm_ptr + t * B * H + bkk, mask=mb[:, None] & mk[None, :], other=0.0,
                                     cache_modifier=".cg")  # fmt: skip
                else:
                    h_prev = tl.load(hs_ptr + t * B * H + bkk, mask=mb[:, None] & mk[None, :], other=0.0,
                                     cache_modifier=".cg")  # fmt: skip
                h_prev = h_prev.to(DOT)
                if FUSE:  # (BLOCK_K, 4 BLOCK_H)
                    w = tl.load(w_ptr + offs_k[:, None] + col_c[None, :] * H, mask=mk[:, None] & mj_c[None, :],
                                other=0.0).to(DOT)  # fmt: skip
                    a4 = tl.dot(h_prev, w, a4, input_precision=PRECISION, out_dtype=ACC)
                else:
                    w_t = w_ptr + offs_k[:, None] + offs_j[None, :] * H  # (BLOCK_K, BLOCK_H)
                    m_kj = mk[:, None] & mj[None, :]
                    w = tl.load(w_t + 0 * H * H, mask=m_kj, other=0.0).to(DOT)
                    a_i = tl.dot(h_prev, w, a_i, input_precision=PRECISION, out_dtype=ACC)
                    w = tl.load(w_t + 1 * H * H, mask=m_kj, other=0.0).to(DOT)
                    a_f = tl.dot(h_prev, w, a_f, input_precision=PRECISION, out_dtype=ACC)
                    w = tl.load(w_t + 2 * H * H, mask=m_kj, other=0.0).to(DOT)
                    a_g = tl.dot(h_prev, w, a_g, input_precision=PRECISION, out_dtype=ACC)
                    w = tl.load(w_t + 3 * H * H, mask=m_kj, other=0.0).to(DOT)
                    a_o = tl.dot(h_prev, w, a_o, input_precision=PRECISION, out_dtype=ACC)
        if FUSE:
            a_i, a_f, a_g, a_o = _gates4(a4, BLOCK_B, BLOCK_H)
            if not LN and not GX4:
                a_i += gx_i.to(ACC)
                a_f += gx_f.to(ACC)
                a_g += gx_g.to(ACC)
                a_o += gx_o.to(ACC)
        if LN:  # r = a (4H per row, spread over the programs): mean and variance via the exchange
            m_loc = tl.reduce(a_i + a_f + a_g + a_o, 1, _add) / (4 * n_div)  # (BLOCK_B,) my tile's mean
            d_i = tl.where(mj_ln[None, :], a_i - m_loc[:, None], 0.0)  # (padded units: a = 0, and not counted)
            d_f = tl.where(mj_ln[None, :], a_f - m_loc[:, None], 0.0)
            d_g = tl.where(mj_ln[None, :], a_g - m_loc[:, None], 0.0)
            d_o = tl.where(mj_ln[None, :], a_o - m_loc[:, None], 0.0)
            m2_loc = tl.reduce(d_i * d_i + d_f * d_f + d_g * d_g + d_o * d_o, 1, _add)
            if ABLATE == 3 or ABLATE == 4:  # (timing only: my tile's statistics, scaled as if they were the row's)
                mu, m2 = m_loc, m2_loc * n_htiles
            else:
                mu, m2, wait_ns, wait_spins = _exchange_sums(
                    st_ptr, (t * 2 + 0) * n_htiles * B * 2, pid_h, offs_b, mb, m_st, st_rd, m_loc, m2_loc, B,
                    wait_ns, wait_spins, err_ptr, 4 * cnt, 4 * ln_units, stc_ptr, (pid_b * T + t) * 2 + 0, n_htiles,
                    ACC, ST_RAW, LL_SPIN, True, ST_SYNC, POLL)  # fmt: skip
            rstd = 1.0 / tl.sqrt(m2 / (4 * ln_units) + eps)
            r_i = (a_i - mu[:, None]) * rstd[:, None]
            r_f = (a_f - mu[:, None]) * rstd[:, None]
            r_g = (a_g - mu[:, None]) * rstd[:, None]
            r_o = (a_o - mu[:, None]) * rstd[:, None]
            if GX4:
                gx_i, gx_f, gx_g, gx_o = _gates4(gx4, BLOCK_B, BLOCK_H)
            a_i = gx_i.to(ACC) + g_hi * r_i
            a_f = gx_f.to(ACC) + g_hf * r_f
            a_g = gx_g.to(ACC) + g_hg * r_g
            a_o = gx_o.to(ACC) + g_ho * r_o
            if SAVE:
                rv = rh_ptr + t * B * 4 * H + b4h
                tl.store(rv + 0 * H, r_i, mask=m_bj)
                tl.store(rv + 1 * H, r_f, mask=m_bj)
                tl.store(rv + 2 * H, r_g, mask=m_bj)
                tl.store(rv + 3 * H, r_o, mask=m_bj)
                tl.store(rs_ptr + t * B * 3 + offs_b * 3, rstd, mask=mb)  # every program has the same value
        # cell (element-wise; the variants that change only the cell math live here)
        if PEEP:  # i and f see c_{t-1}
            a_i += w_ci * c
            a_f += w_cf * c
        f_t = 1.0 / (1.0 + tl.exp(-a_f))
        if CIFG:
            i_t = 1.0 - f_t
        else:
            i_t = 1.0 / (1.0 + tl.exp(-a_i))
        g_t = 2.0 / (1.0 + tl.exp(-2.0 * a_g)) - 1.0  # tanh
        c_new = f_t * c + i_t * g_t
        if CLIP:
            c_new = tl.minimum(tl.maximum(c_new, -clip), clip)
        if PEEP:  # o sees c_t
            a_o += w_co * c_new
        o_t = 1.0 / (1.0 + tl.exp(-a_o))
        if LN:  # n_t = LN(c'_t) g_c + b_c over the H units of a row, again through the exchange
            m_loc = tl.reduce(tl.where(mb[:, None] & mj_ln[None, :], c_new, 0.0), 1, _add) / n_div
            d_c = tl.where(mj_ln[None, :], c_new - m_loc[:, None], 0.0)
            if ABLATE == 3 or ABLATE == 4:  # (timing only, as above)
                mu_c, m2 = m_loc, tl.reduce(d_c * d_c, 1, _add) * n_htiles
            else:
                mu_c, m2, wait_ns, wait_spins = _exchange_sums(
                    st_ptr, (t * 2 + 1) * n_htiles * B * 2, pid_h, offs_b, mb, m_st, st_rd, m_loc,
                    tl.reduce(d_c * d_c, 1, _add), B, wait_ns, wait_spins, err_ptr, cnt, ln_units, stc_ptr,
                    (pid_b * T + t) * 2 + 1, n_htiles, ACC, ST_RAW, LL_SPIN, True, ST_SYNC, POLL)  # fmt: skip
            rstd_c = 1.0 / tl.sqrt(m2 / ln_units + eps)
            n_t = (c_new - mu_c[:, None]) * rstd_c[:, None] * g_c + b_c
            if SAVE:
                tl.store(rs_ptr + t * B * 3 + offs_b * 3 + 1, mu_c, mask=mb)  # every program has the same value
                tl.store(rs_ptr + t * B * 3 + offs_b * 3 + 2, rstd_c, mask=mb)  # every program has the same value
        else:
            n_t = c_new
        h_t = o_t * (2.0 / (1.0 + tl.exp(-2.0 * n_t)) - 1.0)
        if ZONE_H or VALID:
            keep_h = h_t * 0.0
            if ZONE_H:
                keep_h = tl.load(zh_ptr + t * B * H + bh, mask=m_bj, other=0.0).to(ACC)
            if VALID:  # padding: keep everything
                ok = tl.load(valid_ptr + t * B + offs_b, mask=mb, other=0.0).to(ACC)[:, None]
                keep_h = ok * keep_h + (1.0 - ok)
            h_t = keep_h * h_own + (1.0 - keep_h) * h_t
        if ZONE_C or VALID:
            keep_c = c_new * 0.0
            if ZONE_C:
                keep_c = tl.load(zc_ptr + t * B * H + bh, mask=m_bj, other=0.0).to(ACC)
            if VALID:
                keep_c = ok * keep_c + (1.0 - ok)
            c_new = keep_c * c + (1.0 - keep_c) * c_new
        c = c_new
        h_st = h_t.to(hs_ptr.dtype.element_ty)
        if ZONE_H or VALID:
            h_own = h_st.to(ACC)
        if LL:  # publish first: it is what the other programs wait for
            if XS_BITS == 64:
                xw_out = (h_st.to(tl.int32, bitcast=True).to(tl.int64) << 32) | 1
            else:
                xw_out = (h_st.to(tl.int16, bitcast=True).to(tl.int32) << 16) | 1
            tl.store(xs_ptr + (t + 1) * B * H + bh, xw_out, mask=m_bj, cache_modifier=".cg")
        tl.store(hs_ptr + (t + 1) * B * H + bh, h_st, mask=m_bj)
        if RDROP and not LL:  # what the others read: h_t * rec, rounded once to the input dtype (as torch's)
            tl.store(hm_ptr + (t + 1) * B * H + bh, (h_st.to(ACC) * rec_own).to(hm_ptr.dtype.element_ty), mask=m_bj)
        if PERSIST and (ABLATE == 0 or ABLATE == 3):  # h_t is out: arrive now, wait after this step's own work
            _grid_arrive(sync_ptr + pid_b * T + t)
        if SAVE:  # what the backward pass needs: c_t and the gates of every step
            tl.store(cs_ptr + (t + 1) * B * H + bh, c, mask=m_bj)
            sv = gates_ptr + t * B * 4 * H + b4h
            tl.store(sv + 0 * H, i_t, mask=m_bj)
            tl.store(sv + 1 * H, f_t, mask=m_bj)
            tl.store(sv + 2 * H, g_t, mask=m_bj)
            tl.store(sv + 3 * H, o_t, mask=m_bj)
        # prefetch: the next step's gx depends on no other program (after the last step: reread, unused)
        if GX4:
            gx4 = tl.load(gx_ptr + tl.minimum(t + 1, T - 1) * B * 4 * H + b4c, mask=m_bc, other=0.0)
        else:
            gx_i, gx_f, gx_g, gx_o = _gate_tiles(gx_ptr + tl.minimum(t + 1, T - 1) * B * 4 * H, b4h, m_bj, b4h, m_bj,
                                                 H, False, BLOCK_B, BLOCK_H)  # fmt: skip
        if PERSIST and (ABLATE == 0 or ABLATE == 3):  # every hidden tile of this batch tile has stored its h_t
            wait_ns, wait_spins = _grid_wait(sync_ptr + pid_b * T + t, n_htiles, err_ptr, wait_ns, wait_spins, POLL)
    tl.store(cs_ptr + (t_start + n_steps) * B * H + bh, c, mask=m_bj)  # the carried (or final) cell state


def _bwd_kernel(
    dy_ptr,  # (T, B, H) dLoss/dh_t from above (the output's gradient), any float dtype
    dhn_ptr,  # (B, H) dLoss/dh_T (the final state's gradient), any float dtype
    w_ptr,  # (4H, H) W_hh, input dtype
    cs_ptr,  # (T+1, B, H) ACC: cs[t+1] = c_t
    gates_ptr,  # (T, B, 4H) ACC: i, f, g, o
    da_ptr,  # (T+1, B, 4H) input dtype: da[t] = dLoss/da_t on exit; da[T] = 0 on entry
    dc_ptr,  # (B, H) ACC: dLoss/dc at step t_start on entry, carried dc on exit
    sync_ptr,  # (n_btiles, T) int32 zeros
    err_ptr,
    t_start,  # LAST step index of this launch (the loop goes down)
    n_steps,
    T,
    B,
    H,
    n_htiles,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_K: tl.constexpr,
    H_PAD: tl.constexpr,
    ACC: tl.constexpr,
    DOT: tl.constexpr,
    PRECISION: tl.constexpr,
    PERSIST: tl.constexpr,
    RESIDENT: tl.constexpr,
    TIMEOUT_NS: tl.constexpr,
    POLL: tl.constexpr,  # barrier wait: 2 tl.atomic_poll (triton >= 3.9), 1 acquire-load spin, 0 atomic spin
    SPIN_LIMIT: tl.constexpr,  # barrier spins before a timeout is flagged when there is no atomic_poll
    # variants: as in _fwd_kernel, plus
    rec_ptr=None,
    wch_ptr=None,
    zh_ptr=None,
    zc_ptr=None,
    valid_ptr=None,
    dhc_ptr=None,  # (B, H) ACC: dLoss/dh carried by zoneout / padding; zeros on the first launch, on exit
    # the part of dLoss/dh_0 carried past step 0
    clip=0.0,
    xs_ptr=None,  # (T+1, B, 4H) int32 / int64: da_t packed with a ready flag (LL)
    LL: tl.constexpr = False,
    XS_BITS: tl.constexpr = 32,
    LL_SPIN: tl.constexpr = True,
    # layer norm: as in _fwd_kernel; with LN, da_ptr receives dLoss/dr (r = h_in W_hh^T, what W_hh and the
    # exchange need) and dgx_ptr dLoss/da (a = gx + LN(r) g_hh: the input projection's gradient)
    lnhh_ptr=None,
    lncw_ptr=None,
    lncb_ptr=None,
    st_ptr=None,  # (T, 2, n_htiles, B, 2) int64 zeros
    rh_ptr=None,  # (T, B, 4H) ACC saved by forward
    rs_ptr=None,  # (T, B, 3) ACC saved by forward
    dgx_ptr=None,  # (T, B, 4H) input dtype, out
    dln_ptr=None,  # (6H) ACC zeros, out: gradients of lnhh (4H), lncw (H), lncb (H), summed with atomics
    ln_units=0,
    LN: tl.constexpr = False,
    NH_PAD: tl.constexpr = 1,
    ST_RAW: tl.constexpr = False,
    ST_SYNC: tl.constexpr = False,
    stc_ptr=None,
    RDROP: tl.constexpr = False,
    PEEP: tl.constexpr = False,
    CIFG: tl.constexpr = False,
    CLIP: tl.constexpr = False,
    ZONE_H: tl.constexpr = False,
    ZONE_C: tl.constexpr = False,
    VALID: tl.constexpr = False,
    # the gates / da as (BLOCK_B, 4 BLOCK_H) tiles (one load, one store, split and joined in registers; not LL's
    # words, which stay per gate), and with streamed weights dh = da_{t+1} W_hh[:, j] as one K loop over all 4H
    # rows (resident weights keep four products: one over 4H would hold a (BLOCK_B, 4 H_PAD) operand in shared
    # memory, 256 KB of bf16 at (20, 656), which does not fit)
    FUSE: tl.constexpr = False,
):
    pid_h = tl.program_id(0)
    pid_b = tl.program_id(1)
    offs_b = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_j = pid_h * BLOCK_H + tl.arange(0, BLOCK_H)
    mb = offs_b < B
    mj = offs_j < H
    m_bj = mb[:, None] & mj[None, :]
    bh = offs_b[:, None] * H + offs_j[None, :]
    b4h = offs_b[:, None] * (4 * H) + offs_j[None, :]
    if FUSE:  # my units of all four gates side by side: column gate * BLOCK_H + j of a (B, 4H) slab
        offs_c = tl.arange(0, 4 * BLOCK_H)
        j_c = pid_h * BLOCK_H + offs_c % BLOCK_H
        m_bc = mb[:, None] & (j_c < H)[None, :]
        b4c = offs_b[:, None] * (4 * H) + ((offs_c // BLOCK_H) * H + j_c)[None, :]
    else:  # (unused: _gate_tiles reads per gate)
        m_bc, b4c = m_bj, b4h
    if RESIDENT:
        offs_k = tl.arange(0, H_PAD)
        mk = offs_k < H
        m_bk = mb[:, None] & mk[None, :]
        b4k = offs_b[:, None] * (4 * H) + offs_k[None, :]  # (BLOCK_B, H_PAD) in a (B, 4H) slab
        # columns j of each gate block, W_hh[g*H + k, j] as (H_PAD, BLOCK_H), loaded once
        w_c = offs_k[:, None] * H + offs_j[None, :]
        m_kj = mk[:, None] & mj[None, :]
        w_i = tl.load(w_ptr + 0 * H * H + w_c, mask=m_kj, other=0.0).to(DOT)
        w_f = tl.load(w_ptr + 1 * H * H + w_c, mask=m_kj, other=0.0).to(DOT)
        w_g = tl.load(w_ptr + 2 * H * H + w_c, mask=m_kj, other=0.0).to(DOT)
        w_o = tl.load(w_ptr + 3 * H * H + w_c, mask=m_kj, other=0.0).to(DOT)
    dc = tl.load(dc_ptr + bh, mask=m_bj, other=0.0).to(ACC)  # carried dLoss/dc_t
    if RDROP:  # my units' recurrent-dropout mask: dh_{t-1} gets (da_t W_hh)[:, j] * rec[:, j]
        rec_own = tl.load(rec_ptr + bh, mask=m_bj, other=0.0).to(ACC)
    if PEEP:
        w_ci, w_cf, w_co, _ = _unit_rows(wch_ptr, 3, offs_j, mj, H, ACC)
    if LN:
        g_hi, g_hf, g_hg, g_ho = _unit_rows(lnhh_ptr, 4, offs_j, mj, H, ACC)
        g_c, b_c = _unit_rows(lncw_ptr, 1, offs_j, mj, H, ACC)[0], _unit_rows(lncb_ptr, 1, offs_j, mj, H, ACC)[0]
        offs_nh = tl.arange(0, NH_PAD)
        m_st = (offs_nh[:, None] < n_htiles) & mb[None, :]
        st_rd = offs_nh[:, None] * B * 2 + offs_b[None, :] * 2
        cnt = tl.full([NH_PAD, 1], 0.0, ACC)  # (plain sums below: no tile weights; padded units add 0)
        acc_hi = tl.full([BLOCK_B, BLOCK_H], 0.0, ACC)  # sums over t of da * r_hat: dLoss/dg_hh, my columns
        acc_hf = tl.full([BLOCK_B, BLOCK_H], 0.0, ACC)
        acc_hg = tl.full([BLOCK_B, BLOCK_H], 0.0, ACC)
        acc_ho = tl.full([BLOCK_B, BLOCK_H], 0.0, ACC)
        acc_cw = tl.full([BLOCK_B, BLOCK_H], 0.0, ACC)  # dn * c_hat: dLoss/dg_c
        acc_cb = tl.full([BLOCK_B, BLOCK_H], 0.0, ACC)  # dn: dLoss/db_c
    dh_keep = tl.full([BLOCK_B, BLOCK_H], 0.0, ACC)  # dLoss/dh_t carried from step t+1 by zoneout / padding
    if ZONE_H or VALID:  # ... and from the previous launch (step-wise mode)
        dh_keep = tl.load(dhc_ptr + bh, mask=m_bj, other=0.0).to(ACC)
    wait_ns = tl.full([], TIMEOUT_NS, tl.int64)
    wait_spins = tl.full([], SPIN_LIMIT, tl.int32)
    dh_n = tl.load(dhn_ptr + bh, mask=m_bj, other=0.0).to(ACC)
    # what step t_start needs from this program alone; later steps' is loaded before each barrier
    dy_t = tl.load(dy_ptr + t_start * B * H + bh, mask=m_bj, other=0.0)
    i_n, f_n, g_n, o_n = _gate_tiles(gates_ptr + t_start * B * 4 * H, b4h, m_bj, b4c, m_bc, H, FUSE, BLOCK_B, BLOCK_H)
    c_n = tl.load(cs_ptr + (t_start + 1) * B * H + bh, mask=m_bj, other=0.0)
    c_p = tl.load(cs_ptr + t_start * B * H + bh, mask=m_bj, other=0.0)
    for s in range(n_steps):
        t = t_start - s
        i_t, f_t, g_t, o_t, c_t, c_prev = i_n, f_n, g_n, o_n, c_n, c_p
        # dh_t = dy_t + [t = T-1] dh_T + da_{t+1} W_hh (the recurrence; da_T = 0)
        is_last = (t == T - 1).to(ACC)  # dh_T enters at the last step only
        dh = tl.full([BLOCK_B, BLOCK_H], 0.0, ACC)  # the recurrent part first (RDROP scales it)
        da_n = da_ptr + (t + 1) * B * 4 * H
        if RESIDENT and LL:  # spin until the four gate tiles of da_{t+1} all carry their ready flags
            xn = xs_ptr + (t + 1) * B * 4 * H + b4k
            x0 = tl.load(xn + 0 * H, mask=m_bk, other=1, volatile=True)
            x1 = tl.load(xn + 1 * H, mask=m_bk, other=1, volatile=True)
            x2 = tl.load(xn + 2 * H, mask=m_bk, other=1, volatile=True)
            x3 = tl.load(xn + 3 * H, mask=m_bk, other=1, volatile=True)
            if LL_SPIN:
                ready = tl.reduce(tl.reduce((x0 & x1 & x2 & x3 & 1).to(tl.int32), 1, _min), 0, _min)
                spins = 0
                while (ready == 0) & (spins < wait_spins):
                    x0 = tl.load(xn + 0 * H, mask=m_bk, other=1, volatile=True)
                    x1 = tl.load(xn + 1 * H, mask=m_bk, other=1, volatile=True)
                    x2 = tl.load(xn + 2 * H, mask=m_bk, other=1, volatile=True)
                    x3 = tl.load(xn + 3 * H, mask=m_bk, other=1, volatile=True)
                    ready = tl.reduce(tl.reduce((x0 & x1 & x2 & x3 & 1).to(tl.int32), 1, _min), 0, _min)
                    spins += 1
                if ready == 0:
                    tl.atomic_xchg(err_ptr, 1)
                    wait_spins = wait_spins * 0
            if XS_BITS == 64:
                d0 = (x0 >> 32).to(tl.int32).to(tl.float32, bitcast=True)
                d1 = (x1 >> 32).to(tl.int32).to(tl.float32, bitcast=True)
                d2 = (x2 >> 32).to(tl.int32).to(tl.float32, bitcast=True)
                d3 = (x3 >> 32).to(tl.int32).to(tl.float32, bitcast=True)
            else:
                d0 = (x0 >> 16).to(tl.int16).to(da_ptr.dtype.element_ty, bitcast=True)
                d1 = (x1 >> 16).to(tl.int16).to(da_ptr.dtype.element_ty, bitcast=True)
                d2 = (x2 >> 16).to(tl.int16).to(da_ptr.dtype.element_ty, bitcast=True)
                d3 = (x3 >> 16).to(tl.int16).to(da_ptr.dtype.element_ty, bitcast=True)
            dh = tl.dot(d0.to(DOT), w_i, dh, input_precision=PRECISION, out_dtype=ACC)
            dh = tl.dot(d1.to(DOT), w_f, dh, input_precision=PRECISION, out_dtype=ACC)
            dh = tl.dot(d2.to(DOT), w_g, dh, input_precision=PRECISION, out_dtype=ACC)
            dh = tl.dot(d3.to(DOT), w_o, dh, input_precision=PRECISION, out_dtype=ACC)
        elif RESIDENT:
            d = tl.load(da_n + b4k + 0 * H, mask=m_bk, other=0.0, cache_modifier=".cg").to(DOT)
            dh = tl.dot(d, w_i, dh, input_precision=PRECISION, out_dtype=ACC)
            d = tl.load(da_n + b4k + 1 * H, mask=m_bk, other=0.0, cache_modifier=".cg").to(DOT)
            dh = tl.dot(d, w_f, dh, input_precision=PRECISION, out_dtype=ACC)
            d = tl.load(da_n + b4k + 2 * H, mask=m_bk, other=0.0, cache_modifier=".cg").to(DOT)
            dh = tl.dot(d, w_g, dh, input_precision=PRECISION, out_dtype=ACC)
            d = tl.load(da_n + b4k + 3 * H, mask=m_bk, other=0.0, cache_modifier=".cg").to(DOT)
            dh = tl.dot(d, w_o, dh, input_precision=PRECISION, out_dtype=ACC)
        elif FUSE:  # chunks of the 4H rows, gate after gate
            for k0 in range(0, 4 * H, BLOCK_K):
                offs_k = k0 + tl.arange(0, BLOCK_K)
                mk = offs_k < 4 * H
                d = tl.load(da_n + offs_b[:, None] * (4 * H) + offs_k[None, :], mask=mb[:, None] & mk[None, :],
                            other=0.0, cache_modifier=".cg").to(DOT)  # fmt: skip
                w = tl.load(w_ptr + offs_k[:, None] * H + offs_j[None, :], mask=mk[:, None] & mj[None, :],
                            other=0.0).to(DOT)  # fmt: skip
                dh = tl.dot(d, w, dh, input_precision=PRECISION, out_dtype=ACC)
        else:
            for k0 in range(0, H, BLOCK_K):
                offs_k = k0 + tl.arange(0, BLOCK_K)
                mk = offs_k < H
                m_bk = mb[:, None] & mk[None, :]
                m_kj = mk[:, None] & mj[None, :]
                d_t = da_n + offs_b[:, None] * (4 * H) + offs_k[None, :]  # (BLOCK_B, BLOCK_K)
                w_c = w_ptr + offs_k[:, None] * H + offs_j[None, :]  # (BLOCK_K, BLOCK_H)
                for g in tl.static_range(4):
                    d = tl.load(d_t + g * H, mask=m_bk, other=0.0, cache_modifier=".cg").to(DOT)
                    w = tl.load(w_c + g * H * H, mask=m_kj, other=0.0).to(DOT)
                    dh = tl.dot(d, w, dh, input_precision=PRECISION, out_dtype=ACC)
        if RDROP:
            dh = dh * rec_own
        dh += dy_t.to(ACC) + dh_n * is_last + dh_keep  # dLoss/dh_t, all of it
        # cell, backwards
        if PEEP or CLIP or ZONE_C or VALID:  # c'_t (before zoneout / padding) recomputed from the gates
            u = f_t * c_prev + i_t * g_t
            c_t = u
            if CLIP:
                c_t = tl.minimum(tl.maximum(u, -clip), clip)
        if ZONE_H or VALID:  # h_t = k h_{t-1} + (1 - k) h'_t
            keep_h = dh * 0.0
            if ZONE_H:
                keep_h = tl.load(zh_ptr + t * B * H + bh, mask=m_bj, other=0.0).to(ACC)
            if VALID:
                ok = tl.load(valid_ptr + t * B + offs_b, mask=mb, other=0.0).to(ACC)[:, None]
                keep_h = ok * keep_h + (1.0 - ok)
            dh_keep = keep_h * dh
            dh = (1.0 - keep_h) * dh
        dc_keep = dc * 0.0
        if ZONE_C or VALID:  # c_t = k c_{t-1} + (1 - k) c'_t
            keep_c = dc * 0.0
            if ZONE_C:
                keep_c = tl.load(zc_ptr + t * B * H + bh, mask=m_bj, other=0.0).to(ACC)
            if VALID:
                keep_c = ok * keep_c + (1.0 - ok)
            dc_keep = keep_c * dc
            dc = (1.0 - keep_c) * dc
        if LN:  # h' = o tanh(n), n = c_hat g_c + b_c, c_hat = (c' - mu_c) rstd_c
            mu_c = tl.load(rs_ptr + t * B * 3 + offs_b * 3 + 1, mask=mb, other=0.0)[:, None]
            rstd_c = tl.load(rs_ptr + t * B * 3 + offs_b * 3 + 2, mask=mb, other=0.0)[:, None]
            c_hat = (c_t - mu_c) * rstd_c
            tanh_c = 2.0 / (1.0 + tl.exp(-2.0 * (c_hat * g_c + b_c))) - 1.0
            do = dh * tanh_c
            dn = dh * o_t * (1.0 - tanh_c * tanh_c)
            acc_cw += dn * c_hat
            acc_cb += dn
            dch = dn * g_c
            p1 = tl.reduce(dch, 1, _add)
            p2 = tl.reduce(dch * c_hat, 1, _add)
            u1, u2, wait_ns, wait_spins = _exchange_sums(
                st_ptr, (t * 2 + 1) * n_htiles * B * 2, pid_h, offs_b, mb, m_st, st_rd, p1, p2, B, wait_ns,
                wait_spins, err_ptr, cnt, H, stc_ptr, (pid_b * T + t) * 2 + 1, n_htiles, ACC, ST_RAW, LL_SPIN, False,
                ST_SYNC, POLL)  # fmt: skip
            m1 = u1 / ln_units  # means over the layer's units (padded ones: zero gains, they add 0 to u1, u2)
            m2 = u2 / ln_units
            dc = dc + rstd_c * (dch - m1[:, None] - c_hat * m2[:, None])  # dLoss/dc'_t
        else:
            tanh_c = 2.0 / (1.0 + tl.exp(-2.0 * c_t)) - 1.0
            do = dh * tanh_c
            dc = dc + dh * o_t * (1.0 - tanh_c * tanh_c)  # dLoss/dc'_t
        da_o = do * o_t * (1.0 - o_t)
        if PEEP:
            dc += da_o * w_co
        if CLIP:  # d clip(u)/du = 1 inside [-clip, clip]
            dc = tl.where((u >= -clip) & (u <= clip), dc, 0.0)
        if CIFG:  # i = 1 - f: di flows into f with a minus sign
            da_i = dc * 0.0
            da_f = dc * (c_prev - g_t) * f_t * (1.0 - f_t)
        else:
            da_i = dc * g_t * i_t * (1.0 - i_t)
            da_f = dc * c_prev * f_t * (1.0 - f_t)
        da_g = dc * i_t * (1.0 - g_t * g_t)
        dc = dc * f_t + dc_keep  # dLoss/dc_{t-1}
        if PEEP:
            dc += da_i * w_ci + da_f * w_cf
        if LN:  # da -> dgx; then through the recurrent LN: dr = rstd (dr_hat - mean(dr_hat) - r_hat mean(dr_hat r_hat))
            gv = dgx_ptr + t * B * 4 * H + b4h
            tl.store(gv + 0 * H, da_i.to(dgx_ptr.dtype.element_ty), mask=m_bj)
            tl.store(gv + 1 * H, da_f.to(dgx_ptr.dtype.element_ty), mask=m_bj)
            tl.store(gv + 2 * H, da_g.to(dgx_ptr.dtype.element_ty), mask=m_bj)
            tl.store(gv + 3 * H, da_o.to(dgx_ptr.dtype.element_ty), mask=m_bj)
            rv = rh_ptr + t * B * 4 * H + b4h
            r_i = tl.load(rv + 0 * H, mask=m_bj, other=0.0)
            r_f = tl.load(rv + 1 * H, mask=m_bj, other=0.0)
            r_g = tl.load(rv + 2 * H, mask=m_bj, other=0.0)
            r_o = tl.load(rv + 3 * H, mask=m_bj, other=0.0)
            acc_hi += da_i * r_i
            acc_hf += da_f * r_f
            acc_hg += da_g * r_g
            acc_ho += da_o * r_o
            e_i = da_i * g_hi
            e_f = da_f * g_hf
            e_g = da_g * g_hg
            e_o = da_o * g_ho
            p1 = tl.reduce(e_i + e_f + e_g + e_o, 1, _add)
            p2 = tl.reduce(e_i * r_i + e_f * r_f + e_g * r_g + e_o * r_o, 1, _add)
            u1, u2, wait_ns, wait_spins = _exchange_sums(
                st_ptr, (t * 2 + 0) * n_htiles * B * 2, pid_h, offs_b, mb, m_st, st_rd, p1, p2, B, wait_ns,
                wait_spins, err_ptr, cnt, H, stc_ptr, (pid_b * T + t) * 2 + 0, n_htiles, ACC, ST_RAW, LL_SPIN, False,
                ST_SYNC, POLL)  # fmt: skip
            n1 = u1[:, None] / (4 * ln_units)
            n2 = u2[:, None] / (4 * ln_units)
            rstd = tl.load(rs_ptr + t * B * 3 + offs_b * 3, mask=mb, other=0.0)[:, None]
            da_i = rstd * (e_i - n1 - r_i * n2)  # now dLoss/dr: what W_hh and the other programs need
            da_f = rstd * (e_f - n1 - r_f * n2)
            da_g = rstd * (e_g - n1 - r_g * n2)
            da_o = rstd * (e_o - n1 - r_o * n2)
        out = da_ptr + t * B * 4 * H + b4h
        q_i = da_i.to(da_ptr.dtype.element_ty)
        q_f = da_f.to(da_ptr.dtype.element_ty)
        q_g = da_g.to(da_ptr.dtype.element_ty)
        q_o = da_o.to(da_ptr.dtype.element_ty)
        if LL:  # publish first: it is what the other programs wait for
            xo = xs_ptr + t * B * 4 * H + b4h
            if XS_BITS == 64:
                tl.store(xo + 0 * H, (q_i.to(tl.int32, bitcast=True).to(tl.int64) << 32) | 1, mask=m_bj,
                         cache_modifier=".cg")  # fmt: skip
                tl.store(xo + 1 * H, (q_f.to(tl.int32, bitcast=True).to(tl.int64) << 32) | 1, mask=m_bj,
                         cache_modifier=".cg")  # fmt: skip
                tl.store(xo + 2 * H, (q_g.to(tl.int32, bitcast=True).to(tl.int64) << 32) | 1, mask=m_bj,
                         cache_modifier=".cg")  # fmt: skip
                tl.store(xo + 3 * H, (q_o.to(tl.int32, bitcast=True).to(tl.int64) << 32) | 1, mask=m_bj,
                         cache_modifier=".cg")  # fmt: skip
            else:
                tl.store(xo + 0 * H, (q_i.to(tl.int16, bitcast=True).to(tl.int32) << 16) | 1, mask=m_bj,
                         cache_modifier=".cg")  # fmt: skip
                tl.store(xo + 1 * H, (q_f.to(tl.int16, bitcast=True).to(tl.int32) << 16) | 1, mask=m_bj,
                         cache_modifier=".cg")  # fmt: skip
                tl.store(xo + 2 * H, (q_g.to(tl.int16, bitcast=True).to(tl.int32) << 16) | 1, mask=m_bj,
                         cache_modifier=".cg")  # fmt: skip
                tl.store(xo + 3 * H, (q_o.to(tl.int16, bitcast=True).to(tl.int32) << 16) | 1, mask=m_bj,
                         cache_modifier=".cg")  # fmt: skip
        if FUSE:
            tl.store(da_ptr + t * B * 4 * H + b4c, _join4(q_i, q_f, q_g, q_o, BLOCK_B, BLOCK_H), mask=m_bc)
        else:
            tl.store(out + 0 * H, q_i, mask=m_bj)
            tl.store(out + 1 * H, q_f, mask=m_bj)
            tl.store(out + 2 * H, q_g, mask=m_bj)
            tl.store(out + 3 * H, q_o, mask=m_bj)
        if PERSIST:  # da_t is out
            _grid_arrive(sync_ptr + pid_b * T + t)
        # prefetch step t-1's own inputs (after step 0: reread, unused); its c_t is this step's c_prev
        t_n = tl.maximum(t - 1, 0)
        dy_t = tl.load(dy_ptr + t_n * B * H + bh, mask=m_bj, other=0.0)
        i_n, f_n, g_n, o_n = _gate_tiles(gates_ptr + t_n * B * 4 * H, b4h, m_bj, b4c, m_bc, H, FUSE, BLOCK_B, BLOCK_H)
        c_n = c_prev
        c_p = tl.load(cs_ptr + t_n * B * H + bh, mask=m_bj, other=0.0)
        if PERSIST:
            wait_ns, wait_spins = _grid_wait(sync_ptr + pid_b * T + t, n_htiles, err_ptr, wait_ns, wait_spins, POLL)
    tl.store(dc_ptr + bh, dc, mask=m_bj)
    if ZONE_H or VALID:
        tl.store(dhc_ptr + bh, dh_keep, mask=m_bj)
    if LN:  # the LN parameters' gradients: my columns, summed over my rows, added across batch tiles
        tl.atomic_add(dln_ptr + offs_j, tl.reduce(acc_hi, 0, _add), mask=mj)
        tl.atomic_add(dln_ptr + H + offs_j, tl.reduce(acc_hf, 0, _add), mask=mj)
        tl.atomic_add(dln_ptr + 2 * H + offs_j, tl.reduce(acc_hg, 0, _add), mask=mj)
        tl.atomic_add(dln_ptr + 3 * H + offs_j, tl.reduce(acc_ho, 0, _add), mask=mj)
        tl.atomic_add(dln_ptr + 4 * H + offs_j, tl.reduce(acc_cw, 0, _add), mask=mj)
        tl.atomic_add(dln_ptr + 5 * H + offs_j, tl.reduce(acc_cb, 0, _add), mask=mj)


@functools.cache
def _compiled(name: str, interpret: bool):
    """The kernel ``name`` for the GPU (``triton.jit``) or the CPU interpreter."""
    fn = {"fwd": _fwd_kernel, "bwd": _bwd_kernel}[name]
    if interpret:  # the same code, with the helpers it calls interpreted too (and they each other)
        g = dict(fn.__globals__)  # (bfloat16 stores rounded to nearest, as on the GPU: interpreter.install)
        for k, f in _HELPERS.items():
            g[k] = interpreter.interpreted(f, g)
        return interpreter.interpreted(fn, g)
    # step indices and counts change from launch to launch: specialising on them (== 1, % 16) would compile
    # the same kernel up to three times (and layer norm's unit count only scales its statistics)
    return triton.jit(fn, do_not_specialize=["t_start", "n_steps", "T", "n_htiles", "ln_units"])


#: jit helpers the kernels call: compiled for the GPU here; the interpreter gets its own copies (_compiled)
_HELPERS = {"_exchange_sums": _exchange_sums, "_grid_arrive": _grid_arrive, "_grid_wait": _grid_wait,
            "_unit_rows": _unit_rows, "_gates4": _gates4, "_join4": _join4, "_gate_tiles": _gate_tiles}
if HAVE_TRITON:
    _add = triton.jit(_add)
    _min = triton.jit(_min)
    _exchange_sums = triton.jit(_exchange_sums)
    _grid_arrive = triton.jit(_grid_arrive)
    _grid_wait = triton.jit(_grid_wait)
    _unit_rows = triton.jit(_unit_rows)
    _gates4 = triton.jit(_gates4)
    _join4 = triton.jit(_join4)
    _gate_tiles = triton.jit(_gate_tiles)

# ---------------------------------------------------------------------------------------------
# Launch plan
# ---------------------------------------------------------------------------------------------


class Plan:
    """How a (B, H, dtype, device) recurrence is tiled and launched; ``repr`` shows it.

    On a GPU, the heuristic (:func:`tuned_plan` measures the candidates instead): the smallest hidden tile
    (8 .. 128 units) whose grid fits the SMs and whose on-chip tiles fit ``SMEM_BUDGET`` -> persistent +
    resident (not float32 with tf32x3 products, which spill there: streamed unless ``resident=True``);
    else a grid that fits the SMs with weights streamed from L2 -> persistent; else step-wise.
    ``mode`` forces ``persistent`` or ``stepwise``; ``tiles`` = (BLOCK_B, BLOCK_H[, BLOCK_K]) and
    ``resident`` override the tiling (tests and tuning); ``sm_count`` lets one plan without a GPU.
    """

    def __init__(
        self, B: int, H: int, dtype: torch.dtype, device: torch.device, mode: str = "auto",
        tiles: tuple[int, ...] | None = None, resident: bool | None = None, sm_count: int | None = None,
        poll: int | None = None, ll: bool | None = None, ln_sync: bool | None = None, fuse: bool | None = None,
        precision: str | None = None, stages: int | None = None, warps: int | None = None,
    ):  # fmt: skip
        if mode not in ("auto", "persistent", "stepwise"):
            raise ValueError(f"mode must be 'auto', 'persistent' or 'stepwise', got {mode!r}")
        if stages is not None and not (isinstance(stages, int) and 2 <= stages <= 6):
            raise ValueError(f"stages (the K loop's software pipeline depth) must be 2..6 or None, got {stages!r}")
        # the K loop's pipeline depth (triton's num_stages; None: triton's default, 3 on sm_90)
        self.stages = stages
        self.interpret = device.type != "cuda"
        self.dtype = dtype
        # Matters for float32 only (bf16/fp16 products are exact in fp32): tf32 when torch allows it, else
        # FP32_PRECISION or the given ``precision`` ("tf32x3" or "ieee"; tuning times both). Ignored by the
        # interpreter.
        self.precision = _precision(dtype)
        if precision is not None and precision != self.precision:
            if self.precision not in FP32_CHOICES or precision not in FP32_CHOICES:
                raise ValueError(
                    f"precision={precision!r}: the float32 products can be {' or '.join(map(repr, FP32_CHOICES))}, "
                    f"and only for float32 without TF32 (this call's are {self.precision!r}: {dtype}, "
                    f"TF32 {'on' if gemm.tf32_allowed() else 'off'}); leave precision=None"
                )  # fmt: skip
            self.precision = precision
        self._split = self.precision == "tf32x3"
        self.H_PAD = max(16, _next_pow2(H))
        self.BLOCK_K = 64 if not self.interpret else 16
        size = dtype.itemsize
        if self.interpret:
            sms = 1 << 30
            self.BLOCK_B, self.BLOCK_H = 16, 16
        else:
            sms = sm_count if sm_count is not None else _sm_count(device)
            self.BLOCK_B = 16 if B <= 16 else min(64, _next_pow2(B))
            self.BLOCK_H = self._gpu_block_h(B, H, size, sms, mode, resident)
        if tiles is not None:
            lo = 1 if self.interpret else 8
            if len(tiles) not in (2, 3) or any(v < lo or v & (v - 1) for v in tiles):
                raise ValueError(f"tiles must be 2 or 3 powers of two >= {lo} on this device, got {tiles}")
            self.BLOCK_B, self.BLOCK_H = tiles[:2]
            if len(tiles) == 3:
                self.BLOCK_K = tiles[2]
        self.n_btiles = math.ceil(B / self.BLOCK_B)
        self.n_htiles = math.ceil(H / self.BLOCK_H)
        self.programs = self.n_btiles * self.n_htiles
        self.smem_bytes = _resident_smem(self.BLOCK_B, self.BLOCK_H, self.H_PAD, size, self._split)
        fits = self.interpret or self.smem_bytes <= SMEM_BUDGET
        default = fits and (self.interpret or not self._split)  # (tf32x3: streamed, see _gpu_block_h)
        self.resident = default if resident is None else resident
        if self.resident and not fits:
            raise ValueError(f"resident weights need {self.smem_bytes} bytes of shared memory (> {SMEM_BUDGET})")
        if self.interpret:
            # programs run one after another: a barrier among several hidden tiles could never be passed
            can_persist = self.n_htiles == 1
        else:
            can_persist = self.programs <= sms
        if mode == "persistent" and not can_persist:
            raise ValueError(
                f"mode='persistent' needs all {self.programs} programs resident at once, which this device "
                "cannot give (interpreter: more than one hidden tile; GPU: more programs than SMs); use mode='auto'"
            )
        self.persistent = can_persist if mode == "auto" else mode == "persistent"
        self.default_warps = 4 if self.BLOCK_B * self.BLOCK_H <= 1024 else 8
        if warps is not None and warps not in (4, 8, 16):
            raise ValueError(f"warps must be 4, 8 or 16 (a program's threads / 32), got {warps!r}")
        # (16: layer norm's wide tiles, whose backward spills at 8 warps: a tuning candidate, see _ln_candidates)
        self.num_warps = self.default_warps if warps is None else warps
        self.poll = (0 if self.interpret else GPU_POLL) if poll is None else poll
        if self.poll not in (0, 1, 2) or (self.poll == 2 and not HAVE_POLL) or (self.poll == 1 and self.interpret):
            raise ValueError(f"poll must be 0, 1 (GPU only) or 2 (triton >= 3.9), got {self.poll}")
        # LL exchange: h_t (backward: da_t) travels with its ready flag in one word; no counter barrier.
        # Needs the persistent launch, resident weights and a 16- or 32-bit dtype (flag + value in 32 / 64 bits).
        self.ll = bool(ll) if ll is not None else False
        if self.ll and not (self.persistent and self.resident and dtype in GPU_DTYPES):
            raise ValueError("ll=True needs a persistent plan with resident weights and float32/bfloat16/float16")
        self.xs_dtype = torch.int64 if dtype == torch.float32 else torch.int32
        # layer norm's row statistics: each exchange waits on one counter (a grid barrier) and then reads every
        # tile's partials once, instead of every reader spinning on every tile's flagged words (the default)
        self.ln_sync = bool(ln_sync)
        # the gates' products as one product of 4 BLOCK_H columns, gates / da as one tile (kernel switch FUSE);
        # False: per gate. Not by default for tf32x3 at 32+ batch rows, where the fused forward tile (two TF32
        # parts per operand) spills more (benchmarks/sass_loop.py: 16 -> 168 bytes at (256, 1024), 0 -> 48 at
        # (20, 656)); tuning times both ways for each kernel (candidates)
        self.fuse = not (self._split and self.BLOCK_B >= 32) if fuse is None else bool(fuse)
        self.acc = tl.float64 if dtype == torch.float64 else tl.float32
        if self.interpret and dtype == torch.bfloat16:
            self.dot = tl.float32  # the interpreter multiplies bf16 bit patterns as integers
        else:
            self.dot = {torch.float64: tl.float64, torch.float32: tl.float32, torch.bfloat16: tl.bfloat16,
                        torch.float16: tl.float16}[dtype]  # fmt: skip

    def _gpu_block_h(self, B: int, H: int, size: int, sms: int, mode: str, resident: bool | None) -> int:
        n_b = math.ceil(B / self.BLOCK_B)
        fits_sms = [bh for bh in (8, 16, 32, 64, 128) if n_b * math.ceil(H / bh) <= sms]
        # tf32x3 with resident weights spills registers at every shape compiled for sm_90 (1.4-15 KB of stack)
        # and lost every tuning run on the H200 (e.g. 257 against 13 us/step at (100, 1, 512)): not by default
        if mode != "stepwise" and resident is not False and (resident or not self._split):
            for bh in fits_sms:  # smallest tile = most SMs busy
                if _resident_smem(self.BLOCK_B, bh, self.H_PAD, size, self._split) <= SMEM_BUDGET:
                    return bh
        if mode != "stepwise" and fits_sms:
            return max(16, fits_sms[0])
        self.BLOCK_B = min(64, max(16, _next_pow2(B)))
        return 32

    def constants(self, T: int, B: int, H: int) -> dict:
        """The kernels' size arguments and compile-time constants for a (T, B, H) call."""
        return dict(
            T=T, B=B, H=H, n_htiles=self.n_htiles, BLOCK_B=self.BLOCK_B, BLOCK_H=self.BLOCK_H,
            BLOCK_K=self.BLOCK_K, H_PAD=self.H_PAD, ACC=self.acc, DOT=self.dot, PRECISION=self.precision,
            PERSIST=self.persistent and not self.ll, RESIDENT=self.resident, TIMEOUT_NS=BARRIER_TIMEOUT_NS,
            POLL=self.poll, SPIN_LIMIT=SPIN_LIMIT,
            **({"LL": True, "XS_BITS": 64 if self.xs_dtype == torch.int64 else 32, "LL_SPIN": not self.interpret}
               if self.ll else {}),
            **({"ST_SYNC": True} if self.ln_sync else {}),
            FUSE=self.fuse,
        )  # fmt: skip

    def __repr__(self) -> str:
        mode = "persistent" if self.persistent else "stepwise"
        weights = "resident" if self.resident else f"streamed by {self.BLOCK_K}"
        wait = {0: ", atomic-spin barrier", 1: ", acquire-load barrier", 2: ""}[self.poll] if self.persistent else ""
        wait = ", LL exchange (flag in the data, no barrier)" if self.ll else wait
        wait += ", layer-norm statistics behind a counter" if self.ln_sync else ""
        wait += "" if self.fuse else ", four gate products"
        if self.precision in FP32_CHOICES and self.precision != FP32_PRECISION:  # (the default goes unsaid)
            wait += ", products " + {"ieee": "ieee (fp32 FMA)", "tf32x3": "tf32x3"}[self.precision]
        wait += f", {self.stages}-stage K pipeline" if self.stages else ""
        return (f"Plan({mode}, {self.n_btiles}x{self.n_htiles} programs of {self.BLOCK_B}x{self.BLOCK_H}, "
                f"weights {weights}, warps={self.num_warps}{wait})")  # fmt: skip


#: Shared memory one resident program may use. Triton keeps the resident W_hh tile and the h_{t-1}
#: (backward: da_{t+1}) operand tile in shared memory (seen in the TTGIR and in the compile report of
#: benchmarks/gpu.py --compile-only for sm_90); an H100/H200 block may have 227 KiB.
SMEM_BUDGET = 200 * 1024
#: tl.dot precision for float32 without TF32: "tf32x3" (three TF32 tensor-core products, about fp32
#: accuracy) or "ieee" (exact fp32 FMA, no tensor cores; its large tiles spill, so tuning times it at small
#: batch only, :func:`_other_precision`).
#: Environment variable LSTMKIT_TRITON_FP32 overrides it (read at import, so worker processes agree).
FP32_PRECISION = os.environ.get("LSTMKIT_TRITON_FP32", "tf32x3")
#: the float32 product precisions a plan may take (Plan's ``precision``) when TF32 is off
FP32_CHOICES = ("tf32x3", "ieee")
if FP32_PRECISION not in FP32_CHOICES:
    raise ValueError(f"LSTMKIT_TRITON_FP32={FP32_PRECISION!r}: use one of {FP32_CHOICES}")


def _resident_smem(block_b: int, block_h: int, h_pad: int, size: int, split: bool = False) -> int:
    """Shared memory of a resident program: 4 gates x (H_PAD, BLOCK_H) weights + a (BLOCK_B, H_PAD) operand.

    ``split``: tf32x3 keeps a high and a low TF32 part of each operand (twice the bytes, as compiled for sm_90).
    """
    return (4 * block_h + block_b) * h_pad * size * (2 if split else 1)


@functools.cache
def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def plan(B: int, H: int, dtype: torch.dtype, device: torch.device | str, mode: str = "auto", **kw) -> Plan:
    """The tiling and mode the kernels would use for this batch, hidden size, dtype and device."""
    return Plan(B, H, dtype, torch.device(device), mode, **kw)


#: Check the barrier-timeout flag with a host synchronisation and raise a Python error (recoverable) instead
#: of a device-side assert (which ends the CUDA context). Benchmarks that must survive a failing plan set it;
#: environment variable LSTMKIT_TRITON_SYNC_CHECK=1.
SYNC_CHECK = os.environ.get("LSTMKIT_TRITON_SYNC_CHECK", "0") == "1"
#: Measure the candidate launch plans on the first GPU call per (kernel, B, H, dtype, device) and keep the
#: fastest (:func:`tuned_plan`). ``LSTMKIT_TRITON_TUNE=0`` uses the heuristic :class:`Plan` instead.
TUNE = os.environ.get("LSTMKIT_TRITON_TUNE", "1") != "0"
#: steps of the recurrence a tuning launch runs (per-step cost does not depend on T)
TUNE_STEPS = 32
_TUNED: dict[tuple, dict] = {}


def tune_key(kind: str, B: int, H: int, dtype: torch.dtype, device: torch.device) -> tuple:
    """What a tuned plan is kept under: kernel, batch, hidden size, dtype, device, and the float32 product
    precision (TF32 or not changes the shared memory a plan needs)."""
    idx = device.index if device.index is not None else (torch.cuda.current_device() if device.type == "cuda" else 0)
    return (kind, B, H, dtype, idx, _precision(dtype))


def _precision(dtype: torch.dtype) -> str:
    """tl.dot's input precision: matters for float32 only (bf16/fp16 products are exact in fp32)."""
    return FP32_PRECISION if dtype == torch.float32 and not gemm.tf32_allowed() else "tf32"
_TUNED_PERSISTENT: dict[tuple, tuple[float, dict]] = {}
#: the persistent candidates of each plain tuning, fastest first: key -> [plan keywords]
_PERSISTENT_RANKED: dict[tuple, list[dict]] = {}
#: layer norm times its own kernels on this many of the fastest persistent plain plans (its two row-statistic
#: exchanges per step grow with the number of hidden tiles, so the plain ranking is only a shortlist), each
#: with both ways of exchanging the statistics (flagged words, or a counter: Plan's ``ln_sync``)
LN_TUNE_TOP = 2
#: what tuning measured: key -> [(plan repr, milliseconds for TUNE_STEPS steps, or None if refused)]
TUNE_LOG: dict[tuple, list] = {}


def candidates(
    B: int, H: int, dtype: torch.dtype, device: torch.device | str, sm_count: int | None = None,
    kind: str | None = None,
) -> list[dict]:  # fmt: skip
    """The :class:`Plan` keyword sets :func:`tuned_plan` times on a GPU: the heuristic plan, every hidden tile
    of 8..64 units whose grid fits the SMs with resident weights (where they fit in shared memory; not for
    tf32x3 float32), two
    streamed tilings (more for B > 16: larger batch and hidden tiles) and the step-wise launch.
    ``kind`` ("fwd" or "bwd", for tuning): also each persistent plan with its gate products the other way
    (``fuse`` = not its default: unfused, or for tf32x3 at 32+ batch rows fused), so that tuning measures which
    way is faster for each kernel. Then, with their default gate products only: in 16-bit dtypes each streamed
    plan with K chunks of :data:`DEEP_K`, and for float32 without TF32 the persistent plans with the other
    product precision (:func:`_other_precision`). Duplicates (same ``repr``) are dropped."""
    device = torch.device(device)
    base = Plan(B, H, dtype, device, sm_count=sm_count)
    if base.interpret:
        return [{}]
    sms = sm_count if sm_count is not None else _sm_count(device)
    size = dtype.itemsize
    bb = base.BLOCK_B
    n_b = math.ceil(B / bb)
    out: list[dict] = [{}]
    for bh in (8, 16, 32, 64):
        if n_b * math.ceil(H / bh) > sms:
            continue
        # (tf32x3: resident weights spill and never won, see Plan._gpu_block_h)
        if not base._split and _resident_smem(bb, bh, base.H_PAD, size, base._split) <= SMEM_BUDGET:
            out.append(dict(mode="persistent", tiles=(bb, bh), resident=True))
        if bh in (16, 32):
            out.append(dict(mode="persistent", tiles=(bb, bh), resident=False))
    if B > 16:  # large batch: bigger streamed tiles use the tensor cores better, at fewer programs
        for bb2, bh in ((bb, 64), (2 * bb, 32), (2 * bb, 64)):
            if bb2 <= 128 and bb2 <= _next_pow2(B) and math.ceil(B / bb2) * math.ceil(H / bh) <= sms:
                out.append(dict(mode="persistent", tiles=(bb2, bh), resident=False))
    out.append(dict(mode="stepwise"))
    if kind is not None:
        plans = [(kw, Plan(B, H, dtype, device, sm_count=sm_count, **kw)) for kw in out]
        out += [{**kw, "fuse": not p.fuse} for kw, p in plans if p.persistent]
    # (the two below with their default gate products only: each twin would be another kernel to compile)
    if size == 2:  # 16-bit: streamed plans with K chunks of 128, twice the bytes in flight (:data:`DEEP_K`)
        deep = [{**kw, "tiles": (*kw["tiles"][:2], DEEP_K)} for kw in out
                if kw.get("resident") is False and "fuse" not in kw
                and _streamed_smem(*kw["tiles"][:2], DEEP_K, size) <= SMEM_BUDGET]  # fmt: skip
        if B > 16:  # large batch (the most operand bytes a step): also 4 stages deep, where they fit
            deep += [{**kw, "stages": 4} for kw in deep if _streamed_smem(*kw["tiles"], size, 4) <= SMEM_BUDGET]
        out += deep
    if base.precision in FP32_CHOICES:  # float32 without TF32: also the other product precision
        out += _other_precision(B, H, base, sms, size)
    seen, unique = set(), []
    for kw in out:
        r = repr(Plan(B, H, dtype, device, sm_count=sm_count, **kw))
        if r not in seen:
            seen.add(r)
            unique.append(kw)
    return unique


#: the K chunk of the streamed 16-bit candidates beside the default 64. A streamed step loads its operands
#: through a 3-stage cp.async pipeline, one K chunk a stage: at (256, 1024) bf16 backward, 64 chunks of
#: (64 x 64 + 64 x 32) values a step, 27.5 us/step in run 5, about 12 KB a stage and 24 KB in flight per SM:
#: at an L2 latency near a microsecond that is the ~30 GB/s per SM the step achieved, a fraction of what an
#: SM can take from L2. Chunks of 128 double the bytes in flight and halve the chunks (an estimate, not a
#: measurement: tuning times both). Their sm_90 builds (benchmarks/sass_loop.py, Triton 3.6) spill nothing in
#: bf16 at run 5's streamed tilings and up to 120 bytes at 128 x 32; float32's (tf32x3) spill 0.9-1.5 KB and
#: need up to 416 KiB of shared memory, so float32 keeps 64. At B > 16 they also come 4 stages deep (Plan's
#: ``stages``), where 4 stages fit.
DEEP_K = 128


def _streamed_smem(block_b: int, block_h: int, block_k: int, size: int, stages: int = 3) -> int:
    """Shared memory of a streamed program's K pipeline: each stage a (BLOCK_B, BLOCK_K) operand chunk and a
    (BLOCK_K, 4 BLOCK_H) weight chunk (the fused forward's; the backward's is a quarter), as compiled for sm_90."""
    return stages * (block_b * block_k + block_k * 4 * block_h) * size


def _other_precision(B: int, H: int, base: Plan, sms: int, size: int) -> list[dict]:
    """Float32 without TF32: the persistent candidates with the products in the precision ``base`` does not
    use. ``ieee`` (fp32 FMA, no tensor cores) is one product where ``tf32x3`` is three TF32 products plus
    the operands' splitting, so at small batch it may be the faster; only small tiles are offered: the
    sm_90 builds (benchmarks/sass_loop.py) keep them in registers (0-8 bytes of stack), where larger fused
    tiles spill kilobytes (forward, 4 BLOCK_H x BLOCK_B >= 4096 products, or resident with BLOCK_H >= 16:
    4-23 KB). ``tf32x3`` (the other way round, when FP32_PRECISION is ieee): the streamed tilings."""
    other = "ieee" if base.precision == "tf32x3" else "tf32x3"
    bb, out = base.BLOCK_B, []
    for bh in (8, 16, 32):
        if math.ceil(B / bb) * math.ceil(H / bh) > sms:
            continue
        if other == "ieee":
            if bh == 8 and _resident_smem(bb, bh, base.H_PAD, size) <= SMEM_BUDGET:
                out.append(dict(mode="persistent", tiles=(bb, bh), resident=True, precision=other))
            if bb * bh <= 512:
                out.append(dict(mode="persistent", tiles=(bb, bh), resident=False, precision=other))
        elif bh in (16, 32):
            out.append(dict(mode="persistent", tiles=(bb, bh), resident=False, precision=other))
    return out


def _time_launch(fn, device: torch.device, reps: int = 3, prep=None) -> float:
    """Median milliseconds of ``fn`` after one untimed call (compile or load, warm-up); ``prep()``, untimed,
    before each call (fresh buffers: their allocation and zeroing stay out of the measured window)."""
    if prep is not None:
        prep()
    fn()
    times = []
    for _ in range(reps):
        if prep is not None:
            prep()
        if device.type == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return sorted(times)[len(times) // 2]


def _tunes(device: torch.device) -> bool:
    """Whether plans are measured on this device: on a GPU, with :data:`TUNE` on (tests of the tuning path
    switch it on for the interpreter)."""
    return device.type == "cuda" and TUNE


def tuned_plan(kind: str, B: int, H: int, dtype: torch.dtype, device: torch.device, **plan_kw) -> Plan:
    """The launch plan for kernel ``kind`` ("fwd" or "bwd"): given keywords win; on a GPU with :data:`TUNE`
    on, the fastest of :func:`candidates`, timed once per process (:func:`_tune`); else the heuristic.
    ``fuse`` or ``precision`` given alone keep tuning: the tuned tiles with the gate products as asked (or,
    where tuning could not run those, the fastest tuned plan with them), the fastest tuned plan with the
    products' precision as asked."""
    plan_kw = {k: v for k, v in plan_kw.items() if v is not None and not (k == "mode" and v == "auto")}
    fuse = plan_kw.pop("fuse", None)  # (not a tiling: the tuned tiles, with the gate products as asked)
    prec = plan_kw.pop("precision", None)  # (nor this: the fastest tuned plan with these products)
    if (fuse is not None or prec is not None) and not plan_kw and _tunes(device):
        p = tuned_plan(kind, B, H, dtype, device)
        key = tune_key(kind, B, H, dtype, device)

        def ranked():  # (built only when needed: a Plan a ranked entry, a few us each)
            return (Plan(B, H, dtype, device, **kw) for kw in _PERSISTENT_RANKED.get(key, []))

        if prec is not None and p.precision != prec:
            p = next((q for q in ranked() if q.precision == prec), None) or Plan(B, H, dtype, device, precision=prec)
        if fuse is None or p.fuse == fuse:
            return p
        q = _with_fuse(p, B, H, dtype, device, fuse)
        if repr(q) in _refused(key):  # the tuned tiles the other way could not launch (e.g. their shared memory,
            # unfused backward at 128 x 32 in 16-bit): the fastest tuned plan with the products as asked, else
            # the heuristic tiles with them
            prec_kw = {"precision": p.precision} if p.precision in FP32_CHOICES else {}
            q = next((r for r in ranked() if r.fuse == fuse and r.precision == p.precision), None) or Plan(
                B, H, dtype, device, fuse=fuse, **prec_kw)  # fmt: skip
        return q
    if fuse is not None:
        plan_kw["fuse"] = fuse
    if prec is not None:
        plan_kw["precision"] = prec
    if plan_kw or not _tunes(device):
        return Plan(B, H, dtype, device, **plan_kw)
    key = tune_key(kind, B, H, dtype, device)
    if key not in _TUNED:
        cands = candidates(B, H, dtype, device, kind=kind)
        t0 = time.perf_counter()
        _TUNED[key] = _tune(kind, B, H, dtype, device, cands, key)
        log.info("triton LSTM %s (B=%d, H=%d, %s): timed %d launch plans in %.1f s (once per process; "
                 "LSTMKIT_TRITON_TUNE=0 skips), chose %r", kind, B, H, dtype, len(cands), time.perf_counter() - t0,
                 Plan(B, H, dtype, device, **_TUNED[key]))  # fmt: skip
    return Plan(B, H, dtype, device, **_TUNED[key])


def _refused(key) -> set[str]:
    """The plans (``repr``) tuning tried under ``key`` and could not run (:data:`TUNE_LOG`, no time)."""
    return {r for r, ms in TUNE_LOG.get(key, []) if ms is None}


def _random_launch(kind: str, p: Plan, T: int, B: int, H: int, dtype: torch.dtype, device: torch.device, gen,
                   ln: bool = False, **extra) -> tuple:  # fmt: skip
    """A timing harness: (``run``, ``err``, ``prep``), where ``run()`` launches kernel ``kind`` with plan ``p``
    over T steps on random data from ``gen`` (``ln``: the layer-norm kernel; ``extra``: more constants),
    ``prep()`` makes the fresh buffers each launch needs (barrier counters, layer norm's statistics words),
    to be called before each ``run()`` outside the timing, and ``err`` is the barrier-timeout flag."""
    acc = torch.float64 if dtype == torch.float64 else torch.float32

    def rnd(*shape, dt=dtype, lo=-1.0, hi=1.0):
        return (torch.rand(*shape, generator=gen, device=device, dtype=acc) * (hi - lo) + lo).to(dt)

    w = rnd(4 * H, H) / math.sqrt(H)
    err = torch.zeros(1, dtype=torch.int32, device=device)
    if kind == "fwd":
        args = (rnd(T, B, 4 * H), w, rnd(T + 1, B, H), rnd(T + 1, B, H, dt=acc),
                torch.empty(T, B, 4 * H, dtype=acc, device=device))  # gx, w, hs, cs, gates  # fmt: skip
        consts, t_first, down = {**p.constants(T, B, H), "SAVE": True}, 0, False
    else:
        args = (rnd(T, B, H), rnd(B, H), w, rnd(T + 1, B, H, dt=acc), rnd(T, B, 4 * H, dt=acc, lo=0.0),
                torch.zeros(T + 1, B, 4 * H, dtype=dtype, device=device), rnd(B, H, dt=acc))  # fmt: skip
        consts, t_first, down = p.constants(T, B, H), T - 1, True

    if ln:  # gains near 1, saved statistics as a forward would leave them, gradient outputs
        ln_p = [1.0 + 0.1 * rnd(4 * H), 1.0 + 0.1 * rnd(H), 0.1 * rnd(H)]
        saved = dict(rh_ptr=rnd(T, B, 4 * H, dt=acc), rs_ptr=rnd(T, B, 3, dt=acc, lo=0.5, hi=2.0))
        if kind == "bwd":
            saved.update(dgx_ptr=torch.empty(T, B, 4 * H, dtype=dtype, device=device),
                         dln_ptr=torch.zeros(6 * H, dtype=acc, device=device))  # fmt: skip

    fresh: dict = {}

    def prep():
        fresh["sync"] = torch.zeros(p.n_btiles, T, dtype=torch.int32, device=device)
        if kind == "fwd":
            fresh["kw"] = _ll_buffer(p, T, B, H, args[2][0], 0, device)
        else:
            fresh["kw"] = _ll_buffer(p, T, B, 4 * H, None, T, device)
        if ln:
            fresh["kw"].update(_ln_kwargs(p, T, B, device, *ln_p, {"units": H}, kind), **saved)

    def run():
        _launch(_compiled(kind, p.interpret), p, (*args, fresh["sync"], err), {**consts, **fresh["kw"], **extra}, T,
                t_first, down=down)  # fmt: skip

    return run, err, prep


def _tune(kind: str, B: int, H: int, dtype: torch.dtype, device: torch.device, cands: list[dict], key,
          ln: bool = False) -> dict:  # fmt: skip
    """The fastest of ``cands`` for kernel ``kind`` (``ln``: its layer-norm build) on random data over
    :data:`TUNE_STEPS` steps; what each took goes to :data:`TUNE_LOG` [key]. A candidate that fails to launch
    or whose barrier times out is never chosen; when all fail, the heuristic plan ({})."""
    gen = torch.Generator(device=device).manual_seed(0)
    timed = TUNE_LOG.setdefault(key, [])
    best = None
    persistent = []
    for kw in cands:
        p = Plan(B, H, dtype, device, **kw)
        run, err, prep = _random_launch(kind, p, TUNE_STEPS, B, H, dtype, device, gen, ln=ln)
        try:
            ms = _time_launch(run, device, prep=prep)
        except Exception as e:  # a plan this GPU refuses (e.g. a cooperative grid too large): not a candidate
            log.warning("tuning %s%s: %r refused: %s: %s", kind, " (layer norm)" if ln else "", p, type(e).__name__,
                        str(e)[:200])  # fmt: skip
            ms = None
        if ms is not None and int(err.item()) != 0:  # a barrier timed out: never choose this plan
            ms = None
        timed.append((repr(p), ms))
        if ms is not None and (best is None or ms < best[0]):
            best = (ms, kw)
        if ms is not None and p.persistent:
            persistent.append((ms, kw))
    if not ln and persistent:  # layer norm's shortlist, and its fallback
        persistent.sort(key=lambda r: r[0])
        _PERSISTENT_RANKED[key] = [kw for _, kw in persistent]
        _TUNED_PERSISTENT[key] = persistent[0]
    return best[1] if best is not None else {}


def step_ablation(B: int, H: int, dtype: torch.dtype, device: torch.device | str = "cuda", T: int = 256,
                  **plan_kw) -> dict:  # fmt: skip
    """Where the forward kernel's time per step goes (a GPU diagnostic; the numbers computed are wrong by
    design): microseconds per step of the tuned (or given) persistent plan as it is, without its grid
    barrier, and also without re-reading h_{t-1} (resident plans only). The differences are the barrier's
    cost and the exchange read's; what is left is the step's own work (product, cell, stores). Also the full
    step with the gate products the other way (fused if the plan is unfused, else four products as in the
    kernels before FUSE; correct numbers)."""
    device = torch.device(device)
    p = tuned_plan("fwd", B, H, dtype, device, **plan_kw)
    out = {"plan": repr(p)}
    if not p.persistent or p.ll:  # (step-wise, LL: no grid barrier to drop)
        return out
    gen = torch.Generator(device=device).manual_seed(0)
    for k, name in ((0, "full"), (1, "no barrier"), (2, "no barrier, no h read")):
        if k == 2 and not p.resident:
            continue
        run, _, prep = _random_launch("fwd", p, T, B, H, dtype, device, gen, ABLATE=k)
        out[name] = _time_launch(run, device, prep=prep) * 1e3 / T
    other = _with_fuse(p, B, H, dtype, device, not p.fuse)
    run, _, prep = _random_launch("fwd", other, T, B, H, dtype, device, gen)
    out["gate products the other way"] = _time_launch(run, device, prep=prep) * 1e3 / T
    return out


def ln_step_ablation(B: int, H: int, dtype: torch.dtype, device: torch.device | str = "cuda", T: int = 256,
                     **plan_kw) -> dict:  # fmt: skip
    """Where layer norm's forward step goes on these kernels (a GPU diagnostic; wrong numbers by design):
    microseconds per step of the layer-norm forward on its tuned plan as it is, without its two statistic
    exchanges a step (each program normalises with its own tile's statistics), and without those and the grid
    barrier; and the plain forward on its own tuned plan. full - "no statistic exchanges" is what the
    exchanges cost; what is left over the plain step is layer norm's own work."""
    device = torch.device(device)
    p = _plan_for("fwd", B, H, dtype, device, {k: plan_kw.get(k) for k in ("mode", "tiles", "resident")}, True)
    out = {"plan": repr(p)}
    gen = torch.Generator(device=device).manual_seed(0)
    for k, name in ((0, "full"), (3, "no statistic exchanges"), (4, "no statistic exchanges, no barrier")):
        run, _, prep = _random_launch("fwd", p, T, B, H, dtype, device, gen, ln=True, ABLATE=k)
        out[name] = _time_launch(run, device, prep=prep) * 1e3 / T
    plain = tuned_plan("fwd", B, H, dtype, device)
    out["plain plan"] = repr(plain)
    run, _, prep = _random_launch("fwd", plain, T, B, H, dtype, device, gen)
    out["plain full"] = _time_launch(run, device, prep=prep) * 1e3 / T
    return out


def _stage_option(p: Plan) -> dict:
    """The launch option of ``p``'s pipeline depth: none for triton's default (so the kernels' cache keys, and
    what :func:`warmup` compiles, stay those of a plan without ``stages``)."""
    return {"num_stages": p.stages} if p.stages else {}


def _launch(kernel, p: Plan, ptrs: tuple, consts: dict, T: int, t_first: int, down: bool) -> None:
    """Persistent: one launch over every step. Step-wise: one launch per step (``down``: t decreasing)."""
    unknown = set(consts) - set(kernel.arg_names)  # (the interpreter would ignore them silently)
    if unknown:
        raise TypeError(f"{kernel.fn.__name__} takes no argument(s) {sorted(unknown)}")
    grid = (p.n_htiles, p.n_btiles)
    extra = {} if p.interpret else {"num_warps": p.num_warps, **_stage_option(p)}
    if p.persistent:
        if not p.interpret and HAVE_COOPERATIVE:
            extra["launch_cooperative_grid"] = True  # co-residency guaranteed, or the launch fails
        kernel[grid](*ptrs, t_start=t_first, n_steps=T, **consts, **extra)
        return
    for s in range(T):
        kernel[grid](*ptrs, t_start=t_first - s if down else t_first + s, n_steps=1, **consts, **extra)


def warmup(
    T: int, B: int, H: int, dtype: torch.dtype, device: torch.device | str = "cuda", *, inference: bool = True,
    training: bool = True, stepwise: bool = False, tune: bool | None = None, variants: tuple[str, ...] = (),
    constants: dict | None = None, which: tuple[str, ...] = ("fwd", "bwd"), **plan_kw,
) -> int:  # fmt: skip
    """Compile, without running, the GPU kernels a (T, B, H, dtype) layer will launch; returns how many.

    Compiled kernels land in Triton's on-disk cache, so worker processes can compile in parallel for a
    parent that then only loads them (benchmarks/gpu.py does). ``stepwise`` also compiles the step-wise
    fallback. ``tune`` (default: :data:`TUNE` and no plan keywords) compiles every plan of :func:`candidates`.
    ``variants``: kernel switches of :data:`VARIANT_FLAGS` to compile in.
    Arguments must mirror :func:`_launch` exactly, or the cache keys would differ.
    ``H`` is the layer's; the kernels see it padded as the layer pads it (:func:`kernel_units`).
    ``constants``: other compile-time switches, for the kernels that take them (``{"ABLATE": 1}``);
    ``which``: of the two kernels (tuning times them separately).
    """
    acc, i32 = torch.float32, torch.int32
    n = 0
    device = torch.device(device)
    H_layer, H = H, kernel_units(H, device)
    plan_kw = {k: v for k, v in plan_kw.items() if v is not None}
    sync = {"ln_sync": True} if plan_kw.pop("ln_sync", False) else {}  # (an exchange, not a tiling: still tuned)
    if (TUNE and not plan_kw if tune is None else tune) and device.type == "cuda":  # tuned_plan times them all
        kws = [({**kw, **sync}, which) for kw in candidates(B, H, dtype, device, kind="fwd")]
    else:
        mode = plan_kw.pop("mode", "auto")
        kws = [(dict(plan_kw, mode=m, **sync), which)
               for m in dict.fromkeys([mode] + (["stepwise"] if stepwise else []))]  # fmt: skip
    for kw, kinds in kws:
        p = Plan(B, H, dtype, device, **kw)
        if p.interpret:
            raise ValueError("warmup compiles GPU kernels: pass a CUDA device")
        extra = {"num_warps": p.num_warps, "grid": (p.n_htiles, p.n_btiles), **_stage_option(p)}
        if p.persistent and HAVE_COOPERATIVE:
            extra["launch_cooperative_grid"] = True
        steps = T if p.persistent else 1
        fwd = (dtype, dtype, dtype, acc, acc, i32, i32)  # gx, w, hs, cs, gates, sync, err
        vk = {}  # variant switches and their pointers' types, as _variant_kwargs passes them
        for f in variants:
            vk[f] = True
        if "CLIP" in variants:
            vk["clip"] = 1.0
        if "LN" in variants:
            vk["NH_PAD"] = _next_pow2(p.n_htiles)
            vk["ln_units"] = H_layer
            if p.ln_sync:
                vk["ST_RAW"] = True
        if p.ll:
            vk["xs_ptr"] = _mock(p.xs_dtype)
        for save in [s for s, on in ((True, training), (False, inference)) if on and "fwd" in kinds]:
            ptrs = {a: _mock(_ptr_dtype(a, dtype, p.ln_sync)) for a in _variant_ptrs(variants, "fwd", p.ll, p.ln_sync)}
            jf = _compiled("fwd", False)
            ck = {k: v for k, v in (constants or {}).items() if k in jf.arg_names}
            jf.warmup(*fwd, t_start=0, n_steps=steps, **p.constants(T, B, H), SAVE=save, **vk, **ptrs, **ck, **extra)
            n += 1
        if training and "bwd" in kinds:
            bwd = (dtype, dtype, dtype, acc, acc, dtype, acc, i32, i32)  # dy, dhn, w, cs, gates, da, dc, sync, err
            ptrs = {a: _mock(_ptr_dtype(a, dtype, p.ln_sync)) for a in _variant_ptrs(variants, "bwd", p.ll, p.ln_sync)}
            jf = _compiled("bwd", False)
            ck = {k: v for k, v in (constants or {}).items() if k in jf.arg_names}
            jf.warmup(*bwd, t_start=T - 1, n_steps=steps, **p.constants(T, B, H), **vk, **ptrs, **ck, **extra)
            n += 1
    return n


def _mock(dtype: torch.dtype):
    """A pointer argument's stand-in for ``JITFunction.warmup``: it wraps positional torch dtypes itself,
    keyword ones not (triton 3.6-3.9)."""
    from triton.runtime.jit import MockTensor

    return MockTensor(dtype)


def compile_ahead(
    T: int, B: int, H: int, dtype: torch.dtype, *, arch: int = 90, sm_count: int = 132,
    variants: tuple[str, ...] = (), constants: dict | None = None, which: tuple[str, ...] = ("fwd", "bwd"),
    **plan_kw,
) -> dict:  # fmt: skip
    """Compile, for sm_``arch`` and without a GPU, the training kernels a (T, B, H, dtype) layer would use.

    ``variants``: kernel flags of :data:`VARIANT_FLAGS` to compile in (e.g. ``("PEEP", "ZONE_H")``).
    ``H`` is the layer's (padded here as the layer pads it, :func:`kernel_units`). ``constants``: other
    compile-time switches of the kernels that take them (e.g. ``{"ABLATE": 2}``, ``{"SAVE": False}``: the
    forward a call under ``torch.no_grad()`` launches); ``which``: of the two kernels.
    Returns ``{"fwd": CompiledKernel, "bwd": CompiledKernel}`` (``.asm["cubin"]``, ``.metadata.shared``):
    the check that the kernels build for the GPU at all, and what they cost in shared memory and registers.
    Arguments are specialised as Triton's JIT specialises a real launch (pointers 16-byte aligned, an
    integer divisible by 16 marked so, an integer equal to 1 made a constant; not the step indices and
    counts, which :func:`_compiled` exempts): without that the compiler
    sees unaligned rows and scalar loads, and the resources reported would not be the launched kernel's.
    """
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import CUDABackend
    from triton.compiler import ASTSource

    H_layer, H = H, kernel_units(H, "cuda")
    p = Plan(B, H, dtype, torch.device("cuda"), sm_count=sm_count, **plan_kw)
    ptr = {torch.float32: "*fp32", torch.bfloat16: "*bf16", torch.float16: "*fp16"}[dtype]
    kinds = {  # pointer arguments: the input dtype, float32 (ACC) or int32; the rest are int32
        "gx_ptr": ptr, "w_ptr": ptr, "hs_ptr": ptr, "cs_ptr": "*fp32", "gates_ptr": "*fp32", "sync_ptr": "*i32",
        "err_ptr": "*i32", "dy_ptr": ptr, "dhn_ptr": ptr, "da_ptr": ptr, "dc_ptr": "*fp32",
    }  # fmt: skip
    out = {}
    for name in which:
        jf = _compiled(name, False)
        consts = {k: v for k, v in p.constants(T, B, H).items() if k not in ("T", "B", "H", "n_htiles")}
        if name == "fwd":
            consts["SAVE"] = True
        for flag in VARIANT_FLAGS:
            consts[flag] = flag in variants
        used = _variant_ptrs(variants, name, p.ll, p.ln_sync)
        consts.update({a: None for a in VARIANT_PTRS if a in jf.arg_names and a not in used})
        kinds.update({a: {torch.float32: "*fp32", torch.int64: "*i64", torch.int32: "*i32"}.get(
                      _ptr_dtype(a, dtype, p.ln_sync), ptr)
                      for a in VARIANT_PTRS})  # fmt: skip
        kinds.update(clip="fp32", eps="fp32", xs_ptr="*i64" if dtype == torch.float32 else "*i32")
        if "LN" in variants:
            consts["NH_PAD"] = _next_pow2(p.n_htiles)
            consts["ST_RAW"] = p.ln_sync
        if not p.ll:
            consts["xs_ptr"] = None
        consts.update({k: v for k, v in (constants or {}).items() if k in jf.arg_names})
        for prm in inspect.signature(jf.fn).parameters.values():  # constexpr switches left at their default
            if prm.name not in consts and prm.annotation in (tl.constexpr, "tl.constexpr"):
                consts[prm.name] = prm.default
        # the integers as _launch passes them (persistent: one launch over all T steps)
        ints = dict(T=T, B=B, H=H, n_htiles=p.n_htiles, n_steps=T if p.persistent else 1,
                    t_start=0 if name == "fwd" else T - 1, ln_units=H_layer if "LN" in variants else 0)  # fmt: skip
        attrs = {}
        for a, v in ints.items():
            if a in jf.do_not_specialize:  # as the JIT leaves them: plain i32
                continue
            kind, attr = native_specialize_impl(CUDABackend, v, False, True, True)
            if kind == "constexpr":  # (== 1)
                consts[a] = v
            elif attr:
                attrs[(jf.arg_names.index(a),)] = CUDABackend.parse_attr(attr)
        sig = {a: "constexpr" if a in consts else kinds.get(a, "i32") for a in jf.arg_names}
        for a, kind in sig.items():  # torch's allocations: aligned pointers
            if kind.startswith("*"):
                attrs[(jf.arg_names.index(a),)] = CUDABackend.parse_attr("D")
        cx = {(jf.arg_names.index(k),): v for k, v in consts.items()}
        src = ASTSource(fn=jf, signature=sig, constexprs=cx, attrs=attrs)
        out[name] = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                                   options={"num_warps": p.num_warps, **_stage_option(p)})
    return out


#: the kernels' compile-time variant switches, and the pointer each one needs
VARIANT_FLAGS = ("RDROP", "PEEP", "CIFG", "CLIP", "ZONE_H", "ZONE_C", "VALID", "LN")
VARIANT_PTRS = ("rec_ptr", "wch_ptr", "zh_ptr", "zc_ptr", "valid_ptr", "hm_ptr", "dhc_ptr", "lnhh_ptr", "lncw_ptr",
                "lncb_ptr", "st_ptr", "stc_ptr", "rh_ptr", "rs_ptr", "dgx_ptr", "dln_ptr")
#: pointer arguments that are not in the input dtype: float32 (ACC) or packed int64 words
_PTR_KIND = {"dhc_ptr": "acc", "rh_ptr": "acc", "rs_ptr": "acc", "dln_ptr": "acc", "st_ptr": "i64", "stc_ptr": "i32"}


def _variant_ptrs(flags, kind: str, ll: bool = False, ln_sync: bool = False) -> set[str]:
    """The variant pointer arguments kernel ``kind`` reads or writes with these flags on (``ll``: the plan
    exchanges LL words; ``ln_sync``: layer norm's statistics behind counters)."""
    need = {"RDROP": ["rec_ptr"], "PEEP": ["wch_ptr"], "ZONE_H": ["zh_ptr"], "ZONE_C": ["zc_ptr"],
            "VALID": ["valid_ptr"],
            "LN": ["lnhh_ptr", "lncw_ptr", "lncb_ptr", "st_ptr", "rh_ptr", "rs_ptr"]}  # fmt: skip
    out = {a for f in flags for a in need.get(f, [])}
    if kind == "bwd" and ("ZONE_H" in flags or "VALID" in flags):
        out.add("dhc_ptr")
    if kind == "bwd" and "LN" in flags:
        out |= {"dgx_ptr", "dln_ptr"}
    if kind == "fwd" and "RDROP" in flags and not ll:
        out.add("hm_ptr")
    if "LN" in flags and ln_sync:
        out.add("stc_ptr")
    return out


def _ptr_dtype(name: str, dtype: torch.dtype, ln_sync: bool = False) -> torch.dtype:
    if name == "st_ptr" and ln_sync:  # plain float32 statistics behind counters, not packed words
        return torch.float32
    return {"acc": torch.float32, "i64": torch.int64, "i32": torch.int32}.get(_PTR_KIND.get(name, ""), dtype)


def _raise_on_timeout(err: Tensor, where: str) -> None:
    msg = (f"triton LSTM {where}: a grid barrier timed out (programs not co-resident?); "
           "run with mode='stepwise' and report the GPU and shape")  # fmt: skip
    if err.is_cuda and not SYNC_CHECK:  # no host sync: a device-side assert, raised at the next synchronisation
        torch._assert_async(err[0] == 0, msg)
    elif int(err.item()) != 0:
        raise RuntimeError(msg)


# ---------------------------------------------------------------------------------------------
# One layer, one direction: the autograd Function
# ---------------------------------------------------------------------------------------------


class _Recurrence(torch.autograd.Function):
    """(gx (T, B, 4H), h0 (B, H), c0 (B, H), W_hh (4H, H), w_ch (3H) | None, LN gains/bias | None) ->
    (y (T, B, H), h_T, c_T).

    ``var``: the variants (:func:`_variant_args`): compile-time flags and the masks / valid tensors,
    which get no gradient; ``w_ch`` (peepholes) and the layer-norm parameters ``ln_hh`` (4H), ``ln_cw``,
    ``ln_cb`` (H) do. Layer norm needs a persistent plan (its row statistics are exchanged within the launch).
    """

    @staticmethod
    def forward(ctx, gx: Tensor, h0: Tensor, c0: Tensor, w_hh: Tensor, w_ch: Tensor | None, ln_hh: Tensor | None,
                ln_cw: Tensor | None, ln_cb: Tensor | None, plan_kw: dict, var: dict, grad: bool,
                copy_out: bool = True):  # fmt: skip
        T, B, G = gx.shape
        H = G // 4
        dtype, dev = gx.dtype, gx.device
        ln = ln_hh is not None
        p = _plan_for("fwd", B, H, dtype, dev, plan_kw, ln)
        acc = torch.float64 if dtype == torch.float64 else torch.float32
        gx = gx.contiguous()
        w_hh = w_hh.to(dtype).contiguous()
        # (inside forward grad mode is always off and needs_input_grad ignores torch.no_grad(): the caller says)
        save = grad and any(ctx.needs_input_grad[:8])
        hs = torch.empty(T + 1, B, H, dtype=dtype, device=dev)  # h_0 .. h_T
        cs = torch.empty(T + 1, B, H, dtype=acc, device=dev)  # c_0 .. c_T
        hs[0] = h0
        cs[0] = c0
        gates = torch.empty(T if save else 1, B, G, dtype=acc, device=dev)  # i, f, g, o per step
        sync = torch.zeros(p.n_btiles, max(T, 1), dtype=torch.int32, device=dev)
        err = torch.zeros(1, dtype=torch.int32, device=dev)
        vk = _variant_kwargs(var, w_ch, "fwd")
        if "RDROP" in vk and not p.ll:  # the exchanged operand h_t * rec (the kernels write it; h_0's here)
            vk["hm_ptr"] = torch.empty(T + 1, B, H, dtype=dtype, device=dev)
            vk["hm_ptr"][0] = (hs[0].to(acc) * var["rec"].to(acc)).to(dtype)
        rh = rs = None
        if ln:  # normalised recurrent projection and the row statistics, for backward
            rh = torch.empty(T if save else 1, B, G, dtype=acc, device=dev)
            rs = torch.empty(T if save else 1, B, 3, dtype=acc, device=dev)
            vk.update(_ln_kwargs(p, T, B, dev, ln_hh, ln_cw, ln_cb, var, "fwd"), rh_ptr=rh, rs_ptr=rs)
        if T > 0:
            ll = _ll_buffer(p, T, B, H, hs[0], 0, dev)
            _launch(_compiled("fwd", p.interpret), p, (gx, w_hh, hs, cs, gates, sync, err),
                    {**p.constants(T, B, H), "SAVE": save, **vk, **ll}, T, 0, down=False)  # fmt: skip
            _raise_on_timeout(err, "forward")
        ctx.save_for_backward(hs, cs, gates, w_hh, w_ch, ln_hh, ln_cw, ln_cb, rh, rs)
        ctx.plan_kw, ctx.var = plan_kw, var
        # copies, not views of the saved buffers: callers may modify outputs in place, as torch.nn.LSTM's
        # (without a backward pass nothing is saved, and y may stay a view of the buffer h_T is copied from);
        # none where the caller copies the outputs itself (``copy_out`` False: _recurrence's padded layers)
        if not copy_out:
            return hs[1:], hs[T], cs[T].to(dtype)
        return hs[1:].clone() if save else hs[1:], hs[T].clone(), cs[T].to(dtype, copy=True)

    @staticmethod
    def backward(ctx, dy: Tensor | None, dh_n: Tensor | None, dc_n: Tensor | None):
        hs, cs, gates, w_hh, w_ch, ln_hh, ln_cw, ln_cb, rh, rs = ctx.saved_tensors
        var = ctx.var
        ln = ln_hh is not None
        T1, B, H = hs.shape
        T = T1 - 1
        dtype, dev, acc = hs.dtype, hs.device, cs.dtype
        p = _plan_for("bwd", B, H, dtype, dev, ctx.plan_kw, ln)  # its own tiling: the saved layout is plan-free
        dy = torch.zeros(T, B, H, dtype=dtype, device=dev) if dy is None else dy.contiguous()
        dh_n = torch.zeros(B, H, dtype=dtype, device=dev) if dh_n is None else dh_n.contiguous()
        dc = torch.zeros(B, H, dtype=acc, device=dev) if dc_n is None else dc_n.to(acc).clone()
        # dLoss/da_t (with layer norm: dLoss/dr_t, r = h_in W_hh^T); slot T = 0: no step after the last
        da = torch.empty(T + 1, B, 4 * H, dtype=dtype, device=dev)
        da[T].zero_()
        sync = torch.zeros(p.n_btiles, max(T, 1), dtype=torch.int32, device=dev)
        err = torch.zeros(1, dtype=torch.int32, device=dev)
        vk = _variant_kwargs(var, w_ch, "bwd")
        dhc = vk.get("dhc_ptr")
        if dhc is not None:
            dhc = vk["dhc_ptr"] = torch.zeros(B, H, dtype=acc, device=dev)
        dgx = dln = None
        if ln:
            dgx = torch.empty(T, B, 4 * H, dtype=dtype, device=dev)
            dln = torch.zeros(6 * H, dtype=acc, device=dev)
            vk.update(_ln_kwargs(p, T, B, dev, ln_hh, ln_cw, ln_cb, var, "bwd"), rh_ptr=rh, rs_ptr=rs, dgx_ptr=dgx,
                      dln_ptr=dln)  # fmt: skip
        if T > 0:
            ll = _ll_buffer(p, T, B, 4 * H, None, T, dev)  # da_T = 0, published
            _launch(_compiled("bwd", p.interpret), p, (dy, dh_n, w_hh, cs, gates, da, dc, sync, err),
                    {**p.constants(T, B, H), **vk, **ll}, T, T - 1, down=True)  # fmt: skip
            _raise_on_timeout(err, "backward")
        da_t = da[:T]  # (T, B, 4H) = dLoss/dgx, or with layer norm dLoss/dr
        dgx_t = dgx if ln else da_t
        rec = var.get("rec")
        if T > 0:  # dh_0 = (da_0 W_hh) * rec (+ what zoneout / padding carried past step 0)
            dh0 = da[0].to(acc) @ w_hh.to(acc)
            dh0 = dh0 * rec.to(acc) if rec is not None else dh0
            dh0 = (dh0 + dhc if dhc is not None else dh0).to(dtype)
        else:
            dh0 = dh_n
        dw_hh = dw_ch = None
        if ctx.needs_input_grad[3]:
            # dW_hh = sum_t da_t^T (h_{t-1} * rec): (4H, T*B) @ (T*B, H) -> (4H, H), one GEMM
            h_in = hs[:T] * rec if rec is not None else hs[:T]
            dw_hh = gemm.mm(da_t.reshape(T * B, 4 * H).t(), h_in.reshape(T * B, H))  # (float32: tf32x3 if faster)
        if w_ch is not None and ctx.needs_input_grad[4] and T > 0:
            # peepholes: sum over t, b of da_i c_{t-1}, da_f c_{t-1}, da_o c'_t (c'_t recomputed from the gates)
            i_t, f_t, g_t, _ = gates.view(T, B, 4, H).unbind(2)
            c_prev = cs[:T]
            c_new = f_t * c_prev + i_t * g_t
            if var["clip"] is not None:
                c_new = c_new.clamp(-var["clip"], var["clip"])
            d4 = dgx_t.view(T, B, 4, H).to(acc)
            dw_ch = torch.cat([(d4[:, :, 0] * c_prev).sum((0, 1)), (d4[:, :, 1] * c_prev).sum((0, 1)),
                               (d4[:, :, 3] * c_new).sum((0, 1))]).to(w_ch.dtype)  # fmt: skip
        d_hh = d_cw = d_cb = None
        if ln:
            d_hh, d_cw, d_cb = dln[: 4 * H].to(ln_hh.dtype), dln[4 * H : 5 * H].to(ln_cw.dtype), dln[5 * H :].to(
                ln_cb.dtype)  # fmt: skip
        return dgx_t, dh0, dc.to(dtype), dw_hh, dw_ch, d_hh, d_cw, d_cb, None, None, None, None


def _plan_for(kind: str, B: int, H: int, dtype: torch.dtype, dev: torch.device, plan_kw: dict, ln: bool) -> Plan:
    """The tuned (or given) plan; with layer norm a persistent one (row statistics are exchanged in the launch).

    ``plan_kw["ln_sync"]`` (layer norm's exchange) and ``plan_kw["fuse"]`` say nothing about the tiling: given
    alone, tuning still picks the tiles (and with layer norm only times the given exchange)."""
    ln_sync = plan_kw.get("ln_sync")
    plan_kw = {k: v for k, v in plan_kw.items() if k != "ln_sync"}
    if not ln:
        return tuned_plan(kind, B, H, dtype, dev, **plan_kw)
    fuse = plan_kw.get("fuse")  # (applied to the plan layer norm tunes below)
    plan_kw = {k: v for k, v in plan_kw.items() if k != "fuse"}
    given = any(v is not None for k, v in plan_kw.items() if k != "mode") or plan_kw.get("mode") == "stepwise"
    if given:
        p = tuned_plan(kind, B, H, dtype, dev, **plan_kw, ln_sync=ln_sync, fuse=fuse)
        if not p.persistent:
            raise ValueError(f"layer_norm needs a persistent launch plan, got {p!r}")
        return p
    p = tuned_plan(kind, B, H, dtype, dev, **plan_kw)
    sync = {"ln_sync": True} if ln_sync else {}
    key = tune_key(kind, B, H, dtype, dev)
    if _tunes(dev) and _PERSISTENT_RANKED.get(key):
        lkey = (*key, "LN", ln_sync)  # layer norm's own kernels on the fastest persistent plain plans
        if lkey not in _TUNED:  # each shortlisted plan with either exchange of the row statistics (or the given)
            ways = [{}, {"ln_sync": True}] if ln_sync is None else [sync]
            cands = _ln_candidates(B, H, dtype, dev, _PERSISTENT_RANKED[key], ways)
            t0 = time.perf_counter()
            _TUNED[lkey] = _tune(kind, B, H, dtype, dev, cands, lkey, ln=True)
            log.info("triton LSTM %s layer norm (B=%d, H=%d, %s): timed %d persistent plans in %.1f s, chose %r",
                     kind, B, H, dtype, len(cands), time.perf_counter() - t0, Plan(B, H, dtype, dev, **_TUNED[lkey]))
        p = Plan(B, H, dtype, dev, **{**sync, **_TUNED[lkey]})
    elif sync:
        p = Plan(B, H, dtype, dev, **_plan_kwargs(p), **sync)
    if not p.persistent:  # the fastest persistent candidate, else the heuristic one (raises when the grid
        best = _TUNED_PERSISTENT.get(key)  # cannot be co-resident)
        p = Plan(B, H, dtype, dev, **{**best[1], **sync}) if best else Plan(B, H, dtype, dev, mode="persistent", **sync)
    if fuse is not None and p.fuse != fuse:
        q = _with_fuse(p, B, H, dtype, dev, fuse, ln_sync=p.ln_sync)
        # where the plain kernel could not launch these tiles this way, the layer-norm one (more on chip) cannot:
        # the fastest plain plan tuning ran with the products as asked
        if repr(Plan(B, H, dtype, dev, **_plan_kwargs(q))) in _refused(key):
            kws = (kw for kw in _PERSISTENT_RANKED.get(key, [])
                   if (r := Plan(B, H, dtype, dev, **kw)).fuse == fuse and r.precision == p.precision)  # fmt: skip
            kw = next(kws, None)
            q = Plan(B, H, dtype, dev, **kw, ln_sync=p.ln_sync) if kw is not None else q
        p = q
    return p


def _with_fuse(p: Plan, B: int, H: int, dtype: torch.dtype, device: torch.device, fuse: bool, **extra) -> Plan:
    """``p`` with its gate products as asked. The deeper-K and staged candidates are tuned fused only: unfused,
    the backward's K pipeline holds all four gates' chunks a stage (299-491 KB of shared memory at 64-128 x 32 x
    128, more than the 227 KB an H100/H200 block may have), so unfused they go back to K chunks of 64 and
    triton's default depth. (Even that does not fit everywhere: 240 KB at 128 x 32 in 16-bit, Triton 3.6,
    docs/gpu_runs/compile-plans-2026-11-28.md; :func:`tuned_plan` then takes another tuned plan.)"""
    kw = {**_plan_kwargs(p), "fuse": fuse, **extra}
    if not fuse and p.fuse and ((not p.interpret and p.BLOCK_K > 64) or p.stages):
        kw.update(tiles=(p.BLOCK_B, p.BLOCK_H), stages=None)
    return Plan(B, H, dtype, device, **kw)


def _ln_shortlist(B: int, H: int, dtype: torch.dtype, dev: torch.device, ranked: list[dict]) -> list[dict]:
    """Layer norm's tuning shortlist: the :data:`LN_TUNE_TOP` fastest distinct tilings of the plain kernel's
    ranked persistent plans, each with its faster way of the gate products (tuning times both ways, so a
    tiling appears twice in ``ranked``)."""
    tilings: dict[str, dict] = {}
    for kw in ranked:
        tilings.setdefault(repr(Plan(B, H, dtype, dev, **{**kw, "fuse": True})), kw)
    return list(tilings.values())[:LN_TUNE_TOP]


def _ln_candidates(B: int, H: int, dtype: torch.dtype, dev: torch.device, ranked: list[dict],
                   ways: list[dict]) -> list[dict]:  # fmt: skip
    """Layer norm's tuning candidates: each plan of :func:`_ln_shortlist` with each way of exchanging its row
    statistics (``ways``), and, where the tile has 8 warps (over 1024 elements), with 16 as well. At
    (128, 256, 1024) bf16 the layer-norm backward's 64 x 32 tile spills 888 bytes of registers at 8 warps (the
    plain backward none) and 576 at 16, the forward none at 8 and 72 bytes at 16 (sm_90 compile, triton 3.6;
    docs/gpu.md, session 11): which is faster, only a GPU can say, so tuning times both."""
    out = []
    for kw in _ln_shortlist(B, H, dtype, dev, ranked):
        wide = Plan(B, H, dtype, dev, **kw).default_warps == 8
        for w in ways:
            out.append({**kw, **w})
            if wide and "warps" not in kw:
                out.append({**kw, **w, "warps": 16})
    return out


def _plan_kwargs(p: Plan) -> dict:
    """Keywords that rebuild plan ``p`` (its tiling and launch; not layer norm's exchange)."""
    return dict(mode="persistent" if p.persistent else "stepwise", tiles=(p.BLOCK_B, p.BLOCK_H, p.BLOCK_K),
                resident=p.resident, poll=p.poll, ll=p.ll, fuse=p.fuse,
                precision=p.precision if p.precision in FP32_CHOICES else None, stages=p.stages,
                **({"warps": p.num_warps} if p.num_warps != p.default_warps else {}))  # fmt: skip


def _ln_kwargs(
    p: Plan, T: int, B: int, dev, ln_hh: Tensor, ln_cw: Tensor, ln_cb: Tensor, var: dict, kind: str
) -> dict:  # fmt: skip
    """The layer-norm arguments of one launch: gains, a fresh statistics-exchange buffer, switches, the units
    the statistics are over (``var["units"]``, required: the layer's H without alignment padding, which
    :func:`_recurrence` sets), and the epsilon (forward only: backward uses the saved statistics)."""
    # plain values, no flags: float64 (the interpreter, one program) or behind counters (ln_sync)
    raw = p.acc == tl.float64 or p.ln_sync
    st_dtype = torch.float64 if p.acc == tl.float64 else torch.float32 if p.ln_sync else torch.int64
    kw = dict(
        LN=True, NH_PAD=_next_pow2(p.n_htiles), ST_RAW=raw, lnhh_ptr=ln_hh.contiguous(), lncw_ptr=ln_cw.contiguous(),
        lncb_ptr=ln_cb.contiguous(), ln_units=int(var["units"]),
        st_ptr=torch.zeros(max(T, 1), 2, p.n_htiles, B, 2, dtype=st_dtype, device=dev),
    )  # fmt: skip
    if p.ln_sync:
        kw["stc_ptr"] = torch.zeros(p.n_btiles, max(T, 1), 2, dtype=torch.int32, device=dev)
    if kind == "fwd":
        kw["eps"] = float(var.get("eps", 1e-5))
    return kw


def _pack(x: Tensor, xs_dtype: torch.dtype) -> Tensor:
    """``x`` as LL words: its bits in the high half, the ready flag 1 in the low bit."""
    if xs_dtype == torch.int64:
        return (x.contiguous().view(torch.int32).to(torch.int64) << 32) | 1
    return (x.contiguous().view(torch.int16).to(torch.int32) << 16) | 1


def _ll_buffer(p: Plan, T: int, B: int, width: int, first: Tensor | None, slot: int, dev) -> dict:
    """The LL exchange buffer (T+1, B, width), flags clear, slot ``slot`` pre-published (h_0 / da_T = 0)."""
    if not p.ll:
        return {}
    xs = torch.zeros(T + 1, B, width, dtype=p.xs_dtype, device=dev)
    xs[slot] = _pack(first, p.xs_dtype) if first is not None else 1
    return {"xs_ptr": xs}


def _variant_args(
    *, peephole: bool = False, coupled_input_forget: bool = False, cell_clip: float | None = None,
    recurrent: Tensor | None = None, zoneout_h: Tensor | None = None, zoneout_c: Tensor | None = None,
    valid: Tensor | None = None, dtype: torch.dtype | None = None,
) -> dict:  # fmt: skip
    """The variants of one layer and direction, as :class:`_Recurrence` takes them (``var``).

    Masks as :func:`lstmkit.nn.variants.sample_masks` makes them: ``recurrent`` (B, H), ``zoneout_h`` /
    ``zoneout_c`` (T, B, H); ``valid`` (T, B[, 1]) true where t < length. Cast to ``dtype``, contiguous.
    """
    c = lambda t: None if t is None else t.to(dtype).contiguous()  # noqa: E731
    if valid is not None:
        valid = valid.reshape(valid.shape[0], valid.shape[1])
    return dict(peephole=bool(peephole), cifg=bool(coupled_input_forget),
                clip=None if cell_clip is None else float(cell_clip), rec=c(recurrent), zh=c(zoneout_h),
                zc=c(zoneout_c), valid=c(valid))  # fmt: skip


def _variant_kwargs(var: dict, w_ch: Tensor | None, kind: str) -> dict:
    """The kernels' variant arguments (pointers and flags) for ``var``; {} for the plain LSTM."""
    if not var:
        return {}
    kw = {}
    for flag, ptr, t in (("RDROP", "rec_ptr", var["rec"]), ("ZONE_H", "zh_ptr", var["zh"]),
                         ("ZONE_C", "zc_ptr", var["zc"]), ("VALID", "valid_ptr", var["valid"]),
                         ("PEEP", "wch_ptr", w_ch.contiguous() if var["peephole"] else None)):  # fmt: skip
        if t is not None:
            kw[flag], kw[ptr] = True, t
    if var["cifg"]:
        kw["CIFG"] = True
    if var["clip"] is not None:
        kw["CLIP"], kw["clip"] = True, var["clip"]
    if kind == "bwd" and ("ZONE_H" in kw or "VALID" in kw):
        kw["dhc_ptr"] = True  # placeholder: backward allocates it
    return kw


#: Hidden units are padded to a multiple of this many on each device type (1: none). On a GPU, rows of W_hh,
#: h and gx then start 16-element aligned, so Triton's JIT may vectorise their loads and pipeline the
#: streamed weights (cp.async); at H = 650 the unpadded kernels compile to scalar loads, an unpipelined
#: K loop and, with resident weights, kilobytes of register spills (docs/gpu.md, "Alignment"). The extra
#: units get zero weights, bias, state and masks: their pre-activations are 0, so c stays 0 and h = 0.5 *
#: tanh(0) = 0, and W_hh's zero columns keep them out of the real units: the real units' numbers are
#: unchanged, and the gradients of the padding are dropped by the slicing autograd does. Layer norm gets
#: zero gains and bias there too and takes its row statistics over the layer's units only (``ln_units``).
ALIGN_UNITS = {"cuda": 16}


def kernel_units(H: int, device: torch.device | str) -> int:
    """The hidden size the kernels run for a layer of ``H`` units on ``device`` (:data:`ALIGN_UNITS`)."""
    a = ALIGN_UNITS.get(torch.device(device).type, 1)
    return -(-H // a) * a


def _recurrence(gx: Tensor, h0: Tensor, c0: Tensor, w_hh: Tensor, w_ch: Tensor | None, ln: list, plan_kw: dict,
                var: dict) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """:class:`_Recurrence` on hidden units padded to :data:`ALIGN_UNITS`; y, h_T, c_T of the real units, y
    contiguous. ``ln``: layer norm's recurrent gain (4H), cell gain and bias (H), or three Nones."""
    H = w_hh.shape[1]
    n = kernel_units(H, gx.device)
    if ln[0] is not None:
        var = {**var, "units": H}  # layer norm's statistics: over the layer's units, not the padding
    grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (gx, h0, c0, w_hh, w_ch, *ln))  # fmt: skip
    if ln[0] is not None:  # before any work on the padded tensors
        _layer_norm_can_run(gx.shape[1], n, gx.dtype, gx.device, plan_kw, grad)
    if n == H:
        return _Recurrence.apply(gx, h0, c0, w_hh, w_ch, *ln, plan_kw, var, grad)
    if gx.shape[-1] != 4 * n:  # (layer() pads W_ih and the bias instead: the GEMM then writes gx padded)
        gx = _pad_gates(gx, -1, H, n)
    h0, c0 = _pad_dim(h0, -1, n), _pad_dim(c0, -1, n)
    w_hh = _pad_recurrent(w_hh, n)
    if w_ch is not None:  # (3H) w_ci, w_cf, w_co
        w_ch = _pad_dim(w_ch.unflatten(0, (3, H)), 1, n).flatten()
    var = {k: _pad_dim(v, -1, n) if k in ("rec", "zh", "zc") and v is not None else v for k, v in var.items()}
    if ln[0] is not None:
        ln = [_pad_gates(ln[0], 0, H, n), _pad_dim(ln[1], 0, n), _pad_dim(ln[2], 0, n)]
    y, h, c = _Recurrence.apply(gx, h0, c0, w_hh, w_ch, *ln, plan_kw, var, grad, False)  # (copied here)
    return y[..., :H].contiguous(), h[:, :H].contiguous(), c[:, :H].contiguous()


def layer(
    x: Tensor, h0: Tensor, c0: Tensor, w_ih: Tensor, w_hh: Tensor, b: Tensor | None, *, mode: str = "auto",
    tiles: tuple[int, ...] | None = None, resident: bool | None = None, poll: int | None = None,
    ll: bool | None = None, fuse: bool | None = None, precision: str | None = None,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """One LSTM layer, one direction: x (T, B, I) -> (y (T, B, H), h_T (B, H), c_T (B, H)).

    ``b`` is ``b_ih + b_hh`` (or None). Differentiable in every argument. ``mode``, ``tiles``,
    ``resident``, ``poll``, ``ll``, ``fuse`` and ``precision`` go to :class:`Plan` (all None / "auto": the
    tuned plan, :func:`tuned_plan`).
    """
    H, n = w_hh.shape[1], kernel_units(w_hh.shape[1], x.device)
    if n != H:  # gx comes out of the GEMM padded (see ALIGN_UNITS)
        w_ih, b = _pad_gates(w_ih, 0, H, n), None if b is None else _pad_gates(b, 0, H, n)
    gx = gemm.linear(x, w_ih, b)  # (T, B, I) -> (T, B, 4H), one GEMM for all steps (F.linear but in float32)
    plan_kw = dict(mode=mode, tiles=tiles, resident=resident, poll=poll, ll=ll, fuse=fuse, precision=precision)
    return _recurrence(gx, h0, c0, w_hh, None, [None] * 3, plan_kw, {})


#: the variants of lstmkit.nn the kernels run (weight_drop is applied to W_hh before the call; layer norm
#: exchanges its row statistics between the programs inside the persistent launch)
VARIANTS = ("layer_norm", "peephole", "coupled_input_forget", "cell_clip", "recurrent_dropout", "zoneout",
            "weight_drop")


def variant_layer(
    gx: Tensor, h0: Tensor, c0: Tensor, w_hh: Tensor, v, p: dict, masks: dict, valid: Tensor | None,
    eps: float = 1e-5, **plan_kw,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """One layer and direction with variants, ``cpu_fused.layer``'s interface, on the Triton kernels.

    ``gx`` is ``x W_ih^T`` without bias (``p["bias"]`` = b_ih + b_hh is added here); ``w_hh`` already
    carries the weight-drop mask; ``v`` (:class:`lstmkit.nn.variants.Variants`) says which variants are on,
    ``p`` holds ``weight_ch`` (peepholes), ``masks`` the ``recurrent`` / ``zoneout_h`` / ``zoneout_c``
    masks, ``valid`` (T, B, 1) where t < length. Returns (y (T, B, H) carried state, h_n, c_n). Raises
    ``kernels.Unsupported`` for calls too large for int32 offsets (the module then runs its loop).
    """
    T, B, G = gx.shape
    width = 4 * kernel_units(G // 4, gx.device)  # 4H, H padded as the kernels run it
    if (T + 1) * B * width >= 2**31:
        from . import Unsupported

        raise Unsupported(f"(T + 1) * B * 4H = {(T + 1) * B * width} is too large for the kernels' int32 indexing")
    plan_kw = {k: plan_kw.get(k) for k in ("mode", "tiles", "resident", "poll", "ll", "ln_sync", "fuse", "precision")}
    bias = p.get("bias")
    if v.layer_norm:  # LN of the input projection and the bias, all steps at once, one kernel (layer_norm.py)
        out = gx.dtype if bias is None else torch.promote_types(gx.dtype, bias.dtype)  # (as gx + bias would)
        gx = input_norm(gx, p["layernorm_ih_weight"], bias, eps, out, interpret=not gx.is_cuda)
    elif bias is not None:
        gx = gx + bias
    var = _variant_args(
        peephole=v.peephole, coupled_input_forget=v.coupled_input_forget, cell_clip=v.cell_clip,
        recurrent=masks.get("recurrent"), zoneout_h=masks.get("zoneout_h"), zoneout_c=masks.get("zoneout_c"),
        valid=valid, dtype=gx.dtype,
    )  # fmt: skip
    var["eps"] = float(eps)
    w_ch = p.get("weight_ch") if v.peephole else None
    ln = [p["layernorm_hh_weight"], p["layernorm_c_weight"], p["layernorm_c_bias"]] if v.layer_norm else [None] * 3
    return _recurrence(gx, h0, c0, w_hh, w_ch, ln, plan_kw, var)


def _layer_norm_can_run(B: int, H: int, dtype: torch.dtype, dev: torch.device, plan_kw: dict, grad: bool) -> None:
    """Raise ``kernels.Unsupported`` (the module then runs the pure-torch loop) when layer norm cannot run this
    call on the kernels: its row statistics are exchanged inside one persistent launch, forward and backward,
    and no persistent plan fits this GPU (too many programs; checked here for the backward too when a
    backward will run, ``grad``: it has no fallback once the forward has run); or deterministic algorithms are
    asked for
    (``torch.use_deterministic_algorithms``) and the backward would sum its gain gradients with atomic adds
    from several batch tiles. A plan the caller gave that cannot run stays a ``ValueError``."""
    from . import Unsupported

    tiling = {k: v for k, v in plan_kw.items() if k not in ("mode", "ln_sync", "fuse")}
    given = any(v is not None for v in tiling.values()) or plan_kw.get("mode") == "stepwise"
    for kind in ("fwd", "bwd") if grad else ("fwd",):
        try:
            p = _plan_for(kind, B, H, dtype, dev, plan_kw, True)
        except ValueError as e:
            if given:
                raise
            raise Unsupported(f"layer norm on the Triton kernels needs a persistent launch, which B={B}, H={H} "
                              f"cannot have on this device ({e})") from e  # fmt: skip
        if kind == "bwd" and p.n_btiles > 1 and torch.are_deterministic_algorithms_enabled():
            raise Unsupported("layer norm on the Triton kernels sums its gain gradients with atomic adds from "
                              f"{p.n_btiles} batch tiles, and deterministic algorithms are on")  # fmt: skip


variant_layer.per_layer = True  # type: ignore[attr-defined]  # the module's loop over layers/directions calls it
variant_layer.linear = gemm.linear  # type: ignore[attr-defined]  # input projection: F.linear (float32: gemm.mm)
variant_layer.fuses_input_norm = True  # type: ignore[attr-defined]  # gx without bias: added here


def why_not_variants(variants: tuple[str, ...], proj_size: int = 0, like: Tensor | None = None) -> str | None:
    """Why :func:`variant_layer` can never run a module with these variants, or None when it can."""
    missing = [n for n in variants if n not in VARIANTS]
    if missing:
        return f"no Triton kernel for {', '.join(missing)}"
    return why_not((), proj_size, like)


# ---------------------------------------------------------------------------------------------
# The torch.nn.LSTM-shaped entry point and what it supports
# ---------------------------------------------------------------------------------------------


def unsupported_reason(
    input: Tensor,
    hx: tuple[Tensor, Tensor],
    weights: list[Tensor],
    *,
    bias: bool,
    num_layers: int,
    dropout: float,
    training: bool,
    bidirectional: bool,
    batch_first: bool,
    lengths: Tensor | None = None,
    interpret: bool = False,
) -> str | None:
    """Why :func:`lstm` cannot run this call, or None when it can (same arguments as :func:`lstm`).

    ``interpret=True`` also accepts CPU tensors (the Triton interpreter: correct, very slow; tests only).
    """
    if not HAVE_TRITON:
        return "triton is not installed"
    if not isinstance(input, Tensor) or input.dim() != 3:
        return "only batched (3-D) padded input"
    if lengths is not None:
        return "lengths= (padded batches) is not supported"
    per = 4 if bias else 2
    dirs = 2 if bidirectional else 1
    if len(weights) != num_layers * dirs * per:
        return "projections (proj_size > 0) are not supported"
    if input.is_cuda:
        if input.dtype not in GPU_DTYPES:
            return f"dtype {input.dtype} (GPU path: float32, bfloat16, float16)"
    elif not interpret:
        return "not a CUDA tensor"
    elif input.dtype not in (*GPU_DTYPES, torch.float64):
        return f"dtype {input.dtype}"
    T, B = (input.shape[1], input.shape[0]) if batch_first else (input.shape[0], input.shape[1])
    H = kernel_units(weights[1].shape[1], input.device)
    if (T + 1) * B * 4 * H >= 2**31:
        return "T * B * 4H >= 2**31 (the kernels index with int32)"
    tensors = [input, *hx, *weights]
    if any(t.device != input.device for t in tensors):
        return "tensors on different devices"
    if any(t.dtype != input.dtype for t in tensors):
        return "mixed dtypes (cast the input, states and weights to one dtype)"
    return None


def is_supported(input: Tensor, hx: tuple[Tensor, Tensor], weights: list[Tensor], **kw) -> bool:
    """True when :func:`lstm` runs this call on the GPU (see :func:`unsupported_reason`)."""
    return unsupported_reason(input, hx, weights, **kw) is None


def why_not(variants: tuple[str, ...] = (), proj_size: int = 0, like: Tensor | None = None) -> str | None:
    """Why a module with these settings can never use the Triton kernels, or None when its calls may.

    For the dispatcher, at selection time (``like`` is a parameter: device and dtype); each call is
    still checked by :func:`lstm_or_native`.
    """
    if not HAVE_TRITON:
        return "triton is not installed"
    if variants:
        return f"no Triton kernel for {', '.join(variants)} yet"
    if proj_size:
        return "projections (proj_size > 0) are not supported"
    if like is None or not like.is_cuda:
        return "parameters are not on a CUDA device"
    if like.dtype not in GPU_DTYPES:
        return f"dtype {like.dtype} (GPU path: float32, bfloat16, float16)"
    return None


def lstm_or_native(input: Tensor, hx: tuple[Tensor, Tensor], weights: list[Tensor], **kw):
    """:func:`lstm` when it covers the call (CUDA, no ``lengths``, one dtype, ...), else ``native.lstm``."""
    if is_supported(input, hx, weights, **kw):
        return lstm(input, hx, weights, **kw)
    from . import native

    return native.lstm(input, hx, weights, **kw)


def lstm(
    input: Tensor,
    hx: tuple[Tensor, Tensor],
    weights: list[Tensor],
    *,
    bias: bool,
    num_layers: int,
    dropout: float,
    training: bool,
    bidirectional: bool,
    batch_first: bool,
    lengths: Tensor | None = None,
    mode: str = "auto",
    tiles: tuple[int, ...] | None = None,
    resident: bool | None = None,
    poll: int | None = None,
    ll: bool | None = None,
    fuse: bool | None = None,
    precision: str | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """``kernels.native.lstm``'s interface on the Triton kernels: (output, h_n, c_n), as torch.nn.LSTM.

    ``weights`` is ``torch.nn.LSTM._flat_weights`` (per layer and direction ``w_ih, w_hh[, b_ih, b_hh]``);
    ``hx`` is ``(h_0, c_0)``, each (layers * directions, B, H). No projections, no ``lengths``.
    ``mode`` is ``auto``, ``persistent`` or ``stepwise`` (see the module docstring). CPU tensors run
    in the Triton interpreter. ``tiles`` and ``resident`` override the tiling (tests, tuning; see :class:`Plan`);
    ``precision`` the float32 products (``"tf32x3"`` or ``"ieee"``, without TF32; tuned by default).
    """
    why = unsupported_reason(
        input, hx, weights, bias=bias, num_layers=num_layers, dropout=dropout, training=training,
        bidirectional=bidirectional, batch_first=batch_first, lengths=lengths, interpret=True,
    )  # fmt: skip
    if why is not None:
        raise ValueError(f"the Triton LSTM cannot run this call: {why}; use kernels.native.lstm")
    from .stack import run

    def one(x, h0, c0, w_ih, w_hh, b_ih, b_hh):
        b = None if b_ih is None else b_ih + b_hh
        return layer(x, h0, c0, w_ih, w_hh, b, mode=mode, tiles=tiles, resident=resident, poll=poll, ll=ll, fuse=fuse,
                     precision=precision)

    return run(one, input, hx, weights, bias=bias, num_layers=num_layers, dropout=dropout, training=training,
               bidirectional=bidirectional, batch_first=batch_first)  # fmt: skip
