"""Thread-block-cluster LSTM kernels for Hopper GPUs (sm_90): CUDA C++, compiled at run time by NVRTC.

Why they exist (docs/gpu.md, "Why the gaps"): goal 3 of issue 6 asks a bf16 kernel at small batch to be as
fast as cuDNN's persistent fp16 kernel, 1.53 us per step at (T, B, H) = (1024, 8, 256) on an H200. The
Triton kernels synchronise their programs through a counter in global memory; that barrier alone costs
0.72-1.13 us per step (benchmarks/gpu_barrier.py, run 5), half of the budget. A *cluster* of up to 8
thread blocks on neighbouring SMs has a hardware barrier (``barrier.cluster``) and can write into each
other's shared memory (distributed shared memory), so h_t never leaves the chip. Triton 3.6 cannot express
this: its multi-CTA mode (``num_ctas > 1``) fails to compile even a minimal recurrence
(``benchmarks/triton_num_ctas.py``), so, as the issue allows, these kernels are CUDA C++ ("only where Triton
cannot do it").

Design (one cluster per 8 or 16 batch rows; ``C`` CTAs per cluster; each CTA owns ``H / C`` hidden units):

* forward (``lstm_cluster_fwd``): each warp owns 8 units and holds their 4 x 8 rows of ``W_hh`` as
  tensor-core (``mma.sync m16n8k16``) A fragments in registers for the whole sequence: m-tile 0 = rows
  (i, f), m-tile 1 = rows (g, o), so that each thread's accumulators hold all four gates of one unit for two
  batch rows and the cell needs no exchange between threads. Every CTA keeps the whole h_{t-1} (batch rows
  x H) in shared memory, double-buffered; the batch is the product's N (8 per n-tile), H its K. A step:
  product -> gates (fp32) + gx_t -> cell (fp32, registers) -> each warp stages its units' h_t and pushes
  them, 16 bytes a store, into the other buffer of every CTA -> y_t stored -> wait for the other CTAs';
* backward (``lstm_cluster_bwd``): the mirror image, each CTA holding the ``W_hh`` columns of its units
  (K = 4H split over its warps, partial sums met in shared memory) and exchanging da_t as the forward
  exchanges h_t; above H = 256 (``ClusterConfig.rs``) a reduce-scatter instead: each CTA keeps the forward's
  rows of ``W_hh`` (its own gates), multiplies them by its own da_t into a partial dh of every unit and sends
  each CTA the partial sums of that CTA's units, which it adds; da_t never leaves its CTA;
* two ways to synchronise (:data:`EXCHANGES`): DSMEM stores + the cluster barrier, or ``st.async`` stores
  counted on the receiving CTA's mbarrier. The hardware schedules a cluster's CTAs together, so no
  co-residency check is needed; an mbarrier wait of over 2 s traps instead of hanging;
* the variants as compile-time switches (:data:`FLAGS`): peephole, coupled input-forget gate, cell clip,
  recurrent dropout, zoneout of h and c, per-row lengths (the state carried past them), and layer norm (of the
  recurrent product over 4H and of c'_t over H: each row's statistics from every CTA, two more exchanges a step
  through distributed shared memory and the cluster barrier; LN of the input projection runs in torch). With
  ``config(merge=True)`` (not routed: not yet timed) layer norm's forward sends each unit's (c'_t, o_t) instead of
  h_t and every CTA computes h_t of every unit itself: one exchange a step fewer.

Entry points: :func:`layer` (one layer, differentiable), :func:`lstm` (``torch.nn.LSTM``'s interface),
:func:`variant_layer` (the variant modules' per-layer kernel), :func:`forward` (no autograd),
:func:`lstm_or_next` (what ``impl="auto"`` runs with :data:`ROUTE`, falling back per call). Limits:
bfloat16 / float16, hidden sizes whose share of ``W_hh`` fits the registers (16 .. 256) or registers and
shared memory (384, 512, 640, 768), see :func:`config`, other sizes up to 768 padded with zero units to
the next of these (:func:`kernel_units`; layer norm's statistics leave them out); no projections;
``lengths=`` only through :func:`variant_layer` (its ``valid`` masks: the state is carried past each row's
length). Sigmoid and tanh use ``tanh.approx.f32`` unless ``fast=False``. Measured on an H200 in run 6
(``benchmarks/gpu_cluster.py``, docs/gpu.md): the plain and element-wise kernels pass their checks against
float64 cuDNN and the NumPy spec and beat cuDNN's fp16 persistent kernel at (1024, 8, 256) and (100, 1, 512),
so :data:`ROUTE` is on. Layer norm's check against the spec at (256, 8, 256) missed in run 6, where the module
is chaotic (its float64 gradients beyond float16's range; torch's own float32 loop 25% off); run 7 checked it
where it is not (recurrent gains about 0.5): within the plain bounds, so :data:`ROUTE_LN` is on too.

Without a GPU: CPU tensors run the same kernel text under g++ with the GPU primitives emulated (one thread
per GPU thread: tests only), and :func:`compile_cubin` builds the kernels for sm_90 with NVRTC
(``tests/test_cluster_lstm.py``: the NumPy reference, ThreadSanitizer, the machine code).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import glob
import math
import os
import site
import sys
import warnings
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor

from . import gemm
from .layer_norm import input_norm
from .stack import pad_dim, pad_gates, pad_recurrent

__all__ = ["ClusterConfig", "EXCHANGES", "FLAGS", "ROUTE", "config", "source", "emulation_source", "compile_cubin",
           "forward", "emulate", "layer", "lstm", "lstm_forward", "lstm_or_next", "variant_layer", "unsupported_reason",
           "nvrtc_available", "nvrtc_version"]

_HEAD = r"""
// lstmkit cluster LSTM forward (src/lstmkit/kernels/cluster_lstm.py): one configuration per compile
#define HID {H}
#define CL {C}
#define NT {NT}
#define ABL {ABLATE}
#define F16 {F16}
#define FAST {FAST}
#define EXCH {EXCH}
#define PEEP {PEEP}
#define CIFG {CIFG}
#define CLIP {CLIP}
#define RDROP {RDROP}
#define ZONE_H {ZONE_H}
#define ZONE_C {ZONE_C}
#define VALID {VALID}
#define LN {LN}
#define HREAL {HREAL}          // LN: the layer's own units; the rest (HREAL .. HID) are zero padding
#define LNPAD (LN && HREAL < HID)  // ... which LN's statistics and means leave out
#define MERGE {MERGE}          // LN, mbarrier, forward: (c'_t, o_t) exchanged instead of h_t; every CTA takes c'_t's
                               // row statistics and computes every unit's h_t itself: one exchange a step fewer
#define ZONE (ZONE_H || ZONE_C || VALID)
#if MERGE && !(LN && EXCH == 1 && ABL == 0 && !LNPAD && !RDROP && !ZONE)
#error "MERGE: layer norm, the mbarrier exchange, no ablation, unpadded, no recurrent dropout, zoneout or lengths"
#endif
#define SMEM_F {SMEM_F}
#define SMEM_B {SMEM_B}
#define UNITS (HID / CL)
#define WARPS (UNITS / 8)
#define BT (8 * NT)
#define KT (HID / 16)
#define KR {KR}                // forward: the k-tiles of W_hh a warp keeps in registers; the other KS in shared memory
#define KS (KT - KR)
#define HS (HID + 8)
#define CH (UNITS / 8)
#define G4F (4 * HID)
#define SR (UNITS + 8)         // row stride of the staged h_t: +16 bytes, so rows start 4 banks apart
#define SRB (4 * UNITS + 8)    // ... of the backward's staged da_t
#define NP (HID / 8)           // LN: the row statistics' partials, one per warp of the cluster
#define NLN (LN ? 2 : 0)
#define NMB (2 + 2 * NLN)      // mbarriers: h (da) by buffer; EXCH 1 and LN: LN's tables by step parity
#define LBYTES ((CL - 1) * WARPS * BT * 8)  // EXCH 1, LN: the bytes of a table the other CTAs push a step

typedef unsigned short u16;
typedef unsigned int u32;
struct alignas(16) v4 { u32 x, y, z, w; };
struct alignas(8) f2 { float x, y; };
struct alignas(8) u2 { u32 x, y; };
struct alignas(16) Smem {       // the forward's shared memory
  unsigned long long mbar[NMB];  // EXCH 1: the mbarrier of each hbuf, then of LN's tables [2 + 2 table + parity]
                                 // (first: the emulation finds them at offset 0)
  u16 hbuf[2][BT][HS];         // h_{t-1} of the cluster's batch rows, all units, double-buffered
  u16 stage[2][BT][SR];        // h_t of this CTA's units, double-buffered (by step parity)
#if KS > 0
  v4 wsm[WARPS][2][KS][32];    // W_hh's k-tiles KR.. of each warp, in fragment order: each lane reads its own
#endif
#if LN
  f2 lst[NLN][2][BT][NP];      // LN: every warp's (mean, M2) of each row: [0] the product's 4 gates, [1] c'_t;
                               // by step parity
#endif
#if MERGE
  f2 cstage[2][BT][UNITS + 2];  // (c'_t, o_t) of this CTA's units, by step parity (rows 16-byte aligned)
  f2 cobuf[2][BT][HID];         // (c'_t, o_t) of the cluster's rows, every unit, by step parity
#endif
};
static_assert(sizeof(Smem) == SMEM_F, "the host's size of the forward's shared memory is wrong");
#define TRAINS {TRAINS}        // a backward kernel: broadcast (W_hh in registers, whole 16-unit m-tiles) or RS
#define RS {RS}                // the backward as a reduce-scatter of partial dh (kernel lstm_cluster_bwd, RS form)
#define WB {WB}                // the backward's warps
#define KRB {KRB}              // RS: the k-tiles of each warp's W_hh fragments kept in registers; the rest in shared
#if TRAINS
#define G4 (4 * HID)
#endif
#if TRAINS && !RS
#define MT (UNITS / 16)        // backward: m-tiles of this CTA's units
#define KW (G4 / WARPS)        // backward: the K (gate columns of da) of each warp
#define KTW (KW / 16)
#define GS (G4 + 8)            // backward: row stride of the exchanged da buffer
struct alignas(16) SmemB {     // the backward's
  unsigned long long mbar[NMB];
  u16 dabuf[2][BT][GS];        // da_{t+1} of the cluster's batch rows, all 4 HID gate columns, double-buffered
  u16 stage[2][BT][SRB];       // da_t of this CTA's units, gate after gate (row padded as SR)
  float red[WARPS][MT][NT][4][32];  // each warp's partial dh (its K range), in fragment order
#if LN
  f2 lst[NLN][2][BT][NP];      // LN: every warp's two partial sums of each row: [0] through LN(c'), [1] LN(r)
#endif
};
static_assert(sizeof(SmemB) == SMEM_B, "the host's size of the backward's shared memory is wrong");
#endif
#if TRAINS && RS
#define MTB (HID / 16)         // RS: the m-tiles of dh, every unit of the layer
#define MW (MTB / WB)          // ... of each warp
#define KTB (UNITS / 4)        // ... the k-tiles: this CTA's 4 UNITS gate columns of da
#define KSB (KTB - KRB)
struct alignas(16) SmemB {     // the backward's, reduce-scatter form
  unsigned long long mbar[NMB];
  float part[LN ? 1 : 2][CL][UNITS][BT];  // partial dh of this CTA's units from every CTA (by source), double-
                                          // buffered; one buffer under LN, whose exchanges order every CTA's
                                          // read of step s before any other's write of step s + 1 (below)
  u16 stage[2][BT][SRB];       // da_t of this CTA's units, gate after gate: the product's B operand (by step parity)
#if KSB > 0
  v4 wsm[WB][MW][KSB][32];     // W_hh's k-tiles KRB.. of each warp's m-tiles, in fragment order (each lane its own)
#endif
#if LN
  f2 lst[NLN][2][BT][NP];      // LN: the cell warps' two partial sums of each row, as the broadcast form's
#endif
};
static_assert(sizeof(SmemB) == SMEM_B, "the host's size of the backward's shared memory is wrong");
static_assert(MTB % WB == 0 && WB >= WARPS && UNITS % 4 == 0, "RS: m-tiles split evenly, a warp per 8 units");
#endif
"""

# The GPU's side of the helpers: PTX for conversions, tensor-core products and the cluster.
_DEVICE = r"""
#define KERNEL extern "C" __global__ void __cluster_dims__(CL, 1, 1) __launch_bounds__(WARPS * 32, 1)
#define KERNEL_B extern "C" __global__ void __cluster_dims__(CL, 1, 1) __launch_bounds__(WB * 32, 1)
#define SMEM(Type) extern __shared__ __align__(16) unsigned char smem_raw[]; \
                   Type& sm = *reinterpret_cast<Type*>(smem_raw);

static __device__ __forceinline__ float to_f32(u16 v) {
#if F16
  float f; asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(v)); return f;
#else
  return __uint_as_float(((u32)v) << 16);
#endif
}
static __device__ __forceinline__ u16 from_f32(float x) {
  u16 r;
#if F16
  asm("cvt.rn.f16.f32 %0, %1;" : "=h"(r) : "f"(x));
#else
  asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r) : "f"(x));
#endif
  return r;
}
static __device__ __forceinline__ float h2f(u16 v) {  // float16, whatever the kernel's dtype (LN's saved LN(r))
  float f; asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(v)); return f;
}
static __device__ __forceinline__ u16 f2h(float x) {
  u16 r; asm("cvt.rn.f16.f32 %0, %1;" : "=h"(r) : "f"(x)); return r;
}
static __device__ __forceinline__ float tanh_(float x) {
#if FAST
  float y; asm("tanh.approx.f32 %0, %1;" : "=f"(y) : "f"(x)); return y;
#else
  return tanhf(x);
#endif
}
static __device__ __forceinline__ float sigm(float x) {
#if FAST
  return fmaf(0.5f, tanh_(0.5f * x), 0.5f);
#else
  return 1.0f / (1.0f + expf(-x));
#endif
}
// D += A (16x16, row) B (16x8, col), fp32 accumulators
static __device__ __forceinline__ void mma(float* d, const u32* a, u32 b0, u32 b1) {
#if F16
  asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
#else
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
#endif
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
static __device__ __forceinline__ u32 smem_addr(const void* p) {
  u32 r; asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(r) : "l"(p)); return r;
}
static __device__ __forceinline__ u32 cluster_rank() {
  u32 r; asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(r)); return r;
}
static __device__ __forceinline__ u32 map_rank(u32 addr, u32 rank) {
  u32 r; asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(r) : "r"(addr), "r"(rank)); return r;
}
static __device__ __forceinline__ void st_cluster(u32 addr, v4 v) {
  asm volatile("st.shared::cluster.v4.u32 [%0], {%1, %2, %3, %4};"
               :: "r"(addr), "r"(v.x), "r"(v.y), "r"(v.z), "r"(v.w) : "memory");
}
static __device__ __forceinline__ void st_async(u32 addr, v4 v, u32 mbar) {  // DSMEM store, counted on mbar
  asm volatile("st.async.shared::cluster.mbarrier::complete_tx::bytes.v4.b32 [%0], {%1, %2, %3, %4}, [%5];"
               :: "r"(addr), "r"(v.x), "r"(v.y), "r"(v.z), "r"(v.w), "r"(mbar) : "memory");
}
static __device__ __forceinline__ void mbar_init(u32 addr, u32 count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" :: "r"(addr), "r"(count) : "memory");
}
static __device__ __forceinline__ void mbar_fence_init() {
  asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
}
static __device__ __forceinline__ void mbar_expect(u32 addr, u32 bytes) {  // arrive, and expect bytes
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" :: "r"(addr), "r"(bytes) : "memory");
}
static __device__ __forceinline__ void mbar_arrive(u32 addr) {  // one arrival (release, CTA scope)
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" :: "r"(addr) : "memory");
}
static __device__ __forceinline__ unsigned long long now_ns() {
  unsigned long long t; asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t)); return t;
}
// wait for the phase of parity `parity`; a wait of over 2 s traps (the launch fails instead of hanging)
static __device__ __forceinline__ void mbar_wait(u32 addr, u32 parity) {
  u32 done = 0;
  unsigned long long start = 0;
  for (u32 n = 1; !done; ++n) {
    asm volatile("{ .reg .pred p; mbarrier.try_wait.parity.acquire.cluster.shared::cta.b64 p, [%1], %2; "
                 "selp.u32 %0, 1, 0, p; }" : "=r"(done) : "r"(addr), "r"(parity) : "memory");
    if (!done && (n & 1023) == 0) {
      if (start == 0) start = now_ns();
      else if (now_ns() - start > 2000000000ull) asm volatile("trap;");
    }
  }
}
static __device__ __forceinline__ void prefetch_l2(const void* p) {
  asm volatile("prefetch.global.L2 [%0];" :: "l"(p));
}
static __device__ __forceinline__ void cluster_arrive() {
  asm volatile("barrier.cluster.arrive.release.aligned;" ::: "memory");
}
static __device__ __forceinline__ void cluster_wait() {
  asm volatile("barrier.cluster.wait.acquire.aligned;" ::: "memory");
}
static __device__ __forceinline__ void cluster_arrive_relaxed() {  // (publishes nothing: no release fence)
  asm volatile("barrier.cluster.arrive.relaxed.aligned;" ::: "memory");
}
static __device__ __forceinline__ float shfl_xor(float v, int mask) {  // the whole warp takes part
  float r; asm volatile("shfl.sync.bfly.b32 %0, %1, %2, 0x1f, 0xffffffff;" : "=f"(r) : "f"(v), "r"(mask)); return r;
}
static __device__ __forceinline__ u32 f2u(float x) { return __float_as_uint(x); }
static __device__ __forceinline__ void st_cluster_f2(u32 addr, float a, float b) {
  asm volatile("st.shared::cluster.v2.f32 [%0], {%1, %2};" :: "r"(addr), "f"(a), "f"(b) : "memory");
}
static __device__ __forceinline__ void st_async_f2(u32 addr, float a, float b, u32 mbar) {
  asm volatile("st.async.shared::cluster.mbarrier::complete_tx::bytes.v2.f32 [%0], {%1, %2}, [%3];"
               :: "r"(addr), "f"(a), "f"(b), "r"(mbar) : "memory");
}
static __device__ __forceinline__ float rsqrt_(float x) { return rsqrtf(x); }
"""

# The CPU's side (tests, no GPU): one std::thread per GPU thread, a barrier each for __syncthreads, the
# cluster barrier and the warp, and mma.sync computed from the fragments of all 32 lanes as the PTX ISA lays
# them out ("Matrix Fragments for mma.m16n8k16 with floating point type"): the kernel's own fragment loads,
# exchange and synchronisation run unchanged, only these primitives are replaced.
_EMU = r"""
#include <array>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <cmath>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>
#define __device__
#define __forceinline__ inline
#define KERNEL static void
#define KERNEL_B static void
#define SMEM(Type) Type& sm = *reinterpret_cast<Type*>(emu::cl->smem[emu::rank].data());
#define __restrict__

namespace emu {
// every emulated wait gives up after a minute: a broken protocol ends the test, it does not hang it
struct Spin {  // one wait's spinning; aborts when that wait has lasted a minute
  long long n = 0;
  std::chrono::steady_clock::time_point start = std::chrono::steady_clock::now();
};
inline void spin(Spin& w) {
  if ((++w.n & 1023) == 0 && std::chrono::steady_clock::now() - w.start > std::chrono::seconds(60)) {
    std::fprintf(stderr, "deadlock: a wait did not end within 60 s\n");
    std::abort();
  }
  std::this_thread::yield();
}
// a sense-reversing barrier on two atomics of its own: the only happens-before edges it makes are the ones
// a barrier must make (std::barrier shares waiter pools between barriers, which hides races from TSAN)
struct Barrier {
  std::atomic<int> count{0}, phase{0};
  const int n;
  explicit Barrier(int n_) : n(n_) {}
  int arrive() {
    const int ph = phase.load(std::memory_order_acquire);
    if (count.fetch_add(1, std::memory_order_acq_rel) == n - 1) {
      count.store(0, std::memory_order_relaxed);
      phase.store(ph + 1, std::memory_order_release);
    }
    return ph;
  }
  void wait(int ph) {
    for (Spin w; phase.load(std::memory_order_acquire) == ph;) spin(w);
  }
  void arrive_and_wait() { wait(arrive()); }
};
// an mbarrier: pending arrivals and a transaction count (bytes); the phase completes when both reach 0.
// Misuse the GPU leaves undefined (an arrival on a completed phase) aborts here.
struct MBar {
  std::mutex m;
  long long tx = 0;
  int pending = 0, count = 0;
  std::atomic<int> phase{0};
  void init(int c) { std::lock_guard<std::mutex> l(m); count = pending = c; tx = 0; }
  void check() {
    if (pending < 0 || tx > (1 << 20) || tx < -(1 << 20)) { std::fprintf(stderr, "mbarrier misuse\n"); std::abort(); }
    if (pending == 0 && tx == 0) { pending = count; phase.fetch_add(1, std::memory_order_release); }
  }
  void expect_arrive(long long bytes) { std::lock_guard<std::mutex> l(m); tx += bytes; pending -= 1; check(); }
  void complete(long long bytes) { std::lock_guard<std::mutex> l(m); tx -= bytes; check(); }
  bool done(int parity) { return (phase.load(std::memory_order_acquire) & 1) != parity; }
};
struct Dim { int x, y, z; };
struct Lane { u32 a[4]; u32 b[2]; };
struct Cluster {
  std::vector<std::vector<v4>> smem;  // each CTA's shared memory, 16-byte aligned
  std::vector<std::unique_ptr<Barrier>> cta, warp;
  std::unique_ptr<Barrier> all;
  std::vector<std::array<Lane, 32>> slots;
  std::vector<std::array<float, 32>> shfl;
  std::vector<std::array<MBar, NMB>> mbars;
  explicit Cluster(int nw) : smem(CL, std::vector<v4>((SMEM_F > SMEM_B ? SMEM_F : SMEM_B) / 16 + 1)), mbars(CL) {
    for (int r = 0; r < CL; ++r) cta.emplace_back(new Barrier(nw * 32));
    for (int w = 0; w < CL * nw; ++w) warp.emplace_back(new Barrier(32));
    all.reset(new Barrier(CL * nw * 32));
    slots.resize(CL * nw);
    shfl.resize(CL * nw);
  }
};
thread_local Dim tid, bid;
thread_local Cluster* cl;
thread_local int rank, gwarp, token;
}  // namespace emu
#define threadIdx emu::tid
#define blockIdx emu::bid

