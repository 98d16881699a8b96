"""Fast LSTM paths, and the one place that chooses between them.

``lstmkit.nn`` asks :func:`select_lstm` / :func:`select_cell` which kernel runs a call; ``None``
means "no kernel covers this configuration", and the module falls back to its readable pure-torch
loop. Today's kernels:

* ``native``: torch's fused operator (``torch._VF.lstm``): cuDNN on GPU, oneDNN/ATen on CPU. It
  covers everything ``torch.nn.LSTM`` does, plus padded batches with ``lengths`` (by packing), and
  nothing else: no variant.
* ``triton_lstm``: persistent Triton kernels for CUDA (float32, bfloat16, float16): ``impl="triton"``
  for the plain LSTM, and what ``impl="auto"`` runs for a plain bfloat16 LSTM on a GPU (where cuDNN
  has no persistent path: run 5 on an H200 measured 1.7-5.0x at small batch, docs/gpu.md); with variants
  ``impl="auto"`` runs them on a GPU, one layer and direction per call (``variant_layer``), layer norm
  included (2.1-35x faster than the pure-torch loop, run 5 on an H200, docs/gpu.md). The launch plan
  is tuned on the first call per shape (seconds, once).
* ``route``: what ``impl="auto"`` runs for a plain LSTM on a GPU: of the paths that cover a call (the cluster
  kernels, the Triton kernels, cuDNN), the fastest, timed on the first call of each kind (its shape, dtype and
  whether it trains) as ``torch.backends.cudnn.benchmark`` times convolutions; ``LSTMKIT_ROUTE_TUNE=0`` keeps
  the fixed policy below (``route.static``), measured on one H200.
* ``cluster_lstm``: an LSTM layer's forward and backward (plain, or with the variants, layer norm too) as
  CUDA C++ kernels for Hopper thread-block clusters (NVRTC at run time), h_t exchanged through distributed
  shared memory instead of a barrier in global memory; tested on the CPU by emulation and measured on an H200
  in run 6 (docs/gpu.md): 1.31-2.73x cuDNN's fp16 persistent kernel at (1024, 8, 256) and (100, 1, 512).
  ``impl="auto"`` runs small-batch (<= 16 rows) bfloat16 calls, float16 ones up to 512 units, and variant
  modules without layer norm on them (``cluster_lstm.ROUTE``, on; ``LSTMKIT_CLUSTER=0`` turns it off).
* ``gemm``: the float32 GEMMs around the recurrence (input projection, its gradients, dW_hh) as three TF32
  tensor-core products (tf32x3, about float32's accuracy) in Triton, where TF32 is off and tuning measures it
  faster than cuBLAS's fp32 FMA; torch's GEMM everywhere else.
* ``layer_norm``: the layer-norm modules' input norm, LN(x W_ih^T) g_ih + b over the 4H gates, one Triton kernel
  each way on a GPU (torch's CUDA layer norm takes no bf16 input with a float32 gain: four passes otherwise).
* ``interpreter``: Triton's interpreter (the kernels' CPU tests) made to round float32 to bfloat16 to nearest,
  as the GPU does (it rounds toward zero on its own).
* ``cpu_fused``: one layer and direction of an LSTM with variants (layer norm, peepholes, CIFG,
  cell clip, recurrent dropout, zoneout, weight drop; ``lengths``) on the CPU, float32/float64, no
  projection: the time loop forward and backward in C++ (ATen), JIT-compiled once and cached. It
  is marked ``per_layer``: the module's loop over layers and directions calls it. If it cannot be
  compiled, it is unavailable (one logged warning) and the pure-torch loop runs instead.

Kernels never import ``lstmkit.nn`` or ``lstmkit.tasks``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from . import cpu_fused, native

__all__ = ["IMPLS", "Unsupported", "select_lstm", "select_cell", "native", "cpu_fused"]


class Unsupported(ValueError):
    """A per-layer kernel cannot run this particular call (e.g. too large for its int32 indexing); the
    module runs that layer on its pure-torch loop instead."""

#: What a user may ask for with ``impl=``: ``auto`` (fastest that covers the call: native without
#: variants, else the compiled CPU kernel where it covers the call), ``native`` (fail unless torch's
#: fused operator covers it), ``loop`` (always the readable pure-torch path) or ``triton`` (the
#: persistent GPU kernels of ``triton_lstm``; CUDA only; see docs/gpu.md for the measured speed).
IMPLS = ("auto", "native", "loop", "triton")


#: the dtypes a plain GPU call may run on our kernels in (float64 always runs on torch's operator)
_GPU_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def cuda_autocast_on() -> bool:
    """Whether CUDA autocast is on (torch < 2.4 takes no device type and means CUDA): the kernels that would not
    follow autocast's casts leave such calls to torch (``gemm.mm``, ``route.lstm``)."""
    try:
        return torch.is_autocast_enabled("cuda")
    except TypeError:  # pragma: no cover - older torch
        return torch.is_autocast_enabled()