static inline void __syncthreads() { emu::cl->cta[emu::rank]->arrive_and_wait(); }
static inline float to_f32(u16 v) {
#if F16
  _Float16 h; std::memcpy(&h, &v, 2); return (float)h;
#else
  u32 u = ((u32)v) << 16; float f; std::memcpy(&f, &u, 4); return f;
#endif
}
static inline u16 from_f32(float x) {
#if F16
  _Float16 h = (_Float16)x; u16 r; std::memcpy(&r, &h, 2); return r;
#else
  u32 u; std::memcpy(&u, &x, 4); u += 0x7FFFu + ((u >> 16) & 1u); return (u16)(u >> 16);  // nearest, ties even
#endif
}
static inline float h2f(u16 v) { _Float16 h; std::memcpy(&h, &v, 2); return (float)h; }
static inline u16 f2h(float x) { _Float16 h = (_Float16)x; u16 r; std::memcpy(&r, &h, 2); return r; }
static inline float tanh_(float x) { return std::tanh(x); }
static inline float sigm(float x) { return 1.0f / (1.0f + std::exp(-x)); }
static inline float frag(u32 reg, int half) { return to_f32((u16)(reg >> (16 * half))); }
static inline void mma(float* d, const u32* a, u32 b0, u32 b1) {
  const int lane = emu::tid.x & 31, g = lane >> 2, q = lane & 3;
  auto& s = emu::cl->slots[emu::gwarp];
  std::memcpy(s[lane].a, a, 16); s[lane].b[0] = b0; s[lane].b[1] = b1;
  emu::cl->warp[emu::gwarp]->arrive_and_wait();
  for (int i = 0; i < 4; ++i) {
    const int row = g + (i >= 2 ? 8 : 0), col = 2 * q + (i & 1);
    float acc = 0.0f;
    for (int k = 0; k < 16; ++k) {  // A (row, k): lane (row % 8, k % 8 / 2); B (k, col): lane (col, k % 8 / 2)
      const float av = frag(s[(row % 8) * 4 + (k % 8) / 2].a[(row >= 8) + 2 * (k >= 8)], k & 1);
      const float bv = frag(s[col * 4 + (k % 8) / 2].b[k >= 8], k & 1);
      acc += av * bv;
    }
    d[i] += acc;
  }
  emu::cl->warp[emu::gwarp]->arrive_and_wait();
}
static inline u32 smem_addr(const void* p) {
  return (u32)((const char*)p - (const char*)emu::cl->smem[emu::rank].data());
}
static inline u32 cluster_rank() { return (u32)emu::rank; }
static inline u32 map_rank(u32 addr, u32 rank) { return (rank << 24) | (addr & 0xFFFFFFu); }
static inline void st_cluster(u32 addr, v4 v) {
  std::memcpy((char*)emu::cl->smem[addr >> 24].data() + (addr & 0xFFFFFFu), &v, 16);
}
static inline emu::MBar& mbar_at(u32 addr) {  // the emulated mbarrier behind a (cluster) address of Smem::mbar
  return emu::cl->mbars[addr >> 24][(addr & 0xFFFFFFu) / 8];  // mbar[NMB] opens both kernels' shared memory
}
static inline void st_async(u32 addr, v4 v, u32 mbar) { st_cluster(addr, v); mbar_at(mbar).complete(16); }
static inline void mbar_init(u32 addr, u32 count) { mbar_at(map_rank(addr, emu::rank)).init((int)count); }
static inline void mbar_fence_init() {}
static inline void prefetch_l2(const void*) {}
static inline void mbar_arrive(u32 addr) { mbar_at(map_rank(addr, emu::rank)).expect_arrive(0); }
static inline void __syncwarp() { emu::cl->warp[emu::gwarp]->arrive_and_wait(); }
static inline int min(int a, int b) { return a < b ? a : b; }
static inline int max(int a, int b) { return a > b ? a : b; }
static inline void mbar_expect(u32 addr, u32 bytes) { mbar_at(map_rank(addr, emu::rank)).expect_arrive(bytes); }
static inline void mbar_wait(u32 addr, u32 parity) {
  emu::MBar& b = mbar_at(map_rank(addr, emu::rank));
  for (emu::Spin w; !b.done((int)parity);) emu::spin(w);
}
static inline void cluster_arrive() { emu::token = emu::cl->all->arrive(); }
static inline void cluster_arrive_relaxed() { cluster_arrive(); }
static inline void cluster_wait() { emu::cl->all->wait(emu::token); }
static inline float shfl_xor(float v, int mask) {
  const int lane = emu::tid.x & 31;
  auto& s = emu::cl->shfl[emu::gwarp];
  s[lane] = v;
  emu::cl->warp[emu::gwarp]->arrive_and_wait();
  const float r = s[lane ^ mask];
  emu::cl->warp[emu::gwarp]->arrive_and_wait();
  return r;
}
static inline u32 f2u(float x) { u32 u; std::memcpy(&u, &x, 4); return u; }
static inline void st_cluster_f2(u32 addr, float a, float b) {
  const float v[2] = {a, b};
  std::memcpy((char*)emu::cl->smem[addr >> 24].data() + (addr & 0xFFFFFFu), v, 8);
}
static inline float rsqrt_(float x) { return 1.0f / std::sqrt(x); }
static inline void st_async_f2(u32 addr, float a, float b, u32 mbar) {
  st_cluster_f2(addr, a, b);
  mbar_at(mbar).complete(8);
}
"""

_EMU_LAUNCH = r"""
// every GPU thread of the grid (cluster after cluster) as one std::thread running body
template <class F> static void launch(int grid_y, int nw, F body) {
  for (int by = 0; by < grid_y; ++by) {
    emu::Cluster cl(nw);
    std::vector<std::thread> threads;
    for (int r = 0; r < CL; ++r)
      for (int t = 0; t < nw * 32; ++t)
        threads.emplace_back([=, &cl] {
          emu::tid = {t, 0, 0}; emu::bid = {r, by, 0}; emu::cl = &cl; emu::rank = r; emu::gwarp = r * nw + t / 32;
          body();
        });
    for (auto& th : threads) th.join();
  }
}
extern "C" int emu_run(const u16* gx, const u16* w, const u16* h0, const float* c0, u16* y, u16* hT, float* cT,
                       float* gates, float* cs, const u16* rec, const u16* zh, const u16* zc, const u16* vd,
                       const float* wch, float clip, const float* lnw, float eps, u16* rh, float* nh, float* rs,
                       int T, int B, int grid_y) {
  launch(grid_y, WARPS, [=] {
    lstm_cluster_fwd(gx, w, h0, c0, y, hT, cT, gates, cs, rec, zh, zc, vd, wch, clip, lnw, eps, rh, nh, rs, T, B);
  });
  return 0;
}
#if TRAINS
extern "C" int emu_run_bwd(const u16* w, const float* gates, const float* cs, const float* c0, const u16* dy,
                           const u16* dhT, const float* dcT, u16* da, float* dc0, float* dhz, const u16* rec,
                           const u16* zh, const u16* zc, const u16* vd, const float* wch, float clip,
                           const float* lnw, float eps, const u16* rh, const float* nh, const float* rs, u16* dgx,
                           float* dn, int T, int B, int grid_y) {
  launch(grid_y, WB, [=] {
    lstm_cluster_bwd(w, gates, cs, c0, dy, dhT, dcT, da, dc0, dhz, rec, zh, zc, vd, wch, clip, lnw, eps, rh, nh, rs,
                     dgx, dn, T, B);
  });
  return 0;
}
#endif
"""

_KERNEL = r"""
// the variants' parameters of this thread's unit: the peepholes w_ci, w_cf, w_co; LN's gains of the recurrent
// product (gates i, f, g, o), of c'_t and its bias
struct UnitParams {
#if PEEP
  float wci, wcf, wco;
#endif
#if LN
  float ghh[4], gcw, gcb;
#endif
};
static __device__ __forceinline__ UnitParams unit_params(const float* __restrict__ wch, const float* __restrict__ lnw,
                                                         int unit) {
  UnitParams p{};
#if PEEP
  p.wci = wch[unit]; p.wcf = wch[HID + unit]; p.wco = wch[2 * HID + unit];
#endif
#if LN
  for (int k = 0; k < 4; ++k) p.ghh[k] = lnw[k * HID + unit];
  p.gcw = lnw[4 * HID + unit]; p.gcb = lnw[5 * HID + unit];
#endif
  return p;
}

#if EXCH == 1
// thread 0: every mbarrier expects one arrival per warp (its share of the own slice; `warps` for h / da / the
// partial sums, `ln_warps`, the warps with units, for LN's tables) and thread 0's, which
// brings the other CTAs' bytes; armed for their first uses: buffer 1 (h / da pushed at the first step) and
// LN's tables of steps 0 and 1
static __device__ __forceinline__ void init_mbarriers(unsigned long long (&mbar)[NMB], int T, u32 bytes, int warps,
                                                      int ln_warps) {
  for (int i = 0; i < NMB; ++i) mbar_init(smem_addr(&mbar[i]), 1 + (i < 2 ? warps : ln_warps));
  mbar_fence_init();
  if (T >= 2) mbar_expect(smem_addr(&mbar[1]), bytes);
  for (int i = 2; i < NMB; ++i)
    if (T >= 1 + (i & 1)) mbar_expect(smem_addr(&mbar[i]), LBYTES);
}
#endif
#if LN
// the sum over the 8 lanes that share q: a warp's 8 units of the same batch rows (lane bits 2..4)
static __device__ __forceinline__ float unit_sum(float v) {
  v += shfl_xor(v, 4);
  v += shfl_xor(v, 8);
  return v + shfl_xor(v, 16);
}
// LN's exchange: this warp's pair (a, b) of each of the thread's rows into buf[row][partial rank * WARPS + warp]
// of every CTA of the cluster (lane g writes CTAs g, g + 8, ...); afterwards every CTA holds all NP partials of
// its rows. EXCH 0: DSMEM stores, then the cluster barrier. EXCH 1: st.async to the other CTAs, counted on their
// mbarrier `mb` of this table and step parity (LBYTES from the others; one arrival per warp for the own slice,
// plain stores), and the wait on the own one; thread 0 then arms it for two steps on (`rearm`). The tables are
// double-buffered by step parity: a CTA writes a table of parity p again (two steps on) only after it has had
// h (da) of the step between from every CTA, which each pushed after reading this one.
static __device__ __forceinline__ void share(f2 (&buf)[BT][NP], const float (&a)[NT][2], const float (&b)[NT][2],
                                             u32 rank, int warp, int g, int q, unsigned long long& mb, u32& par,
                                             int bit, bool rearm) {
  for (int d = g; d < CL; d += 8)
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        f2* slot = &buf[nt * 8 + 2 * q + j][rank * WARPS + warp];
#if EXCH == 1 && ABL != 1
        if (d == (int)rank) *slot = f2{a[nt][j], b[nt][j]};
        else st_async_f2(map_rank(smem_addr(slot), d), a[nt][j], b[nt][j], map_rank(smem_addr(&mb), d));
#else
        st_cluster_f2(map_rank(smem_addr(slot), d), a[nt][j], b[nt][j]);
#endif
      }
  __syncwarp();  // (EXCH 1: the warp's own slice is written; EXCH 0: the barrier below is .aligned)
#if ABL == 1  // the ablation "no synchronisation" (timing only): the statistics read whatever the tables hold
#elif EXCH == 1
  if ((threadIdx.x & 31) == 0) mbar_arrive(smem_addr(&mb));
  mbar_wait(smem_addr(&mb), (par >> bit) & 1);
  par ^= 1u << bit;
  if (rearm) mbar_expect(smem_addr(&mb), LBYTES);
#else
  cluster_arrive();
  cluster_wait();
#endif
}
// the sums over the NP partials of each of the thread's rows (lane g reads partials g, g + 8, ...)
static __device__ __forceinline__ void gather_sums(const f2 (&buf)[BT][NP], float (&a)[NT][2], float (&b)[NT][2],
                                                   int g, int q) {
#pragma unroll
  for (int nt = 0; nt < NT; ++nt)
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      float sa = 0.0f, sb = 0.0f;
      for (int k = g; k < NP; k += 8) {
        const f2 v = buf[nt * 8 + 2 * q + j][k];
        sa += v.x;
        sb += v.y;
      }
      a[nt][j] = unit_sum(sa);
      b[nt][j] = unit_sum(sb);
    }
}
// the mean and 1 / sqrt(var + eps) of each of the thread's rows from NP partials (mean, M2) of n values each:
// M2 = sum M2_k + n sum (mean_k - mean)^2, the means taken relative to partial 0's (no cancellation). LNPAD:
// partial k (units 8k ..) has n / 8 values a real unit, none past HREAL (its mean and M2 are 0), so weighted
static __device__ __forceinline__ void gather_stats(const f2 (&buf)[BT][NP], float n, float eps, float (&mu)[NT][2],
                                                    float (&rstd)[NT][2], int g, int q) {
#pragma unroll
  for (int nt = 0; nt < NT; ++nt)
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const int row = nt * 8 + 2 * q + j;
      const float shift = buf[row][0].x;
      float sd = 0.0f, sd2 = 0.0f, m2 = 0.0f;
      for (int k = g; k < NP; k += 8) {
        const f2 v = buf[row][k];
        const float d = v.x - shift;
#if LNPAD
        const float nk = n * (1.0f / 8) * min(max(HREAL - 8 * k, 0), 8);
        sd += nk * d;
        sd2 += nk * d * d;
#else
        sd += d;
        sd2 += d * d;
#endif
        m2 += v.y;
      }
      sd = unit_sum(sd);
      sd2 = unit_sum(sd2);
      m2 = unit_sum(m2);
#if LNPAD
      const float nn = n * (1.0f / 8) * HREAL;  // the row's real values
      mu[nt][j] = shift + sd / nn;
      rstd[nt][j] = rsqrt_(fmaxf(m2 + sd2 - sd * sd / nn, 0.0f) / nn + eps);
#else
      mu[nt][j] = shift + sd * (1.0f / NP);
      rstd[nt][j] = rsqrt_(fmaxf(m2 + n * (sd2 - sd * sd * (1.0f / NP)), 0.0f) / (n * NP) + eps);
#endif
    }
}
#endif
// gx of step t for this thread's unit, raw: [n-tile][gate][batch row 2q + j]. Loaded without branches from
// clamped rows and steps (a row past the batch only feeds its own product column, which is never stored), and
// converted where used, so that the loads issued before a step's wait do not stall there.
static __device__ __forceinline__ void load_gx(u16 (&r)[NT][4][2], const u16* __restrict__ gx, int t, int T,
                                               int B, int b0, int unit, int q) {
  t = t < T ? t : T - 1;
#pragma unroll
  for (int nt = 0; nt < NT; ++nt)
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const int b = min(b0 + nt * 8 + 2 * q + j, B - 1);
      const u16* p = gx + ((long long)t * B + b) * (4 * HID) + unit;
#pragma unroll
      for (int gate = 0; gate < 4; ++gate) r[nt][gate][j] = p[gate * HID];
    }
}

// the zoneout masks of step t for this thread's unit and whether t is within each row's length, raw:
// [n-tile][h, c, valid][batch row 2q + j] (as load_gx)
static __device__ __forceinline__ void load_zone(u16 (&r)[NT][3][2], const u16* __restrict__ zh,
                                                 const u16* __restrict__ zc, const u16* __restrict__ vd, int t,
                                                 int T, int B, int b0, int unit, int q) {
#if ZONE
  t = t < T ? (t > 0 ? t : 0) : T - 1;
#pragma unroll
  for (int nt = 0; nt < NT; ++nt)
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const long long row = (long long)t * B + min(b0 + nt * 8 + 2 * q + j, B - 1), o = row * HID + unit;
      r[nt][0][j] = ZONE_H ? zh[o] : (u16)0;
      r[nt][1][j] = ZONE_C ? zc[o] : (u16)0;
      r[nt][2][j] = VALID ? vd[row] : (u16)0;
    }
#endif
}

// RDROP: the recurrent-dropout mask of this thread's unit, [n-tile][batch row 2q + j]; 1 without it or past B
static __device__ __forceinline__ void load_rec(float (&r)[NT][2], const u16* __restrict__ rec, int B, int b0,
                                                int unit, int q) {
#pragma unroll
  for (int nt = 0; nt < NT; ++nt)
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const int b = b0 + nt * 8 + 2 * q + j;
      r[nt][j] = RDROP && b < B ? to_f32(rec[(long long)b * HID + unit]) : 1.0f;
    }
}

#if MERGE
// MERGE: h_s of every unit of the cluster's rows from the exchanged (c'_s, o_s) into the product's operand buffer
// `hb`: each warp takes whole rows (c'_s's statistics within the warp, two passes), each lane the units lane,
// lane + 32, ...; for this CTA's own units also y_s, h_T (last step) and, saved for the backward, LN(c'_s) and the
// row's 1 / std (CTA 0 writes that)
static __device__ __forceinline__ void merge_h(const f2 (&cob)[BT][HID], u16 (&hb)[BT][HS],
                                               const float* __restrict__ lnw, float eps, u16* __restrict__ y,
                                               u16* __restrict__ hT, float* __restrict__ nh, float* __restrict__ rs,
                                               int s, bool last,
                                               int B, int b0, u32 rank, int warp, int lane) {
  for (int r = warp; r < BT; r += WARPS) {
    float sum = 0.0f;
    for (int u = lane; u < HID; u += 32) sum += cob[r][u].x;
    for (int o = 16; o > 0; o >>= 1) sum += shfl_xor(sum, o);
    const float mu = sum * (1.0f / HID);
    float m2 = 0.0f;
    for (int u = lane; u < HID; u += 32) {
      const float d = cob[r][u].x - mu;
      m2 += d * d;
    }
    for (int o = 16; o > 0; o >>= 1) m2 += shfl_xor(m2, o);
    const float rstd = rsqrt_(m2 * (1.0f / HID) + eps);
    const int b = b0 + r;
    for (int u = lane; u < HID; u += 32) {
      const f2 v = cob[r][u];
      const float n = (v.x - mu) * rstd;
      const u16 h = from_f32(v.y * tanh_(n * lnw[4 * HID + u] + lnw[5 * HID + u]));
      hb[r][u] = h;
      if (b < B && u / UNITS == (int)rank) {
        y[((long long)s * B + b) * HID + u] = h;
        if (last) hT[(long long)b * HID + u] = h;
        if (nh != nullptr) nh[((long long)s * B + b) * HID + u] = n;
      }
    }
    if (lane == 0 && rank == 0 && b < B && rs != nullptr) rs[((long long)s * B + b) * 2 + 1] = rstd;
  }
}
#endif

KERNEL lstm_cluster_fwd(const u16* __restrict__ gx,    // (T, B, 4 HID): x W_ih^T + b_ih + b_hh, gates i, f, g, o
                        const u16* __restrict__ w,     // (4 HID, HID): W_hh
                        const u16* __restrict__ h0,    // (B, HID)
                        const float* __restrict__ c0,  // (B, HID)
                        u16* __restrict__ y,           // (T, B, HID)
                        u16* __restrict__ hT,          // (B, HID)
                        float* __restrict__ cT,        // (B, HID)
                        float* __restrict__ gates,     // (T, B, 4 HID) i, f, g, o after activation, or null
                        float* __restrict__ cs,        // (T, B, HID) c_t, or null (both for the backward)
                        const u16* __restrict__ rec,   // RDROP: (B, HID) mask on h_{t-1} in the product
                        const u16* __restrict__ zh,    // ZONE_H: (T, B, HID) zoneout mask of h
                        const u16* __restrict__ zc,    // ZONE_C: (T, B, HID) zoneout mask of c
                        const u16* __restrict__ vd,    // VALID: (T, B) 1 where t < the row's length (else the
                                                       // state is carried unchanged)
                        const float* __restrict__ wch, // PEEP: (3 HID) peepholes w_ci, w_cf, w_co
                        float clip,                    // CLIP: c_t clamped to [-clip, clip]
                        const float* __restrict__ lnw, // LN: (6 HID) gains of LN(r) (4 HID), of LN(c') and its bias
                        float eps,                     // LN: added to the variances
                        u16* __restrict__ rh,          // LN, saved: (T, B, HID, 4) LN(r) in float16 (|LN(r)| <=
                                                       // sqrt(4 HID)), a unit's gates together; or null (as gates)
                        float* __restrict__ nh,        // LN, saved: (T, B, HID) LN(c'_t)
                        float* __restrict__ rs,        // LN, saved: (T, B, 2) 1 / std of r and of c'_t
                        int T, int B) {
  SMEM(Smem)
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, q = lane & 3;
  const u32 rank = cluster_rank();
  const int b0 = blockIdx.y * BT;
  const int ul = warp * 8 + g;             // this thread's unit in the CTA
  const int unit = rank * UNITS + ul;      // ... in the layer

  // W_hh rows of this warp as A fragments: row r of m-tile mt is gate 2 mt + (r >= 8) of unit warp*8 + r % 8
  // (KS > 0: k-tiles KR.. go to this lane's own slots of shared memory, which only it reads: no barrier)
  u32 wa[2][KR > 0 ? KR : 1][4];  // (nvcc refuses a zero-size array)
#pragma unroll
  for (int mt = 0; mt < 2; ++mt) {
    const u32* r0 = reinterpret_cast<const u32*>(w + ((long long)(2 * mt) * HID + unit) * HID);
    const u32* r1 = reinterpret_cast<const u32*>(w + ((long long)(2 * mt + 1) * HID + unit) * HID);
#pragma unroll
    for (int kt = 0; kt < KT; ++kt) {
      const int k = kt * 8 + q;  // 32-bit words: elements kt*16 + 2q, +1
      const v4 f{r0[k], r1[k], r0[k + 4], r1[k + 4]};
      if (kt < KR) {
        u32* a = wa[mt][kt < KR ? kt : 0];
        a[0] = f.x; a[1] = f.y; a[2] = f.z; a[3] = f.w;
      }
#if KS > 0
      else sm.wsm[warp][mt][kt >= KR ? kt - KR : 0][lane] = f;
#endif
    }
  }
  for (int i = tid; i < BT * HID; i += WARPS * 32) {  // the product's operand h_0 (RDROP: h_0 * rec)
    const int r = i / HID, k = i % HID, b = b0 + r;
    u16 v = b < B ? h0[(long long)b * HID + k] : (u16)0;
#if RDROP
    if (b < B) v = from_f32(to_f32(v) * to_f32(rec[(long long)b * HID + k]));
#endif
    sm.hbuf[0][r][k] = v;
  }
  float c[NT][2], hp[NT][2], recr[NT][2];  // c_{t-1}; ZONE_H: h_{t-1} of this unit; RDROP: its mask
  load_rec(recr, rec, B, b0, unit, q);
#pragma unroll
  for (int nt = 0; nt < NT; ++nt)
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const int b = b0 + nt * 8 + 2 * q + j;
      c[nt][j] = b < B ? c0[(long long)b * HID + unit] : 0.0f;
      hp[nt][j] = b < B ? to_f32(h0[(long long)b * HID + unit]) : 0.0f;
    }
  const UnitParams up = unit_params(wch, lnw, unit);
  u16 gxr[NT][4][2], gxn[NT][4][2], zr[NT][3][2];  // gx of this step and of the next (loaded two steps ahead)
  load_gx(gxr, gx, 0, T, B, b0, unit, q);
  load_gx(gxn, gx, 1, T, B, b0, unit, q);
  load_zone(zr, zh, zc, vd, 0, T, B, b0, unit, q);
#if EXCH == 1 && ABL != 1
  // buffer b's mbarrier: thread 0's arrival with the bytes the other CTAs push (st.async), and one arrival
  // per warp of this CTA once its lanes have written this CTA's own slice (plain stores)
  const u32 bytes = (CL - 1) * BT * UNITS * (MERGE ? 8 : 2);  // (MERGE: (c'_t, o_t), two floats a unit)
  if (tid == 0) init_mbarriers(sm.mbar, T, bytes, WARPS, WARPS);  // (h_0 is pushed at step 0)
#if MERGE  // (c'_t, o_t) is pushed at every step, the last one's too: the first push is buffer 1's even at T = 1
  if (tid == 0 && T == 1) mbar_expect(smem_addr(&sm.mbar[1]), bytes);
#endif
  u32 parity = 0;  // bit b: the phase of buffer b's mbarrier to wait for
#endif
#if LN
  u32 lpar = 0;  // EXCH 1: bit 2 table + p: the phase of LN's table of step parity p to wait for
#endif
  cluster_arrive();  // every CTA of the cluster has started (and set up its barriers): its shared memory may be written
  cluster_wait();

  int cur = 0;
  for (int t = 0; t < T; ++t) {
#if EXCH == 1 && ABL != 1
    if (t >= 1) {  // h_{t-1} from every CTA (MERGE: (c'_{t-1}, o_{t-1}))
      mbar_wait(smem_addr(&sm.mbar[cur]), (parity >> cur) & 1);
      parity ^= 1u << cur;
    }
    if (tid == 0 && t + 2 <= T - 1 + MERGE) mbar_expect(smem_addr(&sm.mbar[cur]), bytes);  // h_{t+1}, pushed at t+1
#endif
#if MERGE
    if (t >= 1) {
      merge_h(sm.cobuf[cur], sm.hbuf[cur], lnw, eps, y, hT, gates != nullptr ? nh : nullptr,
              gates != nullptr ? rs : nullptr, t - 1, false, B, b0, rank, warp, lane);
      __syncthreads();  // h_{t-1} of every unit in the operand buffer before any warp's product
    }
#endif
    u16 (&st)[BT][SR] = sm.stage[t & 1];
    float sv[NT][2][5];  // the gates and c_t saved for the backward, stored after the exchange
    u16 yv[NT][2];       // h_t (RDROP: what is exchanged is h_t * rec, so y is stored from here)
#if ABL != 2
    float acc[2][NT][2][4];  // (m-tile, n-tile, even / odd k-tile: two chains), fragment order
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int s = 0; s < 2; ++s)
#pragma unroll
          for (int e = 0; e < 4; ++e) acc[mt][nt][s][e] = 0.0f;
#pragma unroll
    for (int kt = 0; kt < KT; ++kt) {
      u32 a0[4], a1[4];  // this k-tile's A fragments: registers, or (KS > 0, kt >= KR) this lane's shared slots
      if (kt < KR) {
#pragma unroll
        for (int e = 0; e < 4; ++e) { a0[e] = wa[0][kt < KR ? kt : 0][e]; a1[e] = wa[1][kt < KR ? kt : 0][e]; }
      }
#if KS > 0
      else {
        const v4 f0 = sm.wsm[warp][0][kt >= KR ? kt - KR : 0][lane], f1 = sm.wsm[warp][1][kt >= KR ? kt - KR : 0][lane];
        a0[0] = f0.x; a0[1] = f0.y; a0[2] = f0.z; a0[3] = f0.w;
        a1[0] = f1.x; a1[1] = f1.y; a1[2] = f1.z; a1[3] = f1.w;
      }
#endif
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        // B fragment: B[k][n] = h[n][k], n = batch row g, k = kt*16 + 2q (+1) and + 8 (+1)
        const u32* hr = reinterpret_cast<const u32*>(&sm.hbuf[cur][nt * 8 + g][kt * 16 + 2 * q]);
        const u32 bb0 = hr[0], bb1 = hr[4];
        mma(acc[0][nt][kt & 1], a0, bb0, bb1);
        mma(acc[1][nt][kt & 1], a1, bb0, bb1);
      }
    }
    // accumulator e = j: row g (gate i / g), batch row 2q + j; e = 2 + j: row g + 8 (gate f / o)
    float a[NT][2][4];  // the pre-activations i, f, g, o of this thread's unit (before the peepholes)
#if LN  // a = gx + LN(r) g_hh, r = the product; LN over the 4 HID gates of a row: statistics through the cluster
    float xh[NT][2][4], rsh[NT][2];  // LN(r) and 1 / std(r) of each row
    {
      float pm[NT][2], pv[NT][2], mu[NT][2];
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          float* r = xh[nt][j];
          r[0] = acc[0][nt][0][j] + acc[0][nt][1][j];
          r[1] = acc[0][nt][0][2 + j] + acc[0][nt][1][2 + j];
          r[2] = acc[1][nt][0][j] + acc[1][nt][1][j];
          r[3] = acc[1][nt][0][2 + j] + acc[1][nt][1][2 + j];
#if LNPAD  // the warp's real units only (uniform over the warp: its first unit is unit - g)
          const int nw = 4 * min(max(HREAL - (unit - g), 0), 8);
          const bool own = unit < HREAL;
          const float m = nw > 0 ? unit_sum(own ? r[0] + r[1] + r[2] + r[3] : 0.0f) / nw : 0.0f;
          pm[nt][j] = m;
          pv[nt][j] = unit_sum(own ? (r[0] - m) * (r[0] - m) + (r[1] - m) * (r[1] - m) + (r[2] - m) * (r[2] - m) +
                                     (r[3] - m) * (r[3] - m) : 0.0f);
#else
          const float m = unit_sum(r[0] + r[1] + r[2] + r[3]) * (1.0f / 32);  // this warp's 32 values of the row
          pm[nt][j] = m;
          pv[nt][j] = unit_sum((r[0] - m) * (r[0] - m) + (r[1] - m) * (r[1] - m) + (r[2] - m) * (r[2] - m) +
                               (r[3] - m) * (r[3] - m));
#endif
        }
      share(sm.lst[0][t & 1], pm, pv, rank, warp, g, q, sm.mbar[2 + (t & 1)], lpar, t & 1,
            tid == 0 && t + 2 < T);
      gather_stats(sm.lst[0][t & 1], 32.0f, eps, mu, rsh, g, q);
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int j = 0; j < 2; ++j)
#pragma unroll
          for (int k = 0; k < 4; ++k) {
            xh[nt][j][k] = (xh[nt][j][k] - mu[nt][j]) * rsh[nt][j];
#if LNPAD  // the padding's LN(r) is -mean / std, which float16 (its saved form) need not hold: it enters nothing
            if (unit >= HREAL) xh[nt][j][k] = 0.0f;  // (its gain is 0), and an inf there would be NaN in every dr
#endif
            a[nt][j][k] = to_f32(gxr[nt][k][j]) + up.ghh[k] * xh[nt][j][k];
          }
    }
#else
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        a[nt][j][0] = acc[0][nt][0][j] + acc[0][nt][1][j] + to_f32(gxr[nt][0][j]);
        a[nt][j][1] = acc[0][nt][0][2 + j] + acc[0][nt][1][2 + j] + to_f32(gxr[nt][1][j]);
        a[nt][j][2] = acc[1][nt][0][j] + acc[1][nt][1][j] + to_f32(gxr[nt][2][j]);
        a[nt][j][3] = acc[1][nt][0][2 + j] + acc[1][nt][1][2 + j] + to_f32(gxr[nt][3][j]);
      }
#endif
    float cn[NT][2];  // c'_t (sv holds the gates)
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        const float cp = c[nt][j];
        float ai_ = a[nt][j][0], af_ = a[nt][j][1], ao_ = a[nt][j][3];
#if PEEP
        ai_ += up.wci * cp;
        af_ += up.wcf * cp;
#endif
        const float sf = sigm(af_);
        const float si = CIFG ? 1.0f - sf : sigm(ai_);
        const float tg = tanh_(a[nt][j][2]);
        float cc = sf * cp + si * tg;
#if CLIP
        cc = fminf(fmaxf(cc, -clip), clip);
#endif
#if PEEP
        ao_ += up.wco * cc;
#endif
        cn[nt][j] = cc;
        sv[nt][j][0] = si; sv[nt][j][1] = sf; sv[nt][j][2] = tg; sv[nt][j][3] = sigm(ao_);
      }
#if LN && !MERGE  // n_t = LN(c'_t) g_c + b_c, LN over the HID units of a row: statistics through the cluster again
    float nhat[NT][2], rsc[NT][2];
    {
      float pm[NT][2], pv[NT][2], mu[NT][2];
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int j = 0; j < 2; ++j) {
#if LNPAD
          const int nw = min(max(HREAL - (unit - g), 0), 8);
          const bool own = unit < HREAL;
          const float m = nw > 0 ? unit_sum(own ? cn[nt][j] : 0.0f) / nw : 0.0f;
          pm[nt][j] = m;
          pv[nt][j] = unit_sum(own ? (cn[nt][j] - m) * (cn[nt][j] - m) : 0.0f);
#else
          const float m = unit_sum(cn[nt][j]) * (1.0f / 8);
          pm[nt][j] = m;
          pv[nt][j] = unit_sum((cn[nt][j] - m) * (cn[nt][j] - m));
#endif
        }
      share(sm.lst[1][t & 1], pm, pv, rank, warp, g, q, sm.mbar[4 + (t & 1)], lpar, 2 + (t & 1),
            tid == 0 && t + 2 < T);
      gather_stats(sm.lst[1][t & 1], 8.0f, eps, mu, rsc, g, q);
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int j = 0; j < 2; ++j) nhat[nt][j] = (cn[nt][j] - mu[nt][j]) * rsc[nt][j];
    }
#endif
#if MERGE  // (c'_t, o_t) of this thread's unit staged for every CTA, which computes h_t from it (merge_h)
    f2 (&cst)[BT][UNITS + 2] = sm.cstage[t & 1];
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        c[nt][j] = cn[nt][j];
        cst[nt * 8 + 2 * q + j][ul] = f2{cn[nt][j], sv[nt][j][3]};
        sv[nt][j][4] = c[nt][j];
      }
#else
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        const float cp = c[nt][j];
#if LN
        float hn = sv[nt][j][3] * tanh_(nhat[nt][j] * up.gcw + up.gcb);
#else
        float hn = sv[nt][j][3] * tanh_(cn[nt][j]);
#endif
#if ZONE_H
        { const float z = to_f32(zr[nt][0][j]); hn = z * hp[nt][j] + (1.0f - z) * hn; }
#endif
#if ZONE_C
        { const float z = to_f32(zr[nt][1][j]); c[nt][j] = z * cp + (1.0f - z) * cn[nt][j]; }
#else
        c[nt][j] = cn[nt][j];
#endif
#if VALID  // past the row's length: h and c carried unchanged
        {
          const float v = to_f32(zr[nt][2][j]);
          hn = v * hn + (1.0f - v) * hp[nt][j];
          c[nt][j] = v * c[nt][j] + (1.0f - v) * cp;
        }
#endif
        const u16 hb = from_f32(hn);
        hp[nt][j] = to_f32(hb);
        yv[nt][j] = hb;
        st[nt * 8 + 2 * q + j][ul] = RDROP ? from_f32(hp[nt][j] * recr[nt][j]) : hb;
        sv[nt][j][4] = c[nt][j];
      }
#endif
#else  // the exchange alone: copy this CTA's slice of h_{t-1} forward
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        st[nt * 8 + 2 * q + j][ul] = sm.hbuf[cur][nt * 8 + 2 * q + j][unit];
        yv[nt][j] = st[nt * 8 + 2 * q + j][ul];
      }
#endif
    // Each warp staged its own 8 units of every row: chunk `warp`, 16 bytes a row, which only it reads; so a
    // warp barrier, not a CTA barrier, before it pushes the chunk into the other buffer of every CTA of the
    // cluster (its own CTA by plain stores); not after the last step, whose h nobody reads
#if MERGE  // 64 bytes a row of this warp's units, in 16-byte parts, at every step (the last one's h_T too)
    __syncwarp();
#pragma unroll
    for (int i = lane; i < CL * BT * 4; i += 32) {
      const int dst = i / (BT * 4), r = (i / 4) % BT, part = i % 4;
      const v4 v = *reinterpret_cast<const v4*>(&cst[r][warp * 8 + 2 * part]);
      f2* slot = &sm.cobuf[cur ^ 1][r][rank * UNITS + warp * 8 + 2 * part];
      if (dst == (int)rank) *reinterpret_cast<v4*>(slot) = v;
      else st_async(map_rank(smem_addr(slot), dst), v, map_rank(smem_addr(&sm.mbar[cur ^ 1]), dst));
    }
    __syncwarp();
    if (lane == 0) mbar_arrive(smem_addr(&sm.mbar[cur ^ 1]));  // this warp's share of the own slice is written
#else
    __syncwarp();
    if (t + 1 < T) {
#pragma unroll
      for (int i = lane; i < CL * BT; i += 32) {
        const int dst = i / BT, r = i % BT;
        const v4 v = *reinterpret_cast<const v4*>(&st[r][warp * 8]);
        u16* slot = &sm.hbuf[cur ^ 1][r][rank * UNITS + warp * 8];
#if EXCH == 1 && ABL != 1
        if (dst == (int)rank) *reinterpret_cast<v4*>(slot) = v;
        else st_async(map_rank(smem_addr(slot), dst), v, map_rank(smem_addr(&sm.mbar[cur ^ 1]), dst));
#else
        st_cluster(map_rank(smem_addr(slot), dst), v);
#endif
      }
#if EXCH == 1 && ABL != 1
      __syncwarp();
      if (lane == 0) mbar_arrive(smem_addr(&sm.mbar[cur ^ 1]));  // this warp's share of the own slice is written
#endif
    }
#endif
#if EXCH == 0 && ABL != 1
    cluster_arrive();  // (the stores below need no release: the stage they read is rewritten two steps on)
#endif
#if MERGE  // (y_t: merge_h, at the next step's start)
#elif RDROP  // y_t from registers: the stage holds h_t * rec
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        const int b = b0 + nt * 8 + 2 * q + j;
        if (b < B) {
          y[((long long)t * B + b) * HID + unit] = yv[nt][j];
          if (t == T - 1) hT[(long long)b * HID + unit] = yv[nt][j];
        }
      }
#else
    for (int r = lane; r < BT; r += 32) {  // this warp's chunk of every real row
      const int b = b0 + r;
      if (b < B) {
        const v4 v = *reinterpret_cast<const v4*>(&st[r][warp * 8]);
        const long long o = (long long)b * HID + rank * UNITS + warp * 8;
        *reinterpret_cast<v4*>(&y[(long long)t * B * HID + o]) = v;
        if (t == T - 1) *reinterpret_cast<v4*>(&hT[o]) = v;
      }
    }
#endif
#if ABL != 2
    if (gates != nullptr) {  // saved for the backward, after the exchange: off the step's critical path
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          const int b = b0 + nt * 8 + 2 * q + j;
          if (b < B) {
            float* gp = gates + ((long long)t * B + b) * G4F + unit;
            gp[0] = sv[nt][j][0]; gp[HID] = sv[nt][j][1]; gp[2 * HID] = sv[nt][j][2]; gp[3 * HID] = sv[nt][j][3];
            cs[((long long)t * B + b) * HID + unit] = sv[nt][j][4];
#if LN
            const u32 x01 = f2h(xh[nt][j][0]) | ((u32)f2h(xh[nt][j][1]) << 16);
            const u32 x23 = f2h(xh[nt][j][2]) | ((u32)f2h(xh[nt][j][3]) << 16);
            *reinterpret_cast<u2*>(rh + (((long long)t * B + b) * HID + unit) * 4) = u2{x01, x23};  // (8 bytes)
#if MERGE
            if (unit == 0) rs[((long long)t * B + b) * 2] = rsh[nt][j];  // (LN(c'_t), its 1 / std: merge_h)
#else
            nh[((long long)t * B + b) * HID + unit] = nhat[nt][j];
            if (unit == 0) {  // (the same in every thread of the row)
              rs[((long long)t * B + b) * 2] = rsh[nt][j];
              rs[((long long)t * B + b) * 2 + 1] = rsc[nt][j];
            }
#endif
#endif
          }
        }
    }
#endif
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int k = 0; k < 4; ++k)
#pragma unroll
        for (int j = 0; j < 2; ++j) gxr[nt][k][j] = gxn[nt][k][j];  // (loaded a step ago: no wait here)
    load_gx(gxn, gx, t + 2, T, B, b0, unit, q);
    load_zone(zr, zh, zc, vd, t + 1, T, B, b0, unit, q);
#if EXCH == 0 && ABL != 1
    cluster_wait();
#endif
    cur ^= 1;
  }
#if MERGE  // h_{T-1}: y, h_T
  mbar_wait(smem_addr(&sm.mbar[cur]), (parity >> cur) & 1);
  merge_h(sm.cobuf[cur], sm.hbuf[cur], lnw, eps, y, hT, gates != nullptr ? nh : nullptr,
          gates != nullptr ? rs : nullptr, T - 1, true, B, b0, rank, warp, lane);
#endif
#pragma unroll
  for (int nt = 0; nt < NT; ++nt)
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const int b = b0 + nt * 8 + 2 * q + j;
      if (b < B) cT[(long long)b * HID + unit] = c[nt][j];
    }
  cluster_arrive();  // no CTA leaves while another may still write into its shared memory
  cluster_wait();
}
#if TRAINS
// dLoss/d(pre-activations) of step t, backwards from t = T-1: program (cluster) of the forward's, mirrored.
// Each CTA holds the columns of W_hh for its units as A fragments of dh^T = W_hh[:, units]^T da^T, the
// product's K (the 4 HID gate columns of da) split over the warps; the partial sums meet in shared memory.
// da_t of its units is pushed to every CTA as h_t is in the forward.
// what step t's cell needs, loaded as load_gx is: clamped rows and steps, no branches, dy_t raw
static __device__ __forceinline__ void load_saved(float (&gl)[NT][4][2], float (&cp)[NT][2], u16 (&dyl)[NT][2],
                                                  const float* __restrict__ gates, const float* __restrict__ cs,
                                                  const float* __restrict__ c0, const u16* __restrict__ dy, int t,
                                                  int B, int b0, int unit, int q) {
  t = t > 0 ? t : 0;
#pragma unroll
  for (int nt = 0; nt < NT; ++nt)
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const int b = min(b0 + nt * 8 + 2 * q + j, B - 1);
      const float* gp = gates + ((long long)t * B + b) * G4 + unit;
#pragma unroll
      for (int gate = 0; gate < 4; ++gate) gl[nt][gate][j] = gp[gate * HID];
      cp[nt][j] = *(t > 0 ? cs + ((long long)(t - 1) * B + b) * HID + unit : c0 + (long long)b * HID + unit);
      dyl[nt][j] = dy[((long long)t * B + b) * HID + unit];
    }
}

// step t's saved gates, c_t and dy_t into L2 (they were written a whole forward ago and may be in HBM)
static __device__ __forceinline__ void prefetch_saved(const float* __restrict__ gates, const float* __restrict__ cs,
                                                      const u16* __restrict__ dy, int t, int B, int b0, int unit,
                                                      int q) {
  if (t < 0) return;
#pragma unroll
  for (int nt = 0; nt < NT; ++nt)
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const long long row = (long long)t * B + min(b0 + nt * 8 + 2 * q + j, B - 1);
#pragma unroll
      for (int gate = 0; gate < 4; ++gate) prefetch_l2(gates + row * G4 + gate * HID + unit);
      prefetch_l2(cs + row * HID + unit);
      prefetch_l2(dy + row * HID + unit);
    }
}

#if LN
// LN's saved values of step t for this thread's unit (as load_saved): LN(r) [n-tile][row][gates 0, 1 | 2, 3] as
// float16 pairs, LN(c'_t), and the rows' 1 / std of r and of c'_t
static __device__ __forceinline__ void load_ln(u32 (&xh)[NT][2][2], float (&nhat)[NT][2], float (&rst)[NT][2][2],
                                               const u16* __restrict__ rh, const float* __restrict__ nh,
                                               const float* __restrict__ rs, int t, int B, int b0, int unit, int q) {
  t = t > 0 ? t : 0;
#pragma unroll
  for (int nt = 0; nt < NT; ++nt)
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const long long row = (long long)t * B + min(b0 + nt * 8 + 2 * q + j, B - 1);
      const u2 v = *reinterpret_cast<const u2*>(rh + (row * HID + unit) * 4);  // (one 8-byte load)
      xh[nt][j][0] = v.x;
      xh[nt][j][1] = v.y;
      nhat[nt][j] = nh[row * HID + unit];
      rst[nt][j][0] = rs[row * 2];
      rst[nt][j][1] = rs[row * 2 + 1];
    }
}
static __device__ __forceinline__ void prefetch_ln(const u16* __restrict__ rh, const float* __restrict__ nh,
                                                   const float* __restrict__ rs, int t, int B, int b0, int unit,
                                                   int q) {
  if (t < 0) return;
#pragma unroll
  for (int nt = 0; nt < NT; ++nt)
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const long long row = (long long)t * B + min(b0 + nt * 8 + 2 * q + j, B - 1);
      prefetch_l2(rh + (row * HID + unit) * 4);
      prefetch_l2(nh + row * HID + unit);
      if (unit == 0) prefetch_l2(rs + row * 2);
    }
}
#endif