def _check_impl(impl: str) -> None:
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")


def select_lstm(
    impl: str,
    variants: tuple[str, ...] = (),
    *,
    proj_size: int = 0,
    like: Tensor | None = None,
    ragged: bool = False,
) -> Callable | None:
    """The kernel that runs a call, or None for the pure-torch loop.

    ``variants`` names the features beyond ``torch.nn.LSTM`` that change the computation;
    ``proj_size`` and ``like`` (a parameter: device and dtype) say what else the kernel must cover.
    A returned kernel with ``per_layer = True`` runs one layer and direction (``cpu_fused.layer``);
    otherwise it runs the whole call (``native.lstm``).

    ``ragged``: the call has per-sequence lengths (``lengths=`` or a PackedSequence). On the CPU,
    torch's packed operator pays for ragged batches with a backward pass whose cost grows with the
    square of the length (measured: T=1000, B=32, H=16, lengths in [T/2, T]: 0.33 s against 0.012 s
    padded), so ``auto`` runs such calls on the compiled kernel, which masks instead of packing.
    ``impl="triton"`` asks for the GPU kernels of ``triton_lstm`` (error when they cannot run).
    """
    _check_impl(impl)
    if impl == "loop":
        return None
    if impl == "triton":
        from . import triton_lstm  # imports triton only when asked for

        why = triton_lstm.why_not_variants(variants, proj_size, like)
        if why is not None:
            other = "'auto' or 'loop'" if variants else "'auto' or 'native'"
            raise ValueError(f"impl='triton' cannot run this module: {why}; use impl={other}")
        if variants:
            return triton_lstm.variant_layer  # per layer and direction, lengths= as a padding mask
        return triton_lstm.lstm_or_native  # per call: Triton, else native.lstm (lengths=, mixed dtypes)
    if impl == "native":
        if variants:
            raise ValueError(
                f"impl='native' runs only what torch.nn.LSTM supports, but {', '.join(variants)} "
                "is switched on; use impl='auto' or 'loop'"
            )
        return native.lstm
    if not variants:  # plain: torch's operator, unless a ragged CPU batch is cheaper masked
        if ragged and like is not None and not cpu_fused.why_not(proj_size, like):
            return cpu_fused.layer
        if like is not None and like.is_cuda and like.dtype in _GPU_DTYPES and not proj_size:
            from . import route

            if route.TUNE:  # the fastest path for each kind of call, timed on its first (kernels/route.py)
                return route.lstm
        if like is not None and like.is_cuda and like.dtype == torch.bfloat16 and not proj_size:
            # bfloat16 on a GPU: cuDNN has no persistent kernel there; run 6 (H200, docs/gpu.md) measured the
            # Triton kernels 1.28-5.87x cuDNN bf16 at the five shapes, forward and training, and the cluster
            # kernels (small batch: cluster_lstm.ROUTE) faster still. Per call each falls back to the next.
            from . import cluster_lstm, triton_lstm

            if triton_lstm.why_not((), proj_size, like) is None:
                return cluster_lstm.lstm_or_next if cluster_lstm.ROUTE else triton_lstm.lstm_or_native
        if like is not None and like.is_cuda and like.dtype == torch.float16 and not proj_size:
            # float16: cuDNN's persistent kernel, but at small batch and up to 512 units the cluster kernels
            # measured 1.03-3.59x it in run 6 (cluster_lstm.lstm_or_native routes per call)
            from . import cluster_lstm

            if cluster_lstm.ROUTE:
                return cluster_lstm.lstm_or_native
        return native.lstm
    if like is not None and like.is_cuda:  # variants on the GPU: the Triton kernels where they cover them
        # (layer norm included: run 5 on the H200 measured its kernel 2.1-35x faster than the pure-torch loop,
        # training, at the five shapes of docs/gpu.md in all three dtypes, and checked it against float64)
        from . import cluster_lstm, triton_lstm

        if triton_lstm.why_not_variants(variants, proj_size, like):
            return None
        # the cluster kernels first where they cover a call (cluster_lstm.ROUTE), layer norm with
        # cluster_lstm.ROUTE_LN (on since run 7; see there)
        if cluster_lstm.ROUTE and ("layer_norm" not in variants or cluster_lstm.ROUTE_LN):
            return cluster_lstm.variant_layer
        return triton_lstm.variant_layer
    return None if cpu_fused.why_not(proj_size, like) else cpu_fused.layer


def select_cell(impl: str, variants: tuple[str, ...] = ()) -> Callable | None:
    """The kernel that runs one step of an ``LSTMCell``, or None for the pure-torch cell."""
    _check_impl(impl)
    if impl == "loop":
        return None
    if variants:
        if impl == "native":
            raise ValueError(
                f"impl='native' runs only what torch.nn.LSTMCell supports, but {', '.join(variants)} "
                "is switched on; use impl='auto' or 'loop'"
            )
        return None
    return native.lstm_cell