// dLoss/dh'_t and dLoss/dc'_t of the thread's unit and rows (dhv, dcv): dy_t, what the step after carried (dhl,
// dc) and the product's prod = (da_{t+1} W_hh)[unit], past the lengths and zoneout; dhl and dc become what goes on
// to step t-1 but through the product and the cell (grad_gates adds the cell's share to dc)
static __device__ __forceinline__ void grad_in(float (&dhv)[NT][2], float (&dcv)[NT][2], float (&dhl)[NT][2],
                                               float (&dc)[NT][2], const float (&prod)[NT][2],
                                               const u16 (&dyl)[NT][2], const float (&recr)[NT][2],
                                               const u16 (&zr)[NT][3][2]) {
#pragma unroll
  for (int nt = 0; nt < NT; ++nt)
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      float dh = to_f32(dyl[nt][j]) + dhl[nt][j] + prod[nt][j] * recr[nt][j];
      float dcn = dc[nt][j], dhp = 0.0f, dcp = 0.0f;  // dhp, dcp: dLoss/dh_{t-1}, dc_{t-1} (but the product)
#if VALID
      { const float v = to_f32(zr[nt][2][j]); dhp += (1.0f - v) * dh; dcp += (1.0f - v) * dcn; dh *= v; dcn *= v; }
#endif
#if ZONE_H
      { const float z = to_f32(zr[nt][0][j]); dhp += z * dh; dh *= 1.0f - z; }
#endif
#if ZONE_C
      { const float z = to_f32(zr[nt][1][j]); dcp += z * dcn; dcn *= 1.0f - z; }
#endif
      dhv[nt][j] = dh;
      dcv[nt][j] = dcn;
      dhl[nt][j] = dhp;
      dc[nt][j] = dcp;  // (the cell's share is added by grad_gates)
    }
}
// dLoss/da_t of the thread's unit (i, f, g, o) from dLoss/dh'_t, dLoss/dc'_t (under LN already through LN(c'_t);
// tn = tanh(n_t), h' = o tanh(n_t)) and the saved gates; adds the cell's share of dLoss/dc_{t-1} to dc
static __device__ __forceinline__ void grad_gates(float (&dav)[NT][2][4], float (&dc)[NT][2],
                                                  const float (&dhv)[NT][2], const float (&dcv)[NT][2],
                                                  const float (&gl)[NT][4][2], const float (&cp)[NT][2],
                                                  const UnitParams& up, float clip, const float (&tn)[NT][2]) {
#pragma unroll
  for (int nt = 0; nt < NT; ++nt)
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const float dh = dhv[nt][j];
      float dcn = dcv[nt][j], dcp = 0.0f;
      const float i = gl[nt][0][j], f = gl[nt][1][j], gg = gl[nt][2][j], o = gl[nt][3][j], c1 = cp[nt][j];
#if CLIP
      const float cn = f * c1 + i * gg;  // c'_t before the clip, recomputed (the saved c_t is the zoned state)
      const bool inside = cn >= -clip && cn <= clip;
#endif
#if LN
      const float da_o = dh * tn[nt][j] * o * (1.0f - o);
#else
      const float tc = tanh_(CLIP ? fminf(fmaxf(f * c1 + i * gg, -clip), clip) : f * c1 + i * gg);
      const float da_o = dh * tc * o * (1.0f - o);
      dcn += dh * o * (1.0f - tc * tc);
#endif
#if PEEP
      dcn += da_o * up.wco;
#endif
#if CLIP
      if (!inside) dcn = 0.0f;
#endif
      dcp += dcn * f;
      const float d_i = dcn * gg;
      const float da_i = CIFG ? 0.0f : d_i * i * (1.0f - i);
      const float da_f = (dcn * c1 - (CIFG ? d_i : 0.0f)) * f * (1.0f - f);
      const float da_g = dcn * i * (1.0f - gg * gg);
#if PEEP
      dcp += da_i * up.wci + da_f * up.wcf;
#endif
      dc[nt][j] += dcp;
      dav[nt][j][0] = da_i; dav[nt][j][1] = da_f; dav[nt][j][2] = da_g; dav[nt][j][3] = da_o;
    }
}
#if LN
// LN(c')'s backward, before the gates': h' = o tanh(n), n = LN(c') g_c + b_c, so dLoss/dc' += rstd_c (dn^ - mean(dn^)
// - n^ mean(dn^ n^)), dn^ = dn g_c, the means over the HID units of a row (its two sums through the cluster, table
// `buf`); writes dLoss/dn_t (the gradients of g_c, b_c) and tanh(n_t) (tn)
static __device__ __forceinline__ void ln_cell_grad(float (&dcv)[NT][2], float (&tn)[NT][2], const float (&dhv)[NT][2],
                                                    const float (&gl)[NT][4][2], const float (&nhl)[NT][2],
                                                    const float (&rsl)[NT][2][2], const UnitParams& up,
                                                    float* __restrict__ dn, int t, int B, int b0, int unit, u32 rank,
                                                    int warp, int g, int q, f2 (&buf)[BT][NP], unsigned long long& mb,
                                                    u32& lpar, int bit, bool rearm) {
  float dnh[NT][2], sa[NT][2], sb[NT][2];
#pragma unroll
  for (int nt = 0; nt < NT; ++nt)
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      tn[nt][j] = tanh_(nhl[nt][j] * up.gcw + up.gcb);
      const float dnt = dhv[nt][j] * gl[nt][3][j] * (1.0f - tn[nt][j] * tn[nt][j]);
      const int b = b0 + nt * 8 + 2 * q + j;
      if (b < B) dn[((long long)t * B + b) * HID + unit] = dnt;
      dnh[nt][j] = dnt * up.gcw;
      sa[nt][j] = unit_sum(dnh[nt][j]);
      sb[nt][j] = unit_sum(dnh[nt][j] * nhl[nt][j]);
    }
  share(buf, sa, sb, rank, warp, g, q, mb, lpar, bit, rearm);
  gather_sums(buf, sa, sb, g, q);
#pragma unroll
  for (int nt = 0; nt < NT; ++nt)
#pragma unroll
    for (int j = 0; j < 2; ++j)
      dcv[nt][j] += rsl[nt][j][1] * (dnh[nt][j] - (sa[nt][j] + nhl[nt][j] * sb[nt][j]) * (1.0f / HREAL));
}
// LN(r)'s backward, after the gates': a = gx + LN(r) g_hh, so dLoss/dgx = da (written to dgx), and what W_hh and the
// exchange need, dr = rstd (e - mean(e) - r^ mean(e r^)), e = da g_hh, the means over the 4 HID gates of a row (table
// `buf`), replaces dav
static __device__ __forceinline__ void ln_gate_grad(float (&dav)[NT][2][4], const u32 (&xhl)[NT][2][2],
                                                    const float (&rsl)[NT][2][2], const UnitParams& up,
                                                    u16* __restrict__ dgx, int t, int B, int b0, int unit, u32 rank,
                                                    int warp, int g, int q, f2 (&buf)[BT][NP], unsigned long long& mb,
                                                    u32& lpar, int bit, bool rearm) {
  float sa[NT][2], sb[NT][2];
#pragma unroll
  for (int nt = 0; nt < NT; ++nt)
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const int b = b0 + nt * 8 + 2 * q + j;
      float ea = 0.0f, eb = 0.0f;
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        if (b < B) dgx[((long long)t * B + b) * G4 + k * HID + unit] = from_f32(dav[nt][j][k]);
        dav[nt][j][k] *= up.ghh[k];
        ea += dav[nt][j][k];
        eb += dav[nt][j][k] * h2f((u16)(xhl[nt][j][k / 2] >> (16 * (k % 2))));
      }
      sa[nt][j] = unit_sum(ea);
      sb[nt][j] = unit_sum(eb);
    }
  share(buf, sa, sb, rank, warp, g, q, mb, lpar, bit, rearm);
  gather_sums(buf, sa, sb, g, q);
#pragma unroll
  for (int nt = 0; nt < NT; ++nt)
#pragma unroll
    for (int j = 0; j < 2; ++j)
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        const float xk = h2f((u16)(xhl[nt][j][k / 2] >> (16 * (k % 2))));
        dav[nt][j][k] = rsl[nt][j][0] * (dav[nt][j][k] - (sa[nt][j] + xk * sb[nt][j]) * (1.0f / (4 * HREAL)));
      }
}
#endif

#if !RS
KERNEL_B lstm_cluster_bwd(const u16* __restrict__ w,       // (4 HID, HID): W_hh
                        const float* __restrict__ gates,  // (T, B, 4 HID): the forward's i, f, g, o
                        const float* __restrict__ cs,     // (T, B, HID): the forward's c_t (the state: zoned)
                        const float* __restrict__ c0,     // (B, HID)
                        const u16* __restrict__ dy,       // (T, B, HID): dLoss/dy_t
                        const u16* __restrict__ dhT,      // (B, HID): dLoss/dh_T
                        const float* __restrict__ dcT,    // (B, HID): dLoss/dc_T
                        u16* __restrict__ da,             // (T, B, 4 HID) out: dLoss/d(x_t W_ih^T + b + h W_hh^T)
                        float* __restrict__ dc0,          // (B, HID) out: dLoss/dc_0
                        float* __restrict__ dhz,          // ZONE_H: (B, HID) out: dLoss/dh_0 through zoneout
                        const u16* __restrict__ rec,      // the forward's masks and peepholes, as there
                        const u16* __restrict__ zh,
                        const u16* __restrict__ zc,
                        const u16* __restrict__ vd,
                        const float* __restrict__ wch,
                        float clip,
                        const float* __restrict__ lnw,    // LN: the gains and bias, as the forward's
                        float eps,
                        const u16* __restrict__ rh,       // LN: the forward's saved LN(r), LN(c'_t), 1 / std
                        const float* __restrict__ nh,
                        const float* __restrict__ rs,
                        u16* __restrict__ dgx,            // LN, out: (T, B, 4 HID) dLoss/da (da receives dLoss/dr)
                        float* __restrict__ dn,           // LN, out: (T, B, HID) dLoss/dn_t (g_c's, b_c's gradients)
                        int T, int B) {
  SMEM(SmemB)
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, q = lane & 3;
  const u32 rank = cluster_rank();
  const int b0 = blockIdx.y * BT;
  const int ul = warp * 8 + g;
  const int unit = rank * UNITS + ul;

  // A[m][k] = W_hh[k][unit m]: m-tile mt, row r = this CTA's unit mt*16 + r; k in this warp's K range
  u32 wa[MT][KTW][4];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
    const int u0 = rank * UNITS + mt * 16 + g, u1 = u0 + 8;
#pragma unroll
    for (int kt = 0; kt < KTW; ++kt) {
      const int k0 = warp * KW + kt * 16 + 2 * q, k1 = k0 + 8;
      auto wk = [&](int k, int u) {  // W_hh[k][u] and W_hh[k + 1][u], one register
        return (u32)w[(long long)k * HID + u] | ((u32)w[(long long)(k + 1) * HID + u] << 16);
      };
      wa[mt][kt][0] = wk(k0, u0); wa[mt][kt][1] = wk(k0, u1); wa[mt][kt][2] = wk(k1, u0); wa[mt][kt][3] = wk(k1, u1);
    }
  }
  for (int i = tid; i < BT * GS; i += WARPS * 32) sm.dabuf[0][i / GS][i % GS] = 0;  // da_T = 0
  float dc[NT][2], dhl[NT][2], recr[NT][2];  // dLoss/dc_t; dLoss/dh_t not through the product; RDROP mask
  load_rec(recr, rec, B, b0, unit, q);
#pragma unroll
  for (int nt = 0; nt < NT; ++nt)
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const int b = b0 + nt * 8 + 2 * q + j;
      dc[nt][j] = b < B ? dcT[(long long)b * HID + unit] : 0.0f;
      dhl[nt][j] = b < B ? to_f32(dhT[(long long)b * HID + unit]) : 0.0f;
    }
  const UnitParams up = unit_params(wch, lnw, unit);
#if LN
  u32 xhl[NT][2][2];                   // the forward's LN(r) (float16 pairs), LN(c'_t), 1 / std of r and of c'_t
  float nhl[NT][2], rsl[NT][2][2];
  load_ln(xhl, nhl, rsl, rh, nh, rs, T - 1, B, b0, unit, q);
#endif
  float gl[NT][4][2], cp[NT][2];
  u16 dyl[NT][2], zr[NT][3][2];
  load_saved(gl, cp, dyl, gates, cs, c0, dy, T - 1, B, b0, unit, q);
  load_zone(zr, zh, zc, vd, T - 1, T, B, b0, unit, q);
#if EXCH == 1 && ABL != 1
  const u32 bytes = (CL - 1) * BT * 4 * UNITS * 2;  // as in the forward: the other CTAs' bytes, one arrival per warp
  if (tid == 0) init_mbarriers(sm.mbar, T, bytes, WB, WARPS);
  u32 parity = 0;
#endif
#if LN
  u32 lpar = 0;
#endif
  cluster_arrive();
  cluster_wait();

  int cur = 0;
  for (int s = 0; s < T; ++s) {
    const int t = T - 1 - s;
#if EXCH == 1 && ABL != 1
    if (s >= 1) {  // da_{t+1} from every CTA
      mbar_wait(smem_addr(&sm.mbar[cur]), (parity >> cur) & 1);
      parity ^= 1u << cur;
    }
    if (tid == 0 && s + 2 <= T - 1) mbar_expect(smem_addr(&sm.mbar[cur]), bytes);
#endif
    u16 (&st)[BT][SRB] = sm.stage[s & 1];
#if ABL != 2
    float acc[MT][NT][2][4];  // (even / odd k-tile: two chains)
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int s2 = 0; s2 < 2; ++s2)
#pragma unroll
          for (int e = 0; e < 4; ++e) acc[mt][nt][s2][e] = 0.0f;
#pragma unroll
    for (int kt = 0; kt < KTW; ++kt)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        const u32* dr = reinterpret_cast<const u32*>(&sm.dabuf[cur][nt * 8 + g][warp * KW + kt * 16 + 2 * q]);
        const u32 bb0 = dr[0], bb1 = dr[4];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) mma(acc[mt][nt][kt & 1], wa[mt][kt], bb0, bb1);
      }
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) sm.red[warp][mt][nt][e][lane] = acc[mt][nt][0][e] + acc[mt][nt][1][e];
    __syncthreads();
    // unit ul = mt*16 + 8 hi + g: its partial sums sit in every warp's lane of this thread, element 2 hi + j
    float prod[NT][2];  // (da_{t+1} W_hh)[unit]: dLoss/d(the product's operand h_t * rec)
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        prod[nt][j] = 0.0f;
#pragma unroll
        for (int v = 0; v < WARPS; ++v) prod[nt][j] += sm.red[v][ul / 16][nt][2 * ((ul % 16) / 8) + j][lane];
      }
    float dhv[NT][2], dcv[NT][2];  // dLoss/dh'_t and dLoss/dc'_t so far (past the lengths and zoneout)
    grad_in(dhv, dcv, dhl, dc, prod, dyl, recr, zr);
#if LN
    float tn[NT][2];  // tanh(n_t)
    ln_cell_grad(dcv, tn, dhv, gl, nhl, rsl, up, dn, t, B, b0, unit, rank, warp, g, q, sm.lst[0][s & 1],
                 sm.mbar[2 + (s & 1)], lpar, s & 1, tid == 0 && s + 2 < T);
#endif
    float dav[NT][2][4];  // dLoss/da_t: i, f, g, o (under LN then dLoss/dr_t)
#if LN
    grad_gates(dav, dc, dhv, dcv, gl, cp, up, clip, tn);
    ln_gate_grad(dav, xhl, rsl, up, dgx, t, B, b0, unit, rank, warp, g, q, sm.lst[1][s & 1], sm.mbar[4 + (s & 1)],
                 lpar, 2 + (s & 1), tid == 0 && s + 2 < T);
#else
    grad_gates(dav, dc, dhv, dcv, gl, cp, up, clip, dhv);
#endif
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        u16* sp = &st[nt * 8 + 2 * q + j][ul];
        sp[0] = from_f32(dav[nt][j][0]);
        sp[UNITS] = from_f32(dav[nt][j][1]);
        sp[2 * UNITS] = from_f32(dav[nt][j][2]);
        sp[3 * UNITS] = from_f32(dav[nt][j][3]);
      }
#else  // the exchange alone
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int j = 0; j < 2; ++j)
#pragma unroll
        for (int gate = 0; gate < 4; ++gate)
          st[nt * 8 + 2 * q + j][gate * UNITS + ul] = sm.dabuf[cur][nt * 8 + 2 * q + j][gate * HID + unit];
#endif
    __syncwarp();  // (as in the forward: each warp pushes the chunk it staged, units warp*8 .. +7 of each gate)
    if (s + 1 < T) {  // push da_t into the other buffer of every CTA (da_0 goes to global memory only)
#pragma unroll
      for (int i = lane; i < CL * BT * 4; i += 32) {
        const int dst = i / (BT * 4), r = (i / 4) % BT, gate = i % 4;
        const v4 v = *reinterpret_cast<const v4*>(&st[r][gate * UNITS + warp * 8]);
        u16* slot = &sm.dabuf[cur ^ 1][r][gate * HID + rank * UNITS + warp * 8];
#if EXCH == 1 && ABL != 1
        if (dst == (int)rank) *reinterpret_cast<v4*>(slot) = v;
        else st_async(map_rank(smem_addr(slot), dst), v, map_rank(smem_addr(&sm.mbar[cur ^ 1]), dst));
#else
        st_cluster(map_rank(smem_addr(slot), dst), v);
#endif
      }
#if EXCH == 1 && ABL != 1
      __syncwarp();
      if (lane == 0) mbar_arrive(smem_addr(&sm.mbar[cur ^ 1]));
#endif
    }
#if EXCH == 0 && ABL != 1
    cluster_arrive();
#endif
    for (int i = lane; i < BT * 4; i += 32) {
      const int r = i / 4, gate = i % 4, b = b0 + r;
      if (b < B)
        *reinterpret_cast<v4*>(&da[((long long)t * B + b) * G4 + gate * HID + rank * UNITS + warp * 8]) =
            *reinterpret_cast<const v4*>(&st[r][gate * UNITS + warp * 8]);
    }
    load_saved(gl, cp, dyl, gates, cs, c0, dy, t - 1, B, b0, unit, q);
    prefetch_saved(gates, cs, dy, t - 4, B, b0, unit, q);  // (into L2: the loads above, three steps on)
#if LN
    load_ln(xhl, nhl, rsl, rh, nh, rs, t - 1, B, b0, unit, q);
    prefetch_ln(rh, nh, rs, t - 4, B, b0, unit, q);
#endif
    load_zone(zr, zh, zc, vd, t - 1, T, B, b0, unit, q);
#if EXCH == 0 && ABL != 1
    cluster_wait();
#endif
    cur ^= 1;
  }
#pragma unroll
  for (int nt = 0; nt < NT; ++nt)
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const int b = b0 + nt * 8 + 2 * q + j;
      if (b < B) {
        dc0[(long long)b * HID + unit] = dc[nt][j];
        if (dhz != nullptr) dhz[(long long)b * HID + unit] = dhl[nt][j];
      }
    }
  cluster_arrive();
  cluster_wait();
}
#else  // RS
// The backward as a reduce-scatter (above H = 256, where W_hh's columns and a broadcast da_t do not fit a CTA):
// each CTA keeps the rows of W_hh of its own 4 UNITS gates (as the forward), as A fragments of the partial
// dh^T = W_hh[its gate rows, :]^T da_t[its gate columns]^T over every unit of the layer (M = HID, split over the
// warps; K = 4 UNITS), and sends each CTA the partial sums of that CTA's units; the receiver adds the CL
// partials. da_t itself never leaves the CTA that computes it. Warps WARPS.. (WB > WARPS) take part in the
// product only, so the registers of 8 warps hold W_hh (the k-tiles KRB.. in shared memory, as the forward's).
KERNEL_B lstm_cluster_bwd(const u16* __restrict__ w, const float* __restrict__ gates, const float* __restrict__ cs,
                          const float* __restrict__ c0, const u16* __restrict__ dy, const u16* __restrict__ dhT,
                          const float* __restrict__ dcT, u16* __restrict__ da, float* __restrict__ dc0,
                          float* __restrict__ dhz, const u16* __restrict__ rec, const u16* __restrict__ zh,
                          const u16* __restrict__ zc, const u16* __restrict__ vd, const float* __restrict__ wch,
                          float clip, const float* __restrict__ lnw, float eps, const u16* __restrict__ rh,
                          const float* __restrict__ nh, const float* __restrict__ rs, u16* __restrict__ dgx,
                          float* __restrict__ dn, int T, int B) {  // (the parameters of the broadcast form above)
  SMEM(SmemB)
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, q = lane & 3;
  const u32 rank = cluster_rank();
  const int b0 = blockIdx.y * BT;
  const bool cellw = warp < WARPS;            // the warps with units of their own (the cell's)
  const int ul = (cellw ? warp : 0) * 8 + g;  // (the product-only warps load warp 0's values and store nothing)
  const int unit = rank * UNITS + ul;

  // A[m][k] = W_hh[gate row of column k][unit m]: m-tile warp * MW + mt of the layer's units; column k = gate *
  // UNITS + u is gate `gate` of this CTA's unit u (row gate * HID + rank * UNITS + u of W_hh)
  u32 wa[MW][KRB > 0 ? KRB : 1][4];  // (nvcc refuses a zero-size array)
#pragma unroll
  for (int mt = 0; mt < MW; ++mt) {
    const int m0 = (warp * MW + mt) * 16 + g, m1 = m0 + 8;
#pragma unroll
    for (int kt = 0; kt < KTB; ++kt) {
      const int k0 = kt * 16 + 2 * q, k1 = k0 + 8;
      auto wk = [&](int k, int m) {  // W_hh[row(k)][m] and W_hh[row(k + 1)][m] (k even: the same gate), one register
        const long long r = (long long)(k / UNITS) * HID + rank * UNITS + k % UNITS;
        return (u32)w[r * HID + m] | ((u32)w[(r + 1) * HID + m] << 16);
      };
      const v4 f{wk(k0, m0), wk(k0, m1), wk(k1, m0), wk(k1, m1)};
      if (kt < KRB) {
        u32* a = wa[mt][kt < KRB ? kt : 0];
        a[0] = f.x; a[1] = f.y; a[2] = f.z; a[3] = f.w;
      }
#if KSB > 0
      else sm.wsm[warp][mt][kt >= KRB ? kt - KRB : 0][lane] = f;
#endif
    }
  }
  float dc[NT][2], dhl[NT][2], recr[NT][2];  // dLoss/dc_t; dLoss/dh_t not through the product; RDROP mask
  load_rec(recr, rec, B, b0, unit, q);
#pragma unroll
  for (int nt = 0; nt < NT; ++nt)
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const int b = b0 + nt * 8 + 2 * q + j;
      dc[nt][j] = b < B ? dcT[(long long)b * HID + unit] : 0.0f;
      dhl[nt][j] = b < B ? to_f32(dhT[(long long)b * HID + unit]) : 0.0f;
    }
  const UnitParams up = unit_params(wch, lnw, unit);
  float gl[NT][4][2], cp[NT][2];
  u16 dyl[NT][2], zr[NT][3][2];
  load_saved(gl, cp, dyl, gates, cs, c0, dy, T - 1, B, b0, unit, q);
  load_zone(zr, zh, zc, vd, T - 1, T, B, b0, unit, q);
#if EXCH == 1 && ABL != 1
  const u32 bytes = (CL - 1) * UNITS * BT * 4;  // the other CTAs' partial sums of this CTA's units; an arrival a warp
  if (tid == 0) init_mbarriers(sm.mbar, T, bytes, WB, WARPS);  // (LN's tables: the cell warps')
  u32 parity = 0;
#endif
#if LN
  u32 xhl[NT][2][2], lpar = 0;  // the forward's LN(r) (float16 pairs), LN(c'_t), 1 / std of r and of c'_t
  float nhl[NT][2], rsl[NT][2][2];
  load_ln(xhl, nhl, rsl, rh, nh, rs, T - 1, B, b0, unit, q);
#endif
  cluster_arrive();
  cluster_wait();

  int cur = 0;
  for (int s = 0; s < T; ++s) {
    const int t = T - 1 - s;
#if EXCH == 1 && ABL != 1
    if (s >= 1) {  // the partial sums of dh_t = W_hh^T da_{t+1} from every CTA
      mbar_wait(smem_addr(&sm.mbar[cur]), (parity >> cur) & 1);
      parity ^= 1u << cur;
    }
    if (tid == 0 && s + 2 <= T - 1) mbar_expect(smem_addr(&sm.mbar[cur]), bytes);  // (the partial sums of step s + 2)
#endif
    u16 (&st)[BT][SRB] = sm.stage[s & 1];
    if (cellw) {
      float prod[NT][2];  // (da_{t+1} W_hh)[unit]: the CL partial sums (none at the last step: da_T = 0)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        float p0 = 0.0f, p1 = 0.0f;
        if (s >= 1) {
#pragma unroll
          for (int src = 0; src < CL; ++src) {
            const f2 v = *reinterpret_cast<const f2*>(&sm.part[LN ? 0 : cur][src][ul][nt * 8 + 2 * q]);
            p0 += v.x;
            p1 += v.y;
          }
        }
        prod[nt][0] = p0;
        prod[nt][1] = p1;
      }
      float dhv[NT][2], dcv[NT][2], dav[NT][2][4];
      grad_in(dhv, dcv, dhl, dc, prod, dyl, recr, zr);
#if LN  // (the row statistics' two exchanges: the cell warps of every CTA, tables as the broadcast form's)
      float tn[NT][2];
      ln_cell_grad(dcv, tn, dhv, gl, nhl, rsl, up, dn, t, B, b0, unit, rank, warp, g, q, sm.lst[0][s & 1],
                   sm.mbar[2 + (s & 1)], lpar, s & 1, tid == 0 && s + 2 < T);
      grad_gates(dav, dc, dhv, dcv, gl, cp, up, clip, tn);
      ln_gate_grad(dav, xhl, rsl, up, dgx, t, B, b0, unit, rank, warp, g, q, sm.lst[1][s & 1], sm.mbar[4 + (s & 1)],
                   lpar, 2 + (s & 1), tid == 0 && s + 2 < T);
#else
      grad_gates(dav, dc, dhv, dcv, gl, cp, up, clip, dhv);
#endif
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          u16* sp = &st[nt * 8 + 2 * q + j][ul];
          sp[0] = from_f32(dav[nt][j][0]);
          sp[UNITS] = from_f32(dav[nt][j][1]);
          sp[2 * UNITS] = from_f32(dav[nt][j][2]);
          sp[3 * UNITS] = from_f32(dav[nt][j][3]);
        }
    }
#if LN && EXCH == 0 && ABL != 1
    else {  // the product-only warps' part in the cell warps' two cluster barriers (LN's exchanges): they publish
            // nothing there, so a relaxed arrival (no MEMBAR)
      cluster_arrive_relaxed();
      cluster_wait();
      cluster_arrive_relaxed();
      cluster_wait();
    }
#endif
    __syncthreads();  // da_t of every unit of this CTA staged: each warp's product reads all of it
    if (s + 1 < T) {  // the partial dh_{t-1} of every unit, each CTA's share sent to it (dh_0's: the host's GEMM)
      float acc[MW][NT][4];
#pragma unroll
      for (int mt = 0; mt < MW; ++mt)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
          for (int e = 0; e < 4; ++e) acc[mt][nt][e] = 0.0f;
#pragma unroll
      for (int kt = 0; kt < KTB; ++kt) {
        u32 bb[NT][2];  // B[k][n] = da_t[row n][column k]
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
          const u32* dr = reinterpret_cast<const u32*>(&st[nt * 8 + g][kt * 16 + 2 * q]);
          bb[nt][0] = dr[0];
          bb[nt][1] = dr[4];
        }
#pragma unroll
        for (int mt = 0; mt < MW; ++mt) {
          u32 a[4];  // registers, or (kt >= KRB) this lane's own shared slots
          if (kt < KRB) {
#pragma unroll
            for (int e = 0; e < 4; ++e) a[e] = wa[mt][kt < KRB ? kt : 0][e];
          }
#if KSB > 0
          else {
            const v4 f = sm.wsm[warp][mt][kt >= KRB ? kt - KRB : 0][lane];
            a[0] = f.x; a[1] = f.y; a[2] = f.z; a[3] = f.w;
          }
#endif
#pragma unroll
          for (int nt = 0; nt < NT; ++nt) mma(acc[mt][nt], a, bb[nt][0], bb[nt][1]);
        }
      }
      // accumulator e: unit m-tile row g (e < 2) or g + 8, batch row 2q + (e & 1). Lanes q and q ^ 1 trade halves
      // (two shuffles), so each sends one 16-byte store: the even lane unit g's rows 2q .. 2q + 3, the odd lane
      // unit g + 8's rows 2q - 2 .. 2q + 1, into slot [source = this CTA][the unit][rows] of the unit's CTA
      const bool odd = q & 1;
#pragma unroll
      for (int mt = 0; mt < MW; ++mt)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
          const float* a = acc[mt][nt];
          const float r0 = shfl_xor(odd ? a[0] : a[2], 1), r1 = shfl_xor(odd ? a[1] : a[3], 1);
          const int m = (warp * MW + mt) * 16 + g + (odd ? 8 : 0), dst = m / UNITS;
          // (LN: one buffer. A CTA reads its partial sums of step s before its part in LN's first exchange of step
          // s, and every other CTA writes those of step s + 1 only after that exchange and its CTA barrier)
          float* slot = &sm.part[LN ? 0 : cur ^ 1][rank][m % UNITS][nt * 8 + 2 * (q & 2)];
          const v4 v = odd ? v4{f2u(r0), f2u(r1), f2u(a[2]), f2u(a[3])} : v4{f2u(a[0]), f2u(a[1]), f2u(r0), f2u(r1)};
#if EXCH == 1 && ABL != 1
          if (dst == (int)rank) *reinterpret_cast<v4*>(slot) = v;
          else st_async(map_rank(smem_addr(slot), dst), v, map_rank(smem_addr(&sm.mbar[cur ^ 1]), dst));
#else
          st_cluster(map_rank(smem_addr(slot), dst), v);
#endif
        }
#if EXCH == 1 && ABL != 1
      __syncwarp();
      if (lane == 0) mbar_arrive(smem_addr(&sm.mbar[cur ^ 1]));  // this warp's partial sums for its own CTA written
#endif
    }
#if EXCH == 0 && ABL != 1
    cluster_arrive();  // (partial sums sent)
#endif
    if (cellw) {
      for (int i = lane; i < BT * 4; i += 32) {
        const int r = i / 4, gate = i % 4, b = b0 + r;
        if (b < B)
          *reinterpret_cast<v4*>(&da[((long long)t * B + b) * G4 + gate * HID + rank * UNITS + warp * 8]) =
              *reinterpret_cast<const v4*>(&st[r][gate * UNITS + warp * 8]);
      }
      load_saved(gl, cp, dyl, gates, cs, c0, dy, t - 1, B, b0, unit, q);
      prefetch_saved(gates, cs, dy, t - 4, B, b0, unit, q);
#if LN
      load_ln(xhl, nhl, rsl, rh, nh, rs, t - 1, B, b0, unit, q);
      prefetch_ln(rh, nh, rs, t - 4, B, b0, unit, q);
#endif
      load_zone(zr, zh, zc, vd, t - 1, T, B, b0, unit, q);
    }
#if EXCH == 0 && ABL != 1
    cluster_wait();
#endif
    cur ^= 1;
  }
  if (cellw) {
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        const int b = b0 + nt * 8 + 2 * q + j;
        if (b < B) {
          dc0[(long long)b * HID + unit] = dc[nt][j];
          if (dhz != nullptr) dhz[(long long)b * HID + unit] = dhl[nt][j];
        }
      }
  }
  cluster_arrive();
  cluster_wait();
}
#endif  // RS
#endif
"""

#: the largest cluster that every sm_90 GPU must be able to schedule ("portable" size)
MAX_CLUSTER = 8
#: compile-time ablations, for benchmarks/gpu_cluster.py: 1 = no synchronisation between CTAs (wrong numbers, timing
#: only), 2 = the exchange alone (no product, no cell)
ABLATIONS = {0: "full step", 1: "no synchronisation", 2: "exchange only"}


#: how h_t reaches the other CTAs' shared memory each step: "barrier" = plain DSMEM stores, then the
#: cluster's hardware barrier (arrive.release / wait.acquire); "mbarrier" = ``st.async`` stores that count
#: their bytes on the receiving CTA's mbarrier, which the receiver alone waits on (no cluster-wide barrier)
EXCHANGES = ("barrier", "mbarrier")
#: the kernels' compile-time variant switches (lstmkit.nn's names: peephole, coupled_input_forget, cell_clip,
#: recurrent_dropout, zoneout on h and on c, lengths, layer_norm); weight drop needs none (W_hh is masked before
#: the call). LN exchanges two row statistics a step through the cluster, besides h_t (da_t in the backward).
FLAGS = ("PEEP", "CIFG", "CLIP", "RDROP", "ZONE_H", "ZONE_C", "VALID", "LN")


class ClusterConfig:
    """One compiled configuration: hidden size ``H``, ``C`` CTAs per cluster, ``NT`` n-tiles of 8 batch rows;
    ``kr``: the k-tiles (16 columns) of W_hh each warp of the forward keeps in registers (default: all, H / 16),
    the rest in shared memory. The backward (:attr:`trains`): the broadcast form, where W_hh is all in registers
    and a CTA has whole 16-unit m-tiles (H <= 256); or with ``rs`` the reduce-scatter form (no "exchange only"
    ablation), :attr:`wb` warps, ``krb`` of each warp's k-tiles in registers (default: all of
    its ``units / 4``), the rest in shared memory. ``real``: under layer norm, the layer's own units where ``H``
    is padded (its statistics and means leave the padding out; default ``H``). ``merge``: under layer norm, the
    forward exchanges (c'_t, o_t) instead of h_t and every CTA computes h_t of every unit (:func:`config`)."""

    def __init__(self, H: int, C: int, NT: int, dtype: torch.dtype, ablate: int = 0, fast: bool = True,
                 exchange: str = "barrier", flags: tuple[str, ...] = (), kr: int | None = None,
                 rs: bool = False, krb: int | None = None, real: int | None = None,
                 merge: bool = False):  # fmt: skip
        self.H, self.C, self.NT, self.dtype, self.ablate, self.fast = H, C, NT, dtype, ablate, fast
        self.real = H if real is None else real
        self.merge = bool(merge)
        self.exchange, self.flags = exchange, tuple(sorted(flags))
        self.kr = H // 16 if kr is None else kr
        self.units = H // C
        self.threads = self.units // 8 * 32
        self.batch_rows = 8 * NT
        self.rs = bool(rs)
        cw = self.units // 8  # the forward's warps: one per 8 units
        # RS: the most warps (<= 8) that split the H / 16 m-tiles of dh evenly, at least one per 8 units
        wb = max((d for d in range(1, 9) if (H // 16) % d == 0 and d >= cw), default=0) if self.rs else cw
        self.wb, self.bthreads = wb, wb * 32
        self.krb = (self.units // 4 if krb is None else krb) if self.rs else 0
        if self.rs:
            self.trains = wb > 0 and self.units % 4 == 0 and ablate != 2
        else:
            self.trains = H <= 256 and self.units % 16 == 0 and self.kr == H // 16

    def key(self) -> tuple:
        split = () if self.kr == self.H // 16 else (self.kr,)  # (the keys of register-only configurations as before)
        if self.rs:
            split = (self.kr, True, self.krb)
        if self.real != self.H or self.merge:  # (all positions: ClusterConfig(*key) rebuilds the configuration)
            split = (self.kr, self.rs, self.krb if self.rs else None, self.real) + ((True,) if self.merge else ())
        return (self.H, self.C, self.NT, self.dtype, self.ablate, self.fast, self.exchange, self.flags, *split)

    def __repr__(self) -> str:
        name = {torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]
        abl = "" if not self.ablate else f", {ABLATIONS[self.ablate]}"
        split = "" if self.kr == self.H // 16 else f", {self.kr} of {self.H // 16} k-tiles in registers"
        if self.real != self.H:
            split += f", {self.real} real units"
        if self.merge:
            split += ", (c', o) exchanged instead of h"
        if self.rs:
            split += (f", backward reduce-scatter: {self.bthreads} threads, {self.krb} of {self.units // 4} k-tiles "
                      "in registers" if self.trains else ", no backward")  # fmt: skip
        return (f"ClusterConfig(H={self.H}, {self.C} CTAs x {self.units} units, {self.threads} threads, "
                f"{self.batch_rows} batch rows, {name}, {self.exchange}{'' if self.fast else ', exact activations'}"
                f"{abl}{''.join(', ' + f for f in self.flags)}{split})")  # fmt: skip


def _registers_fit(H: int, C: int) -> bool:
    """Whether both kernels' threads fit their registers without spilling, with 16 batch rows and every
    variant on: the backward needs about H / 2 (its share of W_hh) + 8 x m-tiles x 2 (accumulators) + 95, and
    a warp scheduler (a quarter of the SM: 16384 registers) holds ceil(warps / 4) warps. Checked against ptxas
    for sm_90 at every H = 16 .. 256 and cluster size (``benchmarks/gpu_cluster.py --compile-only``)."""
    return H // C // 8 * 32 <= 1024 and _registers_needed(H, C) <= _register_cap(H, C)


def _registers_needed(H: int, C: int) -> int:
    return H // 2 + 8 * (H // C // 16) * 2 + 95


def _register_cap(H: int, C: int) -> int:
    return min(255, 16384 // (-(-(H // C // 8) // 4) * 32) // 8 * 8)


#: config's and kernel_units' answers (a configuration, a size, or the refusal's message) by their arguments, and
#: the device's capability, properties and routing answers (_capability, _properties, _gpu_reason): each call of a
#: routed layer asks them several times, and on run 6's GPU host that was a noticeable part of a call's 0.8 ms of
#: host time (benchmarks/gpu_module_gap.py); all are pure functions of their arguments in a process
_ANSWERS: dict[tuple, tuple[bool, object]] = {}


def _answer(key: tuple, make):
    """``make()`` once per ``key``: its value, or its ValueError raised again with the same message."""
    got = _ANSWERS.get(key)
    if got is None:
        try:
            got = (True, make())
        except ValueError as e:
            got = (False, str(e))
        _ANSWERS[key] = got
    if not got[0]:
        raise ValueError(got[1])
    return got[1]


def config(B: int, H: int, dtype: torch.dtype, cluster: int | None = None, ablate: int = 0,
           fast: bool = True, exchange: str = "barrier", flags: tuple[str, ...] = (),
           kr: int | None = None, rs: bool | None = None, krb: int | None = None,
           real: int | None = None, merge: bool = False) -> ClusterConfig:  # fmt: skip
    """The configuration for batch ``B``, hidden size ``H``; ``ValueError`` saying why when there is none
    (remembered per arguments: the configuration returned is shared, not to be modified).
    ``real``: a layer of ``real`` units run padded to ``H`` (:func:`kernel_units`); only layer norm, whose row
    statistics and means must leave the padding out, compiles it in (elsewhere the padding needs nothing).
    ``merge``: layer norm's forward with one exchange a step fewer (c'_t and o_t sent instead of h_t, every CTA
    taking c'_t's statistics and computing h_t of every unit itself; docs/gpu.md, session 11): layer norm with at
    most the peephole, coupled-gate and clip switches, the mbarrier exchange, unpadded, where shared memory holds
    the (c', o) buffers (H <= 512). Not routed: timed against the two-exchange form first (gpu_cluster.py).
    ``kr``: how many k-tiles of W_hh the forward keeps in registers (tests, benchmarks; default: config's choice).
    ``rs``: the backward's reduce-scatter form (default: above H = 256); ``krb``: its k-tiles
    in registers a warp (tests, benchmarks; default: what the registers hold).

    ``cluster``: CTAs per cluster (default: the largest of 8, 4, 2, 1 with at least 32 units a CTA, whole 16-unit
    tiles and registers enough; H = 16, 32, 48, 64, 96, 128, 192, 256 have one). H = 384, 512, 640, 768: 8 batch
    rows a cluster, the k-tiles of W_hh the registers cannot hold in shared memory, a cluster of 8 or
    (non-portable) 16, and the backward in its reduce-scatter form (:func:`_split_config`)."""
    args = (B, H, dtype, cluster, ablate, fast, exchange, tuple(flags), kr, rs, krb, real, bool(merge))
    return _answer(("config", *args), lambda: _make_config(*args))


def _make_config(
    B: int, H: int, dtype: torch.dtype, cluster: int | None, ablate: int, fast: bool, exchange: str,
    flags: tuple[str, ...], kr: int | None, rs: bool | None, krb: int | None, real: int | None = None,
    merge: bool = False,
) -> ClusterConfig:  # fmt: skip
    if dtype not in (torch.bfloat16, torch.float16):
        raise ValueError(f"the cluster kernel runs bfloat16 or float16, got {dtype}; cast the layer first")
    if exchange not in EXCHANGES:
        raise ValueError(f"exchange must be one of {EXCHANGES}, got {exchange!r}")
    if set(flags) - set(FLAGS):
        raise ValueError(f"unknown variant switches {sorted(set(flags) - set(FLAGS))}; the kernels have {FLAGS}")
    if ablate not in ABLATIONS:
        raise ValueError(f"ablate must be one of {sorted(ABLATIONS)}, got {ablate}")
    if ablate == 2 and "LN" in flags:
        raise ValueError("the exchange-only ablation times the plain step: run it without LN")
    if B < 1 or H < 16:
        raise ValueError(f"need B >= 1 and H >= 16, got B={B}, H={H}")
    cfg = _split_config(H, dtype, cluster, ablate, fast, exchange, tuple(flags)) if H > 256 else _config(
        B, H, dtype, cluster, ablate, fast, exchange, tuple(flags))  # fmt: skip
    if kr is not None or rs is not None or krb is not None:
        if kr is not None and not 0 <= kr <= H // 16:
            raise ValueError(f"kr={kr}: the k-tiles in registers are 0 .. H / 16 = {H // 16}")
        rs = cfg.rs if rs is None else rs
        if krb is not None and not (rs and 0 <= krb <= cfg.units // 4):
            raise ValueError(f"krb={krb}: the reduce-scatter backward's k-tiles in registers are 0 .. units / 4 = "
                             f"{cfg.units // 4} (and need rs)")  # fmt: skip
        krb = krb if krb is not None else cfg.krb if cfg.rs else None
        cfg = ClusterConfig(cfg.H, cfg.C, cfg.NT, dtype, ablate, fast, exchange, flags,
                            kr=cfg.kr if kr is None else kr, rs=rs, krb=krb)  # fmt: skip
        for kind, size in zip(("forward", "backward"), _smem_bytes(cfg)):
            if size > MAX_SMEM:
                raise ValueError(f"kr={cfg.kr}, krb={cfg.krb}: the {kind}'s other k-tiles need {size} bytes of "
                                 f"shared memory a CTA, over {MAX_SMEM}; keep more in registers")  # fmt: skip
        if rs and not cfg.trains:
            raise ValueError(f"{cfg}: no reduce-scatter backward for it (the exchange-only ablation, or no even "
                             "split of the m-tiles over the warps)")  # fmt: skip
    if real is not None and real != H:
        if not 1 <= real < H:
            raise ValueError(f"real={real}: the layer's own units run padded to H={H}, so 1 <= real < H")
        if "LN" in flags:
            cfg = ClusterConfig(cfg.H, cfg.C, cfg.NT, dtype, ablate, fast, exchange, flags, kr=cfg.kr, rs=cfg.rs,
                                krb=cfg.krb if cfg.rs else None, real=real)  # fmt: skip
    if merge:
        if "LN" not in flags or set(flags) - {"LN", "PEEP", "CIFG", "CLIP"}:
            raise ValueError(f"merge: layer norm with at most PEEP, CIFG, CLIP (their work is done before c'_t), got "
                             f"{flags}")  # fmt: skip
        if exchange != "mbarrier" or ablate or cfg.real != H:
            raise ValueError("merge: the mbarrier exchange, no ablation, an unpadded layer")
        cfg = ClusterConfig(cfg.H, cfg.C, cfg.NT, dtype, ablate, fast, exchange, flags, kr=cfg.kr, rs=cfg.rs,
                            krb=cfg.krb if cfg.rs else None, merge=True)  # fmt: skip
        if _smem_bytes(cfg)[0] > MAX_SMEM:
            raise ValueError(f"merge at H={H}: the forward's (c', o) buffers need {_smem_bytes(cfg)[0]} bytes of "
                             f"shared memory a CTA, over {MAX_SMEM}")  # fmt: skip
    return cfg


#: the hidden sizes above 256 the kernels run (W_hh partly in shared memory: :func:`_split_config`)
SPLIT_SIZES = (384, 512, 640, 768)
#: layer norm runs padded only from this many units: below it, row statistics over so few values are ill-conditioned
#: in bfloat16 (emulated, against the NumPy spec, (3, 5, 8) padded to 16: worst gradient 8.7e-3 and 1.2e-2 for two
#: seeds, past the 1e-2 bound; (3, 5, 5): 3.9e-3; fp16 at most 6.9e-4); such layers stay on the Triton kernels, as
#: before session 11
LN_MIN_UNITS = 16


def kernel_units(B: int, H: int, dtype: torch.dtype, cluster: int | None = None, flags: tuple[str, ...] = (),
                 exchange: str = "barrier", grad: bool = False) -> int:  # fmt: skip
    """The hidden size the kernels run a layer of ``H`` units at: ``H`` where :func:`config` has a configuration
    for it (with ``cluster`` CTAs, if given, and ``exchange``), else the next size that has one (multiples of 16
    up to 256, then :data:`SPLIT_SIZES`). The layer then runs padded (:func:`_pad`): its extra units get zero
    weights, inputs, state and masks, so their pre-activations are 0, c stays 0 and h = 0.5 tanh(0) = 0, and
    W_hh's zero columns keep them out of the real units, whose numbers are unchanged (as the Triton kernels pad
    to multiples of 16). ``grad``: only a size with a backward kernel. Layer norm's gains and bias are padded
    with zeros too, and its kernels leave the padding out of the row statistics and means (config's ``real``).
    With ``exchange="mbarrier"`` the sizes whose own configuration is a cluster of one (16, 32, 48) run padded
    to 64 units in a cluster of 2. ``ValueError`` (config's, for ``H``) where none fits."""
    args = (B, H, dtype, cluster, tuple(flags), exchange, grad)
    return _answer(("kernel_units", *args), lambda: _kernel_units(*args))


def _kernel_units(B: int, H: int, dtype: torch.dtype, cluster: int | None, flags: tuple[str, ...], exchange: str,
                  grad: bool) -> int:  # fmt: skip
    if "LN" in flags and H < LN_MIN_UNITS:
        raise ValueError(f"layer norm over {H} units: fewer than {LN_MIN_UNITS}, which the cluster kernels do not pad "
                         "to (their 16-bit gradients there missed the 1e-2 bound); the Triton kernels run it")
    sizes = [H] + [h for h in range(-(-H // 16) * 16, 257, 16) if h > H] + [h for h in SPLIT_SIZES if h > H]
    first = None
    for h in sizes:
        try:
            cfg = config(B, h, dtype, flags=flags, cluster=cluster, exchange=exchange)
            if grad and not cfg.trains:
                raise ValueError(f"{cfg}: no backward kernel")
            return h
        except ValueError as e:
            first = first or e
    raise first


def _pad(n: int, gx: Tensor, h0: Tensor, c0: Tensor, w_hh: Tensor, w_ch: Tensor | None = None,
         var: dict | None = None) -> tuple:  # fmt: skip
    """A layer's recurrence inputs with its hidden units padded with zeros to ``n`` (:func:`kernel_units`):
    (gx, h0, c0, w_hh, w_ch, var); differentiable (autograd slices the padding's gradients off)."""
    H = w_hh.shape[1]
    w_ch = None if w_ch is None else pad_dim(w_ch.unflatten(0, (3, H)), 1, n).flatten()
    var = {k: pad_dim(v, -1, n) if k in ("rec", "zh", "zc") and v is not None else v for k, v in (var or {}).items()}
    return pad_gates(gx, -1, H, n), pad_dim(h0, -1, n), pad_dim(c0, -1, n), pad_recurrent(w_hh, n), w_ch, var


def _config(B: int, H: int, dtype: torch.dtype, cluster: int | None, ablate: int, fast: bool, exchange: str,
            flags: tuple[str, ...]) -> ClusterConfig:  # fmt: skip
    """config up to H = 256: every k-tile of W_hh in registers."""
    # default: the largest cluster (at most 8, at least 32 units a CTA) whose CTAs get whole 16-unit m-tiles (the
    # backward's) and whose threads keep their share of W_hh in registers
    fits = (c for c in (8, 4, 2) if c <= H // 32 and H % (16 * c) == 0 and _registers_fit(H, c))
    C = cluster if cluster is not None else next(fits, 1)
    if C not in (1, 2, 4, 8) or H % (8 * C) or H % 16:
        raise ValueError(f"H={H} must be a multiple of 16 and of 8 x cluster, cluster one of 1, 2, 4, 8 "
                         f"(got cluster={C}): the product's K comes in 16s, each CTA's units in 8-unit warps")
    if not _registers_fit(H, C):
        what = "use a larger cluster" if cluster is not None else "no cluster size fits it: the Triton kernels run it"
        raise ValueError(f"H={H} in a cluster of {C}: {H // C} units a CTA need about {_registers_needed(H, C)} "
                         f"registers a thread, over the {_register_cap(H, C)} its {H // C // 8} warps may have "
                         f"(ptxas would spill); {what}")
    if C == 1 and exchange == "mbarrier":
        raise ValueError(f"exchange='mbarrier' needs a cluster of 2 or more CTAs (st.async is undefined in a cluster "
                         f"of one); H={H} gives cluster=1: use exchange='barrier'")  # fmt: skip
    NT = 1 if B <= 8 else 2
    return ClusterConfig(H, C, NT, dtype, ablate, fast, exchange, flags)


#: registers the forward's threads need besides their W_hh k-tiles (8 registers a k-tile), 8 batch rows: plain,
#: and with any variant switch on (ptxas at (8, 256): 194-205 and 216-230 registers with 16 k-tiles)
_FWD_OTHER = {False: 80, True: 104}
#: the registers the reduce-scatter backward's threads need besides their W_hh k-tiles (4 registers a fragment),
#: plain and with any variant switch on (checked against ptxas for sm_90 at H = 384 .. 768: the compile report of
#: ``benchmarks/gpu_cluster.py --compile-only``)
_BWD_OTHER = {False: 116, True: 144}
#: the shared memory a CTA may have on sm_90 (227 KB)
MAX_SMEM = 232448


def _split_config(H: int, dtype: torch.dtype, cluster: int | None, ablate: int, fast: bool, exchange: str,
                  flags: tuple[str, ...]) -> ClusterConfig:  # fmt: skip
    """Above H = 256 (8 batch rows a cluster): the k-tiles of W_hh that the registers cannot hold in shared memory;
    a cluster of 8, or of 16 (non-portable: H100 / H200 schedule it) where 8 CTAs' shared memory cannot hold the
    rest; the backward in its reduce-scatter form, its k-tiles split the same way."""
    if H % 128 or H > 768:
        raise ValueError(f"H={H}: above 256 the cluster kernels run H = 384, 512, 640 or 768; use the "
                         "Triton kernels (lstmkit.kernels.triton_lstm) for this layer")  # fmt: skip
    if cluster is not None and cluster not in (8, 16):
        raise ValueError(f"cluster={cluster}: above H = 256 the cluster kernels run clusters of 8 or 16 CTAs")
    for C in (cluster,) if cluster is not None else (8, 16):
        if C not in (8, 16) or H % (8 * C) or H // C // 8 * 32 > 1024:
            continue
        kt = H // 16
        # as many k-tiles in registers as the model says they hold, or more where shared memory needs it (layer
        # norm's tables at H = 768: 19 of 48, no spill with every switch on; the compile report)
        by_regs = min(kt, max(0, (_register_cap(H, C) - _FWD_OTHER[bool(flags)]) // 8))
        cfg = next((c for c in (ClusterConfig(H, C, 1, dtype, ablate, fast, exchange, flags, kr=kr)
                                for kr in range(by_regs, min(kt, by_regs + 2) + 1))
                    if _smem_bytes(c)[0] <= MAX_SMEM), None)  # fmt: skip
        if cfg is None:
            continue
        kr = cfg.kr
        if ablate != 2:  # the backward's reduce-scatter form, where its W_hh k-tiles fit
            rsc = ClusterConfig(H, C, 1, dtype, ablate, fast, exchange, flags, kr=kr, rs=True)
            # as many k-tiles in registers as the model says they hold, or more where shared memory needs it
            cap = min(255, 16384 // (-(-rsc.wb // 4) * 32) // 8 * 8)
            by_regs = max(0, (cap - _BWD_OTHER[bool(flags)]) // (4 * (H // 16 // max(rsc.wb, 1))))
            for krb in range(min(rsc.units // 4, by_regs), rsc.units // 4 + 1):
                rsc = ClusterConfig(H, C, 1, dtype, ablate, fast, exchange, flags, kr=kr, rs=True, krb=krb)
                if rsc.trains and _smem_bytes(rsc)[1] <= MAX_SMEM:
                    return rsc
        return cfg
    raise ValueError(f"H={H}{'' if cluster is None else f' in a cluster of {cluster}'}: W_hh does not fit the "
                     f"registers and shared memory of {cluster or 16} CTAs with these variants {flags}; use the Triton "
                     "kernels")  # fmt: skip


def _defines(text: str, cfg: ClusterConfig) -> str:
    smem_f, smem_b = _smem_bytes(cfg)
    text = text.replace("{SMEM_F}", str(smem_f)).replace("{SMEM_B}", str(smem_b))
    text = text.replace("{H}", str(cfg.H)).replace("{C}", str(cfg.C)).replace("{NT}", str(cfg.NT)).replace(
        "{ABLATE}", str(cfg.ablate)).replace("{F16}", str(int(cfg.dtype == torch.float16))).replace(
        "{FAST}", str(int(cfg.fast))).replace("{EXCH}", str(EXCHANGES.index(cfg.exchange))).replace(
        "{KR}", str(cfg.kr)).replace("{TRAINS}", str(int(cfg.trains))).replace("{RS}", str(int(cfg.rs))).replace(
        "{WB}", str(cfg.wb)).replace("{KRB}", str(cfg.krb)).replace("{HREAL}", str(cfg.real)).replace(
        "{MERGE}", str(int(cfg.merge)))  # fmt: skip
    for flag in FLAGS:
        text = text.replace("{" + flag + "}", str(int(flag in cfg.flags)))
    return text


def source(cfg: ClusterConfig) -> str:
    """The CUDA C++ of one configuration (for NVRTC)."""
    return _defines(_HEAD, cfg) + _DEVICE + _KERNEL


def emulation_source(cfg: ClusterConfig) -> str:
    """The same kernel as host C++ for g++ (:func:`emulate`): the kernel text unchanged, the GPU primitives
    (thread indices, shared memory, barriers, ``mma.sync``, distributed shared memory) emulated."""
    return _defines(_HEAD, cfg) + _EMU + _KERNEL + _EMU_LAUNCH


# ---------------------------------------------------------------------------------------------
# NVRTC (compile) and the CUDA driver (load, launch), through ctypes: no extension to build
# ---------------------------------------------------------------------------------------------


def _find_nvrtc() -> str | None:
    dirs = [*getattr(site, "getsitepackages", list)(), *sys.path]  # (some virtualenvs' site lacks it)
    for d in dirs:
        for pat in ("nvidia/cu*/lib/libnvrtc.so*", "nvidia/cuda_nvrtc/lib/libnvrtc.so*"):
            hits = sorted(h for h in glob.glob(os.path.join(d, pat)) if "builtins" not in h and ".alt." not in h)
            if hits:
                return hits[-1]
    return ctypes.util.find_library("nvrtc")


@functools.cache
def _nvrtc() -> ctypes.CDLL:
    given = os.environ.get("LSTMKIT_NVRTC")  # a libnvrtc of one's choice (e.g. the CUDA major a GPU image has)
    if given:
        try:
            # its builtins library sits beside it; loaded first, so no LD_LIBRARY_PATH is needed to find it
            for b in sorted(glob.glob(os.path.join(os.path.dirname(given), "libnvrtc-builtins.so*"))):
                if ".alt." not in b:
                    ctypes.CDLL(b, mode=ctypes.RTLD_GLOBAL)
            return ctypes.CDLL(given)
        except OSError as e:
            raise RuntimeError(f"LSTMKIT_NVRTC={given!r} could not be loaded ({e}); point it at a libnvrtc.so, "
                               "or unset it to use torch's or an installed one") from e  # fmt: skip
    if torch.version.cuda is not None:  # the NVRTC that torch's CUDA build comes with
        try:
            from torch.cuda._utils import _get_nvrtc_library

            return _get_nvrtc_library()
        except (ImportError, OSError, RuntimeError):
            pass
    path = _find_nvrtc()
    if path is None:
        raise RuntimeError("NVRTC (libnvrtc) not found: it comes with CUDA builds of torch, or "
                           "`pip install nvidia-cuda-nvrtc-cu12`")  # fmt: skip
    return ctypes.CDLL(path)


def nvrtc_version() -> tuple[int, int]:
    """(major, minor) of the NVRTC :func:`compile_cubin` uses."""
    major, minor = ctypes.c_int(), ctypes.c_int()
    _nvrtc_check(_nvrtc(), _nvrtc().nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)))
    return major.value, minor.value


def nvrtc_available() -> bool:
    """Whether :func:`compile_cubin` can run here (no GPU needed)."""
    try:
        _nvrtc()
    except (RuntimeError, OSError):
        return False
    return True


def _nvrtc_check(lib, res: int, prog=None) -> None:
    if res == 0:
        return
    lib.nvrtcGetErrorString.restype = ctypes.c_char_p
    msg = lib.nvrtcGetErrorString(res).decode()
    if prog is not None:
        n = ctypes.c_size_t()
        lib.nvrtcGetProgramLogSize(prog, ctypes.byref(n))
        log = ctypes.create_string_buffer(n.value)
        lib.nvrtcGetProgramLog(prog, log)
        msg += "\n" + log.value.decode(errors="replace")
    raise RuntimeError(f"NVRTC: {msg}")


@functools.cache
def _compile(key: tuple, arch: int) -> tuple[bytes, str]:
    cfg = ClusterConfig(*key)
    lib = _nvrtc()
    prog = ctypes.c_void_p()
    src = source(cfg).encode()
    _nvrtc_check(lib, lib.nvrtcCreateProgram(ctypes.byref(prog), src, b"cluster_lstm.cu", 0, None, None))
    try:
        opts = [f"--gpu-architecture=sm_{arch}".encode(), b"-std=c++17"]
        arr = (ctypes.c_char_p * len(opts))(*opts)
        _nvrtc_check(lib, lib.nvrtcCompileProgram(prog, len(opts), arr), prog)
        n = ctypes.c_size_t()
        _nvrtc_check(lib, lib.nvrtcGetCUBINSize(prog, ctypes.byref(n)))
        cubin = ctypes.create_string_buffer(n.value)
        _nvrtc_check(lib, lib.nvrtcGetCUBIN(prog, cubin))
        _nvrtc_check(lib, lib.nvrtcGetPTXSize(prog, ctypes.byref(n)))
        ptx = ctypes.create_string_buffer(n.value)
        _nvrtc_check(lib, lib.nvrtcGetPTX(prog, ptx))
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))
    return cubin.raw, ptx.value.decode()


def compile_cubin(cfg: ClusterConfig, arch: int = 90) -> tuple[bytes, str]:
    """(cubin, PTX) of ``cfg`` for sm_``arch`` (cached). Needs NVRTC, not a GPU."""
    if arch < 90:
        raise ValueError(f"thread-block clusters need sm_90 or newer, got sm_{arch}")
    return _compile(cfg.key(), arch)


@functools.cache
def _driver() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("cuda") or "libcuda.so.1")


def _cu_check(res: int, what: str) -> None:
    if res != 0:
        s = ctypes.c_char_p()
        _driver().cuGetErrorString(res, ctypes.byref(s))
        raise RuntimeError(f"CUDA driver, {what}: error {res} ({(s.value or b'?').decode()})")


@functools.cache
def _emulator(key: tuple) -> ctypes.CDLL:
    import hashlib
    import subprocess
    import tempfile

    src = emulation_source(ClusterConfig(*key))
    d = os.path.join(tempfile.gettempdir(), f"lstmkit-cluster-emu-{os.getuid()}")
    os.makedirs(d, exist_ok=True)
    lib = os.path.join(d, hashlib.sha256(src.encode()).hexdigest()[:16] + ".so")
    if not os.path.exists(lib):
        cpp = lib[:-3] + ".cpp"
        with open(cpp, "w") as f:
            f.write(src)
        tmp = f"{lib}.{os.getpid()}.tmp"
        cmd = ["g++", "-std=c++20", "-O1", "-shared", "-fPIC", "-pthread", "-Wno-unknown-pragmas", cpp, "-o", tmp]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"compiling the cluster kernel's emulation failed:\n{res.stderr[-4000:]}")
        os.replace(tmp, lib)  # atomic: a parallel test never loads half a library
    return ctypes.CDLL(lib)


def _smem_bytes(cfg: ClusterConfig) -> tuple[int, int]:
    """Shared memory of the forward's and the backward's CTA (``Smem``, ``SmemB``; the C++ static_asserts it)."""
    r16 = lambda n: -(-n // 16) * 16  # noqa: E731
    BT, H, U, W = cfg.batch_rows, cfg.H, cfg.units, cfg.threads // 32
    ln = "LN" in cfg.flags
    lst = 2 * 2 * BT * (H // 8) * 8 if ln else 0  # LN: two (row, partial) tables of float pairs, by step parity
    mbar = 8 * (6 if ln else 2)
    wsm = W * 2 * (H // 16 - cfg.kr) * 32 * 16  # the forward's k-tiles in shared memory
    merge = 2 * BT * (U + 2) * 8 + 2 * BT * H * 8 if cfg.merge else 0  # MERGE: the (c', o) stage and buffer
    fwd = r16(mbar + 2 * BT * (H + 8) * 2 + 2 * BT * (U + 8) * 2 + wsm + lst + merge)
    red = W * (U // 16) * cfg.NT * 4 * 32 * 4
    bwd = r16(mbar + 2 * BT * (4 * H + 8) * 2 + 2 * BT * (4 * U + 8) * 2 + red + lst) if cfg.trains else 0
    if cfg.rs and cfg.trains:  # partial sums from every CTA, the staged da_t, W_hh's k-tiles in shared memory, LN's
        wsm = cfg.wb * (H // 16 // cfg.wb) * (U // 4 - cfg.krb) * 32 * 16
        bwd = r16(mbar + (1 if ln else 2) * cfg.C * U * BT * 4 + 2 * BT * (4 * U + 8) * 2 + wsm + lst)
    return fwd, bwd


@functools.cache
def _function(key: tuple, device_index: int, name: str, smem: int) -> ctypes.c_void_p:
    props = torch.cuda.get_device_properties(device_index)
    cubin, _ = _compile(key, props.major * 10 + props.minor)
    with torch.cuda.device(device_index):
        torch.empty(1, device=f"cuda:{device_index}")  # torch's primary context, current on this thread
        mod, fn = ctypes.c_void_p(), ctypes.c_void_p()
        _cu_check(_driver().cuModuleLoadData(ctypes.byref(mod), ctypes.c_char_p(cubin)), "cuModuleLoadData")
        _cu_check(_driver().cuModuleGetFunction(ctypes.byref(fn), mod, name.encode()), f"cuModuleGetFunction {name}")
        max_dynamic_shared, cluster_width = 8, 11  # CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, ..._CLUSTER_WIDTH
        _cu_check(_driver().cuFuncSetAttribute(fn, max_dynamic_shared, smem), f"{name}: {smem} bytes of shared memory")
        if key[1] > MAX_CLUSTER:  # CU_FUNC_ATTRIBUTE_NON_PORTABLE_CLUSTER_SIZE_ALLOWED
            _cu_check(_driver().cuFuncSetAttribute(fn, 14, 1), f"{name}: a non-portable cluster of {key[1]}")
        width = ctypes.c_int()
        _cu_check(_driver().cuFuncGetAttribute(ctypes.byref(width), cluster_width, fn), f"{name}: cluster width")
        if width.value != key[1]:  # (a plain cuLaunchKernel takes the cluster size from the cubin)
            raise RuntimeError(f"{name}: the loaded kernel's cluster width is {width.value}, not {key[1]}")
    return fn


class _LaunchConfig(ctypes.Structure):  # CUlaunchConfig (cuda.h)
    _fields_ = [("gridDimX", ctypes.c_uint), ("gridDimY", ctypes.c_uint), ("gridDimZ", ctypes.c_uint),
                ("blockDimX", ctypes.c_uint), ("blockDimY", ctypes.c_uint), ("blockDimZ", ctypes.c_uint),
                ("sharedMemBytes", ctypes.c_uint), ("hStream", ctypes.c_void_p), ("attrs", ctypes.c_void_p),
                ("numAttrs", ctypes.c_uint)]  # fmt: skip


@functools.cache
def _max_active_clusters(cfg_key: tuple, device_index: int, kind: str, threads: int, smem: int, C: int) -> int:
    """How many clusters of the kernel the GPU can have resident at once (``cuOccupancyMaxActiveClusters``): 0
    where it cannot place one at all (a cluster of 16 with this much shared memory a CTA, on a smaller part or a
    MIG slice)."""
    fn = _function(cfg_key, device_index, f"lstm_cluster_{kind}", smem)
    _make_current(device_index)
    n, conf = ctypes.c_int(), _LaunchConfig(C, 1, 1, threads, 1, 1, smem, None, None, 0)
    _cu_check(_driver().cuOccupancyMaxActiveClusters(ctypes.byref(n), fn, ctypes.byref(conf)),
              f"cuOccupancyMaxActiveClusters lstm_cluster_{kind}")  # fmt: skip
    return n.value


#: device index -> the context found (or made) current for it: a launch on a thread where it is already current
#: costs one driver call (cuCtxGetCurrent) instead of four
_CONTEXTS: dict = {}


def _make_current(index: int) -> None:
    """The device's primary context (torch's) current on this thread: the autograd engine's threads may have
    none yet, or another device's."""
    drv, ctx = _driver(), ctypes.c_void_p()
    _cu_check(drv.cuCtxGetCurrent(ctypes.byref(ctx)), "cuCtxGetCurrent")
    if ctx.value and ctx.value == _CONTEXTS.get(index):
        return
    dev, cur = ctypes.c_int(), ctypes.c_int(-1)
    _cu_check(drv.cuDeviceGet(ctypes.byref(dev), index), "cuDeviceGet")
    if ctx.value:
        _cu_check(drv.cuCtxGetDevice(ctypes.byref(cur)), "cuCtxGetDevice")
    if cur.value != dev.value:
        _cu_check(drv.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev), "cuDevicePrimaryCtxRetain")
        _cu_check(drv.cuCtxSetCurrent(ctx), "cuCtxSetCurrent")
    _CONTEXTS[index] = ctx.value


def _c_args(args: list) -> list:
    """Tensors (or None) as pointers, ints as C ints, floats as C floats: the kernels' arguments."""
    return [ctypes.c_int(a) if isinstance(a, int) else ctypes.c_float(a) if isinstance(a, float) else
            ctypes.c_void_p(0 if a is None else a.data_ptr()) for a in args]  # fmt: skip


@functools.cache
def _param_count(kind: str) -> int:
    """How many parameters ``lstm_cluster_{kind}`` has, read from the kernel's text."""
    import re

    text = re.sub(r"//[^\n]*", "", _KERNEL)
    counts = {h.split(") {")[0].count(",") + 1 for h in re.split(rf"KERNEL(?:_B)? lstm_cluster_{kind}\(", text)[1:]}
    if len(counts) != 1:  # (the backward's two forms share one parameter list, so one host list)
        raise RuntimeError(f"lstm_cluster_{kind}'s forms take different numbers of parameters: {sorted(counts)}")
    return counts.pop()


def fwd_args(gx: Tensor, w: Tensor, h0: Tensor, c0: Tensor, y: Tensor, hT: Tensor, cT: Tensor,
             gates: Tensor | None = None, cs: Tensor | None = None, vargs: list | None = None,
             ln: tuple = (None, None, None)) -> list:  # fmt: skip
    """The forward kernel's arguments in its parameter order: ``vargs`` from :func:`_variant_args` (rec, zh, zc,
    valid, wch, clip, lnw, eps), ``ln`` the saved LN(r), LN(c'_t), 1 / std (with ``gates``, under LN)."""
    T, B, _ = gx.shape
    return [gx, w, h0, c0, y, hT, cT, gates, cs, *(vargs or _NO_VARIANTS), *ln, T, B]


def bwd_args(w: Tensor, gates: Tensor, cs: Tensor, c0: Tensor, dy: Tensor, dhT: Tensor, dcT: Tensor, da: Tensor,
             dc0: Tensor, dhz: Tensor | None = None, vargs: list | None = None, ln: tuple = (None, None, None),
             ln_out: tuple = (None, None)) -> list:  # fmt: skip
    """The backward kernel's arguments in its parameter order (``ln_out``: dLoss/da and dLoss/dn under LN)."""
    T, B, _ = dy.shape
    return [w, gates, cs, c0, dy, dhT, dcT, da, dc0, dhz, *(vargs or _NO_VARIANTS), *ln, *ln_out, T, B]


def _run(cfg: ClusterConfig, kind: str, args: list, B: int) -> None:
    """Launch the forward (``kind`` "fwd") or backward kernel of ``cfg`` on the device of the first tensor:
    a GPU (NVRTC, the driver) or the CPU (the emulation). ``args``: :func:`fwd_args` / :func:`bwd_args`."""
    if len(args) != _param_count(kind):  # (neither the driver nor ctypes would notice)
        raise ValueError(f"lstm_cluster_{kind} takes {_param_count(kind)} arguments, got {len(args)}")
    grid_y = math.ceil(B / cfg.batch_rows)
    dev = args[0].device
    vals = _c_args(args)
    if dev.type == "cpu":
        lib = _emulator(cfg.key())
        (lib.emu_run if kind == "fwd" else lib.emu_run_bwd)(*vals, ctypes.c_int(grid_y))
        return
    index = dev.index if dev.index is not None else torch.cuda.current_device()
    key = (cfg.key(), kind, index)
    launch = _LAUNCHES.get(key)
    if launch is None:  # (the function, its shared memory and block: the same at every launch of cfg)
        smem = _smem_bytes(cfg)[0 if kind == "fwd" else 1]
        fn = _function(cfg.key(), index, f"lstm_cluster_{kind}", smem)
        launch = _LAUNCHES[key] = (fn, smem, cfg.threads if kind == "fwd" else cfg.bthreads)
    fn, smem, threads = launch
    _make_current(index)
    arr = (ctypes.c_void_p * len(vals))(*[ctypes.addressof(v) for v in vals])
    stream = ctypes.c_void_p(_raw_stream(index))
    _cu_check(_driver().cuLaunchKernel(fn, cfg.C, grid_y, 1, threads, 1, 1, smem, stream, arr, None),
              f"cuLaunchKernel {kind} {cfg}")  # fmt: skip


#: (configuration's key, "fwd" / "bwd", device index) -> (CUfunction, dynamic shared bytes, threads a CTA)
_LAUNCHES: dict = {}


def _raw_stream(index: int) -> int:
    """The handle of torch's current stream on device ``index`` (without building a ``torch.cuda.Stream``)."""
    raw = getattr(torch._C, "_cuda_getCurrentRawStream", None)
    return raw(index) if raw is not None else torch.cuda.current_stream(index).cuda_stream


def _device_key(device: torch.device) -> torch.device:
    """``device`` with its index (``cuda`` alone means the current device, which ``torch.cuda.set_device`` moves)."""
    return device if device.index is not None or device.type != "cuda" else torch.device(
        "cuda", torch.cuda.current_device())  # fmt: skip


def _capability(device: torch.device) -> tuple[int, int]:
    """``torch.cuda.get_device_capability(device)``, remembered (:func:`_answer`: asked at every routed call, each
    asking several microseconds of host time; run 7, gpu_module_gap.py)."""
    device = _device_key(device)
    return _answer(("capability", device), lambda: torch.cuda.get_device_capability(device))


def _properties(device: torch.device):
    """``torch.cuda.get_device_properties(device)``, remembered (:func:`_answer`)."""
    device = _device_key(device)
    return _answer(("properties", device), lambda: torch.cuda.get_device_properties(device))


def _check(gx: Tensor, h0: Tensor, c0: Tensor, w_hh: Tensor) -> None:
    T, B, G = gx.shape
    H = G // 4
    if G != 4 * H or tuple(w_hh.shape) != (4 * H, H) or tuple(h0.shape) != (B, H) or tuple(c0.shape) != (B, H):
        raise ValueError(f"shapes: gx (T, B, 4H), w_hh (4H, H), h0 and c0 (B, H); got {tuple(gx.shape)}, "
                         f"{tuple(w_hh.shape)}, {tuple(h0.shape)}, {tuple(c0.shape)}")  # fmt: skip
    if gx.device.type == "cuda" and _capability(gx.device)[0] < 9:
        raise ValueError("the cluster kernels need thread-block clusters, an sm_90 (Hopper) or newer GPU; on this "
                         "GPU use the Triton kernels (lstmkit.kernels.triton_lstm) or impl='auto'")


def _variant_switches(var: dict | None, w_ch: Tensor | None, gx: Tensor, lnw: Tensor | None = None) -> tuple[str, ...]:
    """The kernels' switches for ``var`` and ``lnw`` (:func:`_variant_args`), every mask's and parameter's shape
    checked against ``gx``'s (T, B, 4H); no tensor work (a padded call asks this at the layer's own size)."""
    if not var and lnw is None:  # the plain LSTM (w_ch only counts with var's peephole)
        return ()
    var = var or {}
    T, B, G = gx.shape
    shapes = dict(rec=((B, G // 4),), zh=((T, B, G // 4),), zc=((T, B, G // 4),), valid=((T, B), (T, B, 1)))
    for name, ok in shapes.items():
        t = var.get(name)
        if t is not None and tuple(t.shape) not in ok:
            raise ValueError(f"mask {name!r} has shape {tuple(t.shape)}, expected {ok[0]} (T, B, H as the layer's)")
    peep, clip = bool(var.get("peephole")), var.get("clip")
    if peep and w_ch is None:
        raise ValueError("peephole needs w_ch (3H)")
    if peep and tuple(w_ch.shape) != (3 * (G // 4),):
        raise ValueError(f"w_ch has shape {tuple(w_ch.shape)}, expected ({3 * (G // 4)},): w_ci, w_cf, w_co")
    if lnw is not None and tuple(lnw.shape) != (6 * (G // 4),):
        raise ValueError(f"lnw has shape {tuple(lnw.shape)}, expected ({6 * (G // 4)},): g_hh (4H), g_c (H), b_c (H)")
    return tuple(f for f, on in (("PEEP", peep), ("CIFG", bool(var.get("cifg"))), ("CLIP", clip is not None),
                                 ("RDROP", var.get("rec") is not None), ("ZONE_H", var.get("zh") is not None),
                                 ("ZONE_C", var.get("zc") is not None), ("VALID", var.get("valid") is not None),
                                 ("LN", lnw is not None)) if on)  # fmt: skip


def _variant_args(var: dict | None, w_ch: Tensor | None, gx: Tensor,
                  lnw: Tensor | None = None) -> tuple[tuple[str, ...], list]:  # fmt: skip
    """The kernels' switches and their arguments (rec, zh, zc, valid, wch, clip, lnw, eps) for ``var``
    (``peephole``, ``cifg``, ``clip``, ``eps``, masks ``rec`` (B, H), ``zh`` / ``zc`` (T, B, H), ``valid``
    (T, B[, 1]): 1 where t < the row's length) and ``lnw`` (6H: layer norm's gains g_hh (4H), g_c (H), bias b_c
    (H), or None), on ``gx``'s device, the masks in its dtype (the kernels read them through raw pointers:
    shapes are checked here, :func:`_variant_switches`)."""
    flags = _variant_switches(var, w_ch, gx, lnw)
    if not var and lnw is None:  # the plain LSTM: no work on the host
        return flags, list(_NO_VARIANTS)
    var = var or {}
    T, B, _ = gx.shape

    def c(name: str) -> Tensor | None:
        t = var.get(name)
        t = t.reshape(T, B) if name == "valid" and t is not None and t.dim() == 3 else t  # (T, B, 1), as nn's
        return None if t is None else t.to(device=gx.device, dtype=gx.dtype).contiguous()

    rec, zh, zc, valid = c("rec"), c("zh"), c("zc"), c("valid")
    clip = var.get("clip")
    wch = w_ch.detach().to(device=gx.device, dtype=torch.float32).contiguous() if "PEEP" in flags else None
    lnw = lnw.detach().to(device=gx.device, dtype=torch.float32).contiguous() if lnw is not None else None
    return flags, [rec, zh, zc, valid, wch, float(clip) if clip is not None else 0.0, lnw, float(var.get("eps", 1e-5))]


_NO_VARIANTS = [None, None, None, None, None, 0.0, None, 1e-5]


def _forward(cfg: ClusterConfig, gx: Tensor, w: Tensor, h0: Tensor, c0: Tensor, save: bool, vargs: list | None = None):
    """Launch the forward: y, h_T, c_T and, with ``save``, what the backward needs: the gates, c_t and (LN)
    LN(r), LN(c'_t) and the rows' 1 / std (r = h_{t-1} W_hh^T)."""
    T, B, _ = gx.shape
    H, dev = cfg.H, gx.device
    y = torch.empty(T, B, H, dtype=gx.dtype, device=dev)
    # (the kernel writes every row and unit of h_T and c_T at its last step: no copy of h_0, c_0 to start from)
    hT, cT = (torch.empty_like(h0), torch.empty_like(c0)) if T > 0 else (h0.clone(), c0.clone())
    f32 = partial(torch.empty, dtype=torch.float32, device=dev)
    gates, cs = (f32(T, B, 4 * H), f32(T, B, H)) if save else (None, None)
    ln = (torch.empty(T, B, H, 4, dtype=torch.float16, device=dev), f32(T, B, H), f32(T, B, 2)) if (
        save and "LN" in cfg.flags) else (None, None, None)  # fmt: skip
    if T > 0:
        _run(cfg, "fwd", fwd_args(gx, w, h0, c0, y, hT, cT, gates, cs, vargs, ln), B)
    return y, hT, cT, gates, cs, ln


def forward(gx: Tensor, h0: Tensor, c0: Tensor, w_hh: Tensor, *, cluster: int | None = None, ablate: int = 0,
            fast: bool = True, exchange: str = "barrier",
            kr: int | None = None) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """One layer's recurrence, no autograd: gx (T, B, 4H) = x W_ih^T + b_ih + b_hh, h0, c0 (B, H), W_hh (4H, H)
    -> y (T, B, H), h_T, c_T (float32). On an sm_90+ GPU; CPU tensors run the emulation (slow: tests)."""
    _check(gx, h0, c0, w_hh)
    B, H = gx.shape[1], gx.shape[2] // 4
    n = H if kr is not None else kernel_units(B, H, gx.dtype, cluster, (), exchange)  # (other sizes run padded)
    if n != H:
        gx, h0, c0, w_hh, _, _ = _pad(n, gx, h0, c0, w_hh)
    cfg = config(B, n, gx.dtype, cluster, ablate, fast, exchange, kr=kr)
    y, hT, cT, *_ = _forward(cfg, gx.contiguous(), w_hh.to(gx.dtype).contiguous(), h0.to(gx.dtype).contiguous(),
                               c0.float().contiguous(), save=False)  # fmt: skip
    return (y, hT, cT) if n == H else (y[..., :H].contiguous(), hT[:, :H].contiguous(), cT[:, :H].contiguous())


def emulate(gx: Tensor, h0: Tensor, c0: Tensor, w_hh: Tensor, **kw) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`forward` on the CPU: the kernel's C++ compiled by g++ with the GPU primitives emulated (one
    thread per GPU thread, so keep shapes small). Same results as the GPU up to the activations (``tanhf``
    here, ``tanh.approx.f32`` there with ``fast``) and the order of the fp32 sums."""
    if gx.device.type != "cpu":
        raise ValueError("emulate takes CPU tensors")
    return forward(gx, h0, c0, w_hh, **kw)


def _as(t: Tensor, dtype: torch.dtype) -> Tensor:
    """``t`` in ``dtype``, contiguous (without a trip through the dispatcher where it already is: each costs
    microseconds of host time a call)."""
    t = t if t.dtype == dtype else t.to(dtype)
    return t if t.is_contiguous() else t.contiguous()


def _recurrence_forward(gx: Tensor, h0: Tensor, c0: Tensor, w_hh: Tensor, w_ch: Tensor | None, lnw: Tensor | None,
                        var: dict | None, kw: dict, save: bool):  # fmt: skip
    """:class:`_Recurrence`'s forward: (y, h_T, c_T in gx's dtype, what the backward keeps when ``save``)."""
    _check(gx, h0, c0, w_hh)
    T, B, G = gx.shape
    dtype = gx.dtype
    flags, vargs = _variant_args(var, w_ch, gx, lnw)
    args = (B, G // 4, dtype, kw.get("cluster"), 0, kw.get("fast", True), kw.get("exchange", "barrier"), flags,
            kw.get("kr"), kw.get("rs"), kw.get("krb"), kw.get("real"))  # fmt: skip
    merge = kw.get("merge") if "LN" in flags else False  # (layer norm's calls; "auto": where config takes it)
    try:
        cfg = config(*args, merge=bool(merge))
    except ValueError:
        if merge != "auto":
            raise
        cfg = config(*args)
    if save and not cfg.trains:
        how = ("above H = 256 the backward is the reduce-scatter form: leave rs alone, or train on the Triton "
               "kernels" if cfg.H > 256 else
               "it needs whole 16-unit tiles a CTA: choose a smaller cluster")  # fmt: skip
        raise ValueError(f"{cfg}: no backward kernel ({how})")
    w, h0_, c0_ = _as(w_hh, dtype), _as(h0, dtype), _as(c0, torch.float32)
    y, hT, cT, gates, cs, ln = _forward(cfg, _as(gx, dtype), w, h0_, c0_, save, vargs)
    return y, hT, cT.to(dtype), ((w, gates, cs, c0_, h0_, ln, cfg, vargs) if save else None)


class _Recurrence(torch.autograd.Function):
    """(gx (T, B, 4H), h0, c0 (B, H), W_hh (4H, H), w_ch (3H) | None, lnw (6H) | None) -> (y (T, B, H), h_T,
    c_T), the cluster kernels forward and backward; dW_hh, dw_ch, dlnw and dh_0 are reductions on what the backward
    kernel writes (da_t; with LN also dLoss/dr_t, dLoss/dn_t). ``var``: the variants (:func:`_variant_args`);
    ``kw``: cluster, fast, exchange, kr, rs, krb, and grad (the caller's grad mode: without it nothing is saved)."""

    @staticmethod
    def forward(ctx, gx: Tensor, h0: Tensor, c0: Tensor, w_hh: Tensor, w_ch: Tensor | None, lnw: Tensor | None,
                var: dict | None, kw: dict):  # fmt: skip
        # (grad mode is off inside forward, and needs_input_grad ignores torch.no_grad(): the caller's mode comes in kw)
        save = kw.get("grad", True) and any(ctx.needs_input_grad[:6])
        y, hT, cT, kept = _recurrence_forward(gx, h0, c0, w_hh, w_ch, lnw, var, kw, save)
        if save:
            w, gates, cs, c0_, h0_, ln, cfg, vargs = kept
            ctx.save_for_backward(w, gates, cs, c0_, h0_, y, *ln)
            ctx.cfg, ctx.vargs, ctx.dtypes = cfg, vargs, (h0.dtype, c0.dtype, w_hh.dtype)
            ctx.wch_dtype = None if w_ch is None else w_ch.dtype
            ctx.lnw_dtype = None if lnw is None else lnw.dtype
        return y, hT, cT

    @staticmethod
    def backward(ctx, dy: Tensor | None, dhT: Tensor | None, dcT: Tensor | None):
        w, gates, cs, c0, h0, y, rh, nh, rs = ctx.saved_tensors
        cfg, (rec, _, _, _, wch, clip, lnw, _) = ctx.cfg, ctx.vargs
        T, B, H = y.shape
        dtype, dev = y.dtype, y.device
        dy = torch.zeros_like(y) if dy is None else dy.to(dtype).contiguous()
        dhT = torch.zeros_like(h0) if dhT is None else dhT.to(dtype).contiguous()
        dcT = torch.zeros_like(c0) if dcT is None else dcT.float().contiguous()
        da = torch.empty(T, B, 4 * H, dtype=dtype, device=dev)  # dLoss/da_t; with LN dLoss/dr_t
        f32 = partial(torch.empty, dtype=torch.float32, device=dev)
        dgx, dn = (torch.empty_like(da), f32(T, B, H)) if lnw is not None else (None, None)
        dc0 = dcT.clone()
        dhz = f32(B, H).zero_() if {"ZONE_H", "VALID"} & set(cfg.flags) else None
        if T > 0:
            _run(cfg, "bwd", bwd_args(w, gates, cs, c0, dy, dhT, dcT, da, dc0, dhz, ctx.vargs, (rh, nh, rs),
                                      (dgx, dn)), B)  # fmt: skip
        recf = rec.float() if rec is not None else None
        if T > 0:  # dh_0 = (dr_0 W_hh) * rec (+ what zoneout carried past step 0); dr = da without LN
            dh0 = da[0].float() @ w.float()
            dh0 = dh0 * recf if recf is not None else dh0
            dh0 = dh0 + dhz if dhz is not None else dh0
        else:
            dh0 = dhT.float()
        h_in = torch.cat([h0[None], y[:-1]])[:T].float()  # (T, B, H): h_{t-1}, times rec: the product's operand
        h_in = (h_in * recf if recf is not None else h_in).reshape(T * B, H)
        dw = da.reshape(T * B, 4 * H).float().t() @ h_in
        d_a = da if dgx is None else dgx  # dLoss/da_t (the gates' pre-activations, gx's gradient)
        dw_ch = dlnw = None
        if wch is not None and ctx.needs_input_grad[4]:  # sum over t, b of da_i c_{t-1}, da_f c_{t-1}, da_o c'_t
            i_t, f_t, g_t, _ = gates.view(T, B, 4, H).unbind(2)
            c_prev = torch.cat([c0[None], cs[:-1]])
            c_new = f_t * c_prev + i_t * g_t
            c_new = c_new.clamp(-clip, clip) if "CLIP" in cfg.flags else c_new
            d4 = d_a.view(T, B, 4, H).float()
            dw_ch = torch.cat([(d4[:, :, 0] * c_prev).sum((0, 1)), (d4[:, :, 1] * c_prev).sum((0, 1)),
                               (d4[:, :, 3] * c_new).sum((0, 1))]).to(ctx.wch_dtype)  # fmt: skip
        if lnw is not None and ctx.needs_input_grad[5]:  # g_hh: sum da LN(r); g_c: sum dn LN(c'); b_c: sum dn
            d_r = (d_a.view(T, B, 4, H).float() * rh.float().transpose(2, 3)).sum((0, 1)).reshape(4 * H)
            dlnw = torch.cat([d_r, (dn * nh).sum((0, 1)), dn.sum((0, 1))])
            dlnw = dlnw.to(ctx.lnw_dtype)
        h0_dt, c0_dt, w_dt = ctx.dtypes
        return d_a, dh0.to(h0_dt), dc0.to(c0_dt), dw.to(w_dt), dw_ch, dlnw, None, None


def _recurrence(gx: Tensor, h0: Tensor, c0: Tensor, w_hh: Tensor, w_ch: Tensor | None, lnw: Tensor | None,
                var: dict | None, kw: dict) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """:class:`_Recurrence` at the hidden size the kernels run (:func:`kernel_units`; ``kw``'s explicit ``kr``,
    ``rs`` or ``krb`` keep the layer's own size): y, h_T, c_T of the layer's own units."""
    _check(gx, h0, c0, w_hh)
    B, H = gx.shape[1], w_hh.shape[1]
    explicit = any(kw.get(k) is not None for k in ("kr", "rs", "krb"))
    flags = () if explicit else _variant_switches(var, w_ch, gx, lnw)  # (checks the masks at the layer's own size)
    grad = kw.get("grad", True) and torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (gx, h0, c0, w_hh, w_ch, lnw))  # fmt: skip
    n = H if explicit else kernel_units(B, H, gx.dtype, kw.get("cluster"), flags, kw.get("exchange", "barrier"), grad)
    # without a gradient to take, no autograd node (its machinery is host time a call): the forward alone
    needs = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (gx, h0, c0, w_hh, w_ch, lnw))
    run = _Recurrence.apply if needs else lambda *a: _recurrence_forward(*a, False)[:3]
    if n == H:
        return run(gx, h0, c0, w_hh, w_ch, lnw, var, kw)
    gx, h0, c0, w_hh, w_ch, var = _pad(n, gx, h0, c0, w_hh, w_ch, var)
    if lnw is not None:  # g_hh (4 x H), g_c, b_c: zeros for the padding, whose units the statistics leave out
        lnw, kw = pad_dim(lnw.unflatten(0, (6, H)), 1, n).flatten(), {**kw, "real": H}
    y, hT, cT = run(gx, h0, c0, w_hh, w_ch, lnw, var, kw)
    return y[..., :H].contiguous(), hT[:, :H].contiguous(), cT[:, :H].contiguous()


def layer(x: Tensor, h0: Tensor, c0: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None, b_hh: Tensor | None,
          *, cluster: int | None = None, fast: bool = True,
          exchange: str = "barrier") -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """One LSTM layer with ``torch.nn.LSTM``'s parameters, differentiable in all of them: x (T, B, I) ->
    y (T, B, H), h_T, c_T in x's dtype (bfloat16 / float16). The input GEMM is torch's; the recurrence runs
    on the cluster kernels (GPU: sm_90+; CPU tensors: the emulation, for tests)."""
    b = None if b_ih is None else (b_ih if b_hh is None else b_ih + b_hh)
    gx = F.linear(x, _as(w_ih, x.dtype), None if b is None else _as(b, x.dtype))
    kw = dict(cluster=cluster, fast=fast, exchange=exchange, grad=torch.is_grad_enabled())
    return _recurrence(gx, h0, c0, w_hh, None, None, None, kw)


def lstm_forward(x: Tensor, h0: Tensor, c0: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None,
                 b_hh: Tensor | None, **kw) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """One layer, torch.nn.LSTM's parameters, no autograd: x (T, B, I) -> y, h_T, c_T (:func:`forward`)."""
    b = None if b_ih is None else (b_ih if b_hh is None else b_ih + b_hh)
    gx = F.linear(x, w_ih.to(x.dtype), None if b is None else b.to(x.dtype))
    return forward(gx, h0, c0, w_hh, **kw)


def lstm(
    input: Tensor, hx: tuple[Tensor, Tensor], weights: list[Tensor], *, bias: bool, num_layers: int, dropout: float,
    training: bool, bidirectional: bool, batch_first: bool, lengths: Tensor | None = None,
    cluster: int | None = None, fast: bool = True, exchange: str = "barrier",
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """``kernels.native.lstm``'s interface (``torch.nn.LSTM``'s ``_flat_weights``, ``hx`` of shape (layers *
    directions, B, H)) on the cluster kernels, layer by layer and direction by direction; differentiable.
    bfloat16 / float16 input; no projections, no ``lengths``. CPU tensors run the emulation (tests)."""
    if lengths is not None:
        raise ValueError("the cluster kernels take no lengths=; use kernels.native.lstm (packs the batch)")
    dirs = 2 if bidirectional else 1
    if len(weights) != num_layers * dirs * (4 if bias else 2):
        raise ValueError(f"expected {num_layers * dirs * (4 if bias else 2)} weights, got {len(weights)}")
    H = weights[1].shape[1]
    if weights[1].shape[0] != 4 * H:
        raise ValueError(f"W_hh of shape {tuple(weights[1].shape)}: projections (proj_size) are not supported")
    from .stack import run

    return run(partial(layer, cluster=cluster, fast=fast, exchange=exchange), input, hx, weights, bias=bias,
               num_layers=num_layers, dropout=dropout, training=training, bidirectional=bidirectional,
               batch_first=batch_first)  # fmt: skip


#: Whether ``impl="auto"`` runs small-batch bfloat16 / float16 LSTMs on these kernels where they cover the call
#: (else the Triton kernels, or cuDNN for float16). On since run 6 (H200, docs/gpu.md): checked against float64
#: cuDNN and the NumPy spec and, with the mbarrier exchange, 1.53x / 1.31x cuDNN's fp16 forward / train step at
#: (1024, 8, 256) bf16 and 3.5x / 2.7x at (100, 1, 512); ``LSTMKIT_CLUSTER=0`` (or false / off / no) switches it
#: off (read at import). Only on Hopper (sm_90), the only chip measured: elsewhere the calls go on as before.
ROUTE = os.environ.get("LSTMKIT_CLUSTER", "1").strip().lower() not in ("0", "false", "off", "no")
#: The exchange routed calls use: mbarrier measured faster than the cluster barrier in run 6 in every row but three
#: ((100, 1, 512) fp16 training 1.47 against 1.39 ms, (35, 20, 650) bf16 training 1.96 against 1.92, and fp16
#: forward 0.402 against 0.382), and by up to 1.41x elsewhere.
ROUTE_EXCHANGE = "mbarrier"
#: Whether layer norm is routed too (else it runs on the Triton kernels). On since run 7 (H200, docs/gpu.md): where
#: the module is not chaotic (layer norm's recurrent gains about 0.5; at 1, over 256 steps, even float32 lands 25%
#: from float64) its check against the NumPy spec at (256, 8, 256) passes the plain bounds (bf16 6.5e-3, fp16
#: 8.1e-4; torch's own loop 2.4e-2, 3.3e-3), through lstmkit.nn.LSTM too, and it ran 1.3-3.6x faster than the
#: Triton kernels' layer norm at (1024, 8, 256), (256, 16, 768) and (100, 1, 512) (gpu_routed.py).
ROUTE_LN = True
#: Routed calls only up to this batch: at (35, 20, 650) bf16 (two clusters a step) the Triton kernels trained
#: faster in run 6 (1.38x cuDNN against the cluster kernels' 1.22x), and nothing larger was timed.
ROUTE_MAX_BATCH = 16
#: Layer norm's batch limit, larger: its alternative is the Triton kernels' layer norm, which the cluster kernels ran
#: 1.3-3.6x faster at B <= 16 (run 7), and more rows only add clusters, which run side by side while they fit the
#: SMs (_gpu_reason checks that), not steps. It covers (35, 20, 650), where the Triton layer norm missed goal 2 in
#: run 6 (1.51x / 1.32x cuDNN bf16's plain forward / training) and which runs padded to 768 units (the statistics
#: leave the padding out); not yet timed there on a GPU (benchmarks/gpu_routed.py's first rows).
ROUTE_LN_MAX_BATCH = 32
#: Whether routed layer-norm calls run the merged forward (config(merge=True): (c'_t, o_t) exchanged instead of h_t,
#: one exchange a step fewer) where it covers them. Off: checked emulated (tests/test_cluster_lstm.py), not yet on a
#: GPU; gpu_cluster.py checks and times it, and gpu_routed.py times routed calls with it on beside it off.
ROUTE_LN_MERGE = False
#: float16 is routed (else it runs on cuDNN, whose fp16 kernel is persistent) only up to this many kernel units:
#: run 6 measured the cluster kernels 1.03-3.59x cuDNN fp16 at H = 128-512, 0.78-0.89x at 768, and at 650 (padded
#: to 768) 1.11x forward but 0.97x training.
ROUTE_FP16_MAX_H = 512
#: Routed configurations whose launch failed in this process (a compile, load or launch error): their calls go
#: on to the next path, with one warning each.
_FAILED: set = set()


def _gpu_reason(x: Tensor, B: int, H: int, grad: bool = True, flags: tuple[str, ...] = (),
                exchange: str = "barrier") -> str | None:  # fmt: skip
    """Why the kernels cannot run a (B, H) layer on ``x``'s device and dtype, or None when they can; ``grad``:
    a backward will be needed; ``flags``: the variant switches (config's choice depends on whether any is on
    and on LN). Remembered per arguments (:func:`_answer`: asked at every routed call, and it depends on nothing
    that changes in a process: the device, NVRTC, the configurations)."""
    if not x.is_cuda:
        return "not a CUDA tensor"
    flags = tuple(flags)
    return _answer(("gpu_reason", _device_key(x.device), B, H, x.dtype, bool(grad), flags, exchange),
                   lambda: _find_gpu_reason(x, B, H, grad, flags, exchange))


def _find_gpu_reason(x: Tensor, B: int, H: int, grad: bool, flags: tuple[str, ...], exchange: str) -> str | None:
    """:func:`_gpu_reason`, worked out."""
    if _capability(x.device)[0] < 9:
        return "thread-block clusters need an sm_90 (Hopper) or newer GPU"
    try:
        cfg = config(B, kernel_units(B, H, x.dtype, None, flags, exchange, grad), x.dtype, flags=flags,
                     exchange=exchange, real=H)  # fmt: skip  (real: the configuration the call compiles)
    except ValueError as e:
        return str(e)
    if grad and not cfg.trains:
        return f"{cfg}: no backward kernel for it (training runs on the Triton kernels)"
    props = _properties(x.device)
    if math.ceil(B / cfg.batch_rows) * cfg.C > props.multi_processor_count:
        return "more clusters than the GPU runs at once (large batch: the Triton kernels or cuDNN)"
    smem = _smem_bytes(cfg)
    if max(smem) > getattr(props, "shared_memory_per_block_optin", MAX_SMEM):
        return f"{cfg}: {max(smem)} bytes of shared memory a CTA, more than this GPU gives one"
    if not nvrtc_available():
        return "NVRTC (libnvrtc) not found"
    index = x.device.index if x.device.index is not None else torch.cuda.current_device()
    for kind, size in zip(("fwd", "bwd"), smem):
        if (kind == "bwd" and not grad) or cfg.C <= MAX_CLUSTER:  # (a portable cluster is placed where a CTA fits)
            continue
        try:  # (compiles the kernel: it runs next anyway)
            threads = cfg.threads if kind == "fwd" else cfg.bthreads
            if _max_active_clusters(cfg.key(), index, kind, threads, size, cfg.C) < 1:
                return f"{cfg}: the GPU cannot place one cluster of {cfg.C} CTAs of lstm_cluster_{kind}"
        except (RuntimeError, OSError, AttributeError) as e:  # (AttributeError: a driver without the call)
            return f"{cfg}: the driver cannot say whether its clusters fit ({e})"
    return None


def unsupported_reason(input: Tensor, hx: tuple[Tensor, Tensor], weights: list[Tensor], *, bias: bool,
                       num_layers: int, dropout: float, training: bool, bidirectional: bool, batch_first: bool,
                       lengths: Tensor | None = None, exchange: str = "barrier") -> str | None:  # fmt: skip
    """Why :func:`lstm` cannot run this call on the GPU, or None when it can (``native.lstm``'s arguments, and
    the exchange it would run with)."""
    if not isinstance(input, Tensor) or input.dim() != 3:
        return "only batched (3-D) padded input"
    if lengths is not None:
        return "lengths= (padded batches) is not supported"
    dirs, per = (2 if bidirectional else 1), (4 if bias else 2)
    if len(weights) != num_layers * dirs * per or weights[1].shape[0] != 4 * weights[1].shape[1]:
        return "projections (proj_size > 0) are not supported"
    if any(t.device != input.device or t.dtype != input.dtype for t in (*hx, *weights)):
        return "tensors on different devices or of mixed dtypes"
    grad = torch.is_grad_enabled() and (input.requires_grad or any(t.requires_grad for t in (*hx, *weights)))
    return _gpu_reason(input, input.shape[0] if batch_first else input.shape[1], weights[1].shape[1], grad,
                       exchange=exchange)  # fmt: skip


def _route_reason(input: Tensor, weights: list[Tensor], kw: dict) -> str | None:
    """Why ``impl="auto"`` sends this call elsewhere although the kernels might run it (the routing policy,
    from run 6's measurements), or None."""
    B = input.shape[0] if kw.get("batch_first") else input.shape[1]
    return _policy_reason(input, B, weights[1].shape[1])


def _policy_reason(x: Tensor, B: int, H: int, flags: tuple[str, ...] = (), fp16_cap: bool = True) -> str | None:
    """The routing policy for a (B, H) layer in ``x``'s dtype and device: only Hopper, at most
    :data:`ROUTE_MAX_BATCH` rows (layer norm: :data:`ROUTE_LN_MAX_BATCH`), float16 at most
    :data:`ROUTE_FP16_MAX_H` kernel units (``fp16_cap``: the plain LSTM, whose alternative is cuDNN's persistent
    fp16 kernel; variants' is the Triton kernels, which the cluster kernels beat at 768 too: run 6, (256, 16, 768)
    fp16, six element-wise variants, 4.34 against 4.83 ms in training); and not a configuration whose launch failed
    before (:data:`_FAILED`)."""
    if x.is_cuda and _capability(x.device)[0] != 9:
        return "measured on Hopper (sm_90) only"
    limit = ROUTE_LN_MAX_BATCH if "LN" in flags else ROUTE_MAX_BATCH
    if B > limit:
        return f"batch {B} > {limit}: faster elsewhere or not timed (run 6)"
    try:
        units = kernel_units(B, H, x.dtype, None, flags, ROUTE_EXCHANGE, torch.is_grad_enabled())
    except ValueError as e:
        return str(e)
    if fp16_cap and x.dtype == torch.float16 and units > ROUTE_FP16_MAX_H:
        return f"float16 at {units} units: cuDNN's persistent fp16 kernel was faster there (run 6)"
    return _runnable_reason(x, B, H, flags)


def _runnable_reason(x: Tensor, B: int, H: int, flags: tuple[str, ...] = ()) -> str | None:
    """The part of :func:`_policy_reason` that timing does not replace (``kernels.route``, which times the
    paths instead of the batch and float16 limits): only Hopper, and not a configuration whose launch failed
    before (:data:`_FAILED`)."""
    if x.is_cuda and _capability(x.device)[0] != 9:
        return "measured on Hopper (sm_90) only"
    try:
        if _key(x, B, H, flags) in _FAILED:
            return "its launch failed before in this process"
    except ValueError as e:
        return str(e)
    return None


def _routed(fn, key: tuple, fallback):
    """``fn()``; where its launch fails (NVRTC, the module load, the cluster launch), the key is remembered in
    :data:`_FAILED`, a warning says so once, and ``fallback()`` runs the call instead."""
    try:
        return fn()
    except (RuntimeError, OSError) as e:
        _fail(key, e, stacklevel=4)
        return fallback()


def _timing_failed(key: tuple, name: str, e: Exception) -> None:
    """A variant layer's path failed while ``kernels.route`` timed it: a cluster launch that failed is remembered
    (:func:`_fail`); a path that disagreed with the reference only warns (that kind's timing left it out; rounding
    apart depends on the length and the weights); the Triton kernels' refusal (``Unsupported``) is not a failure."""
    from . import route

    if isinstance(e, route.Disagreement):
        warnings.warn(f"impl='auto': the {name} kernels left out for {key[:4]} ({e})", RuntimeWarning, stacklevel=5)
    elif name == "cluster":
        _fail(key, e, stacklevel=6)


def _fail(key: tuple, e: Exception, stacklevel: int = 5) -> None:
    """A launch for ``key`` failed: remembered in :data:`_FAILED`, with one warning."""
    if key not in _FAILED:
        _FAILED.add(key)
        warnings.warn(f"cluster LSTM kernels failed for {key[:4]} ({type(e).__name__}: {str(e)[:200]}); this "
                      "process runs such calls on the next path (LSTMKIT_CLUSTER=0 skips the cluster kernels)",
                      RuntimeWarning, stacklevel=stacklevel)  # fmt: skip


def _key(x: Tensor, B: int, H: int, flags: tuple[str, ...] = ()) -> tuple:
    return (B, kernel_units(B, H, x.dtype, None, flags, ROUTE_EXCHANGE, torch.is_grad_enabled()), x.dtype, flags,
            torch.is_grad_enabled())  # fmt: skip


def lstm_or_next(input: Tensor, hx: tuple[Tensor, Tensor], weights: list[Tensor], **kw):
    """:func:`lstm` (the :data:`ROUTE_EXCHANGE`) where it covers the call and routing sends it here
    (:func:`_route_reason`), else ``triton_lstm.lstm_or_native`` (which falls back to ``native.lstm`` in turn):
    what ``impl="auto"`` runs for a plain bfloat16 LSTM on a GPU when :data:`ROUTE`."""
    from . import triton_lstm

    return _lstm_or(triton_lstm.lstm_or_native, input, hx, weights, kw)


def lstm_or_native(input: Tensor, hx: tuple[Tensor, Tensor], weights: list[Tensor], **kw):
    """:func:`lstm` where it covers the call and routing sends it here, else ``native.lstm`` (cuDNN): what
    ``impl="auto"`` runs for a plain float16 LSTM on a GPU when :data:`ROUTE` (small batch, at most
    :data:`ROUTE_FP16_MAX_H` units)."""
    from . import native

    return _lstm_or(native.lstm, input, hx, weights, kw)


def _lstm_or(fallback, input: Tensor, hx: tuple[Tensor, Tensor], weights: list[Tensor], kw: dict):
    """The routed plain call: :func:`lstm` where routing sends it here and the kernels cover it, else (or where its
    launch fails) ``fallback`` with ``native.lstm``'s arguments."""
    if isinstance(input, Tensor) and input.dim() == 3 and _route_reason(input, weights, kw) is None:
        if unsupported_reason(input, hx, weights, **kw, exchange=ROUTE_EXCHANGE) is None:
            B = input.shape[0] if kw.get("batch_first") else input.shape[1]
            return _routed(lambda: lstm(input, hx, weights, **kw, exchange=ROUTE_EXCHANGE),
                           _key(input, B, weights[1].shape[1]), lambda: fallback(input, hx, weights, **kw))
    return fallback(input, hx, weights, **kw)


def _variant_flags(v, lengths: bool = False) -> tuple[str, ...]:
    """The switches :func:`config`'s choice for a variant call depends on: whether layer norm is on, whether any
    element-wise variant (or per-row lengths) is (weight drop changes only W_hh's values: none)."""
    others = (v.peephole or v.coupled_input_forget or v.cell_clip is not None or v.recurrent_dropout or v.zoneout_h
              or v.zoneout_c or lengths)
    return (("LN",) if v.layer_norm else ()) + (("PEEP",) if others else ())


def _variant_reason(gx: Tensor, v, grad: bool = True, lengths: bool = False, exchange: str = "barrier") -> str | None:
    """Why :func:`variant_layer` cannot run this call on the cluster kernels, or None."""
    return _gpu_reason(gx, gx.shape[1], gx.shape[2] // 4, grad, _variant_flags(v, lengths), exchange)


def variant_layer(
    gx: Tensor, h0: Tensor, c0: Tensor, w_hh: Tensor, v, p: dict, masks: dict, valid: Tensor | None,
    eps: float = 1e-5, **kw,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """One layer and direction with variants, ``triton_lstm.variant_layer``'s interface, on the cluster kernels
    where they cover the call (sm_90, bf16 / fp16, :func:`config`'s sizes; ``valid`` masks carry the state past
    each row's length, as the Triton kernels do; layer norm of the input projection, with the bias, over all steps
    at once by ``layer_norm.input_norm`` (one Triton kernel), the recurrent one and the cell's in the kernels),
    else on the Triton kernels (which raise ``kernels.Unsupported`` for what they cannot run either).
    ``kw``: cluster, fast, exchange. What ``impl="auto"`` runs for variants on a GPU when :data:`ROUTE`."""
    from . import route, triton_lstm

    grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (gx, h0, c0, w_hh, *p.values()))
    kw.setdefault("exchange", ROUTE_EXCHANGE)
    B, H = gx.shape[1], gx.shape[2] // 4
    flags = _variant_flags(v, valid is not None)  # (also the key a failed launch is remembered under)
    cluster = partial(_variant_layer, gx, h0, c0, w_hh, v, p, masks, valid, eps, kw)
    triton = partial(triton_lstm.variant_layer, gx, h0, c0, w_hh, v, p, masks, valid, eps)
    covered = _variant_reason(gx, v, grad, valid is not None, kw["exchange"]) is None
    policy = _policy_reason(gx, B, H, flags, fp16_cap=False)
    if covered and route.may_time(gx) and _runnable_reason(gx, B, H, flags) is None:  # (may_time: a CUDA tensor)
        # impl="auto" times the two paths on the first call of each kind (kernels/route.py) instead of the limits
        k = route.variant_key(gx, v, valid is not None, grad, kw["exchange"])
        name = route.chosen(k)
        if name is None:  # (timed on aliases of the call's tensors: the caller's graph, hooks and .grad untouched)
            a = [route.alias(t, grad) for t in (gx, h0, c0, w_hh)]
            ap = {n: route.alias(t, grad) for n, t in p.items()}
            thunks = {"cluster": partial(_variant_layer, *a, v, ap, masks, valid, eps, kw),
                      "triton": partial(triton_lstm.variant_layer, *a, v, ap, masks, valid, eps)}  # fmt: skip
            diff = [t for t in (*a, *ap.values()) if t is not None and t.requires_grad] if grad else []
            # neither is required: where the Triton kernels cannot run the call (kernels.Unsupported) the cluster
            # kernels still may; where neither can, the Triton kernels' error is the module's (its loop runs)
            # no agreement check with layer norm: at its default gains a long layer-norm module is chaotic, so two
            # correct paths round apart past any useful bound (torch's own bf16 loop at (256, 8, 256): 0.49 from
            # float64 on the output, 8.7 on the gradients; benchmarks/ln_long_rounding.py, docs/gpu.md run 6)
            name = route.choose(k, thunks, diff, "cluster" if policy is None else "triton", gx.device,
                                route.variant_fields(k), on_fail=partial(_timing_failed, _key(gx, B, H, flags)),
                                reference=None if v.layer_norm else "triton")  # fmt: skip
        return _routed(cluster, _key(gx, B, H, flags), triton) if name == "cluster" else triton()
    if policy is not None or not covered:
        return triton()
    if gx.is_cuda:
        return _routed(cluster, _key(gx, B, H, flags), triton)
    return cluster()


def _variant_layer(gx, h0, c0, w_hh, v, p: dict, masks: dict, valid, eps: float, kw: dict):
    """:func:`variant_layer` on the cluster kernels (the call is known to be covered)."""
    bias = p.get("bias")
    if v.layer_norm:  # LN of the input projection and the bias, all steps at once, one kernel (layer_norm.py)
        gx = input_norm(gx, p["layernorm_ih_weight"], bias, eps, gx.dtype, interpret=not gx.is_cuda)
    elif bias is not None:
        gx = gx + bias.to(gx.dtype)  # (float32 master parameters under autocast: gx stays bf16)
    var = dict(peephole=v.peephole, cifg=v.coupled_input_forget, clip=v.cell_clip, rec=masks.get("recurrent"),
               zh=masks.get("zoneout_h"), zc=masks.get("zoneout_c"), valid=valid, eps=eps)  # fmt: skip
    w_ch = p.get("weight_ch") if v.peephole else None
    ln = ("layernorm_hh_weight", "layernorm_c_weight", "layernorm_c_bias")
    lnw = torch.cat([p[n] for n in ln]) if v.layer_norm else None  # (one input: autograd splits its gradient)
    merge = "auto" if v.layer_norm and ROUTE_LN_MERGE else False  # (where config takes it: _recurrence_forward)
    return _recurrence(gx, h0, c0, w_hh, w_ch, lnw, var, {**kw, "grad": torch.is_grad_enabled(), "merge": merge})


variant_layer.per_layer = True  # type: ignore[attr-defined]  # the module's loop over layers/directions calls it
variant_layer.linear = gemm.linear  # type: ignore[attr-defined]  # input projection: F.linear (float32: gemm.mm)
variant_layer.fuses_input_norm = True  # type: ignore[attr-defined]  # gx without bias and LN: added here
