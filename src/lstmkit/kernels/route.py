"""``impl="auto"`` for a plain LSTM on a GPU: the fastest of the paths that can run the call, timed on this machine.

Three paths can run a plain (no variant, no projection) CUDA call, each only where it covers it:

* ``cluster``: the thread-block-cluster kernels (``cluster_lstm.lstm``, Hopper, bf16 / fp16, small batch);
* ``triton``: the persistent Triton kernels (``triton_lstm.lstm``, fp32 / bf16 / fp16, no ``lengths``);
* ``native``: torch's operator (cuDNN), which covers everything.

Which is fastest depends on the shape, the dtype, the GPU and the host: run 6 and 7 on H200s measured each of the
three fastest somewhere (docs/gpu.md), and at short calls the host's speed decides (run 7: the Triton kernels'
bf16 forward at (35, 20, 650) 1.88x cuDNN's on one machine, 0.88x on one with a slower host). A fixed policy
(``static``, below) encodes one machine's measurements; :func:`lstm` instead times the candidates on the first
call of each kind, as ``torch.backends.cudnn.benchmark`` does for convolutions, and runs the fastest from then on:

* the kind (:func:`key`) is the device, the dtypes, the batch, the sizes, the layers and directions, the layout,
  whether a backward will follow, and the length rounded up to a power of two (a shorter last batch of a
  similar length reuses the choice);
* each candidate runs once untimed (its compiles, Triton's plan tuning, cuDNN's own choice), then
  :data:`REPEATS` times, interleaved, on the call's own tensors: the forward, and where the call will be
  differentiated the backward too (``torch.autograd.grad`` on a fixed output gradient: no ``.grad`` is
  touched), timed from an idle GPU with CUDA events, so a call bound by its host work is timed as the user
  sees it;
* the fastest median wins, but the static policy's own choice is kept unless another is at least
  :data:`MARGIN` faster (no switch on noise); a candidate that raises while timed is left out, with a warning;
* the random number generators are restored after timing, so dropout between layers draws what it would have.

Nothing is timed under autocast (torch's operator follows autocast's casts, the kernels would not), while a
CUDA graph is captured or under ``torch.compile``'s tracing; those calls take the static policy (or the choice
already made, in a capture). ``LSTMKIT_ROUTE_TUNE=0`` (read at import: :data:`TUNE`) turns timing off and
keeps the static policy everywhere. :func:`decisions` lists what was timed and chosen; each choice is logged
at INFO on the ``lstmkit.kernels.route`` logger.
"""

from __future__ import annotations

import logging
import os
import statistics
import time
import warnings
from collections.abc import Callable
from functools import partial

import torch
from torch import Tensor

__all__ = ["MARGIN", "REPEATS", "TUNE", "candidates", "choose", "chosen", "decisions", "key", "lstm", "may_time",
           "reset", "static", "tune", "variant_fields", "variant_key"]  # fmt: skip

log = logging.getLogger(__name__)

#: Whether :func:`lstm` times the candidates (``LSTMKIT_ROUTE_TUNE=0``, false, off or no: the static policy).
TUNE = os.environ.get("LSTMKIT_ROUTE_TUNE", "1").strip().lower() not in ("0", "false", "off", "no")
#: Timed calls of each candidate after its untimed first one (fewer where one call is long: :func:`_repeats`).
REPEATS = 5
#: How much faster (a fraction of its time) another candidate must be to be chosen over the static policy's.
MARGIN = 0.05

#: key -> the chosen candidate's name
_CHOICE: dict[tuple, str] = {}
#: key -> ({name: median ms}, the static policy's name, the kind's fields) (for :func:`decisions`)
_TIMES: dict[tuple, tuple[dict[str, float], str, dict]] = {}
#: (name, key): a candidate that failed on that kind of call in this process (never timed or chosen again)
_FAILED: set[tuple[str, tuple]] = set()


def reset() -> None:
    """Forget every choice (tests; a process whose GPU work changed)."""
    _CHOICE.clear()
    _TIMES.clear()
    _FAILED.clear()


def chosen(k: tuple) -> str | None:
    """The path chosen for kind ``k``, or None before its first call was timed."""
    return _CHOICE.get(k)


def decisions() -> list[dict]:
    """What was timed and chosen in this process: one dict per kind of call, with its key's fields, each
    candidate's median milliseconds, the static policy's choice and the choice."""
    return [{**fields, "ms": dict(times), "static": stat, "chosen": _CHOICE.get(k)}
            for k, (times, stat, fields) in _TIMES.items()]  # fmt: skip


def _batch_time(input: Tensor, kw: dict) -> tuple[int, int]:
    return (input.shape[1], input.shape[0]) if kw.get("batch_first") else (input.shape[0], input.shape[1])


def _grad(input: Tensor, hx: tuple[Tensor, Tensor], weights: list[Tensor]) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in (input, *hx, *weights))


def key(input: Tensor, hx: tuple[Tensor, Tensor], weights: list[Tensor], kw: dict) -> tuple:
    """The kind of call a choice is remembered for (see the module docstring)."""
    T, B = _batch_time(input, kw)
    return (input.device, (input.dtype, hx[0].dtype, weights[0].dtype), 1 << max(T - 1, 0).bit_length(), B,
            input.shape[-1], weights[1].shape[1], kw["num_layers"], kw["bidirectional"], bool(kw.get("batch_first")),
            kw["bias"], _grad(input, hx, weights), bool(kw["training"] and kw["dropout"] > 0))  # fmt: skip


def variant_key(gx: Tensor, v, lengths: bool, grad: bool, exchange: str) -> tuple:
    """The kind of a variant layer's call (``cluster_lstm.variant_layer``, which times the cluster kernels against
    the Triton kernels with :func:`choose`): gx (T, B, 4H), the variants, lengths or not, a backward or not."""
    T, B = gx.shape[0], gx.shape[1]
    return ("variant layer", gx.device, gx.dtype, 1 << max(T - 1, 0).bit_length(), B, gx.shape[2] // 4, v,
            bool(lengths), bool(grad), exchange)  # fmt: skip


def variant_fields(k: tuple) -> dict:
    """:func:`variant_key`'s fields by name (:func:`decisions`)."""
    return dict(zip(("kind", "device", "dtype", "T_max", "batch", "hidden_size", "variants", "lengths", "grad",
                     "exchange"), k))  # fmt: skip


def _cluster_reason(input: Tensor, hx: tuple[Tensor, Tensor], weights: list[Tensor], kw: dict) -> str | None:
    """Why the cluster kernels cannot run the call (not whether the static policy would send it there)."""
    from . import cluster_lstm as cl

    if not cl.ROUTE:
        return "LSTMKIT_CLUSTER=0"
    why = cl.unsupported_reason(input, hx, weights, **kw, exchange=cl.ROUTE_EXCHANGE)
    if why is not None:
        return why
    return cl._runnable_reason(input, _batch_time(input, kw)[1], weights[1].shape[1])


def _cluster(input: Tensor, hx: tuple[Tensor, Tensor], weights: list[Tensor], **kw):
    from . import cluster_lstm as cl

    return cl.lstm(input, hx, weights, **kw, exchange=cl.ROUTE_EXCHANGE)


def _triton(input: Tensor, hx: tuple[Tensor, Tensor], weights: list[Tensor], **kw):
    from . import triton_lstm as tk

    return tk.lstm(input, hx, weights, **kw)


def _native(input: Tensor, hx: tuple[Tensor, Tensor], weights: list[Tensor], **kw):
    from . import native

    return native.lstm(input, hx, weights, **kw)


def candidates(input: Tensor, hx: tuple[Tensor, Tensor], weights: list[Tensor], kw: dict) -> dict[str, Callable]:
    """The paths that can run this call, by name (``native`` always; the others where they cover it)."""
    return {name: fn for name, fn in (("cluster", _cluster), ("triton", _triton), ("native", _native))
            if _covers(name, input, hx, weights, kw)}  # fmt: skip


def _covers(name: str, input: Tensor, hx: tuple[Tensor, Tensor], weights: list[Tensor], kw: dict) -> bool:
    """Whether candidate ``name`` can run this call."""
    if name == "cluster":
        return input.dtype in (torch.bfloat16, torch.float16) and _cluster_reason(input, hx, weights, kw) is None
    if name == "triton":
        from . import triton_lstm as tk

        return tk.unsupported_reason(input, hx, weights, **kw) is None
    return True


def static(input: Tensor, hx: tuple[Tensor, Tensor], weights: list[Tensor], kw: dict) -> Callable:
    """The fixed policy (run 6 and 7's measurements on an H200, docs/gpu.md): bf16 on the cluster kernels where
    ``cluster_lstm``'s policy sends it, else the Triton kernels, else cuDNN; fp16 on the cluster kernels where
    that policy sends it, else cuDNN; fp32 on cuDNN. Each falls back per call for what it does not cover."""
    from . import cluster_lstm as cl
    from . import native
    from . import triton_lstm as tk

    if weights[0].dtype == torch.bfloat16:
        return cl.lstm_or_next if cl.ROUTE else tk.lstm_or_native
    if weights[0].dtype == torch.float16 and cl.ROUTE:
        return cl.lstm_or_native
    return native.lstm


def _static_name(input: Tensor, hx: tuple[Tensor, Tensor], weights: list[Tensor], kw: dict,
                 cands: dict[str, Callable]) -> str:  # fmt: skip
    """Which of ``cands`` :func:`static` would run this call on."""
    from . import cluster_lstm as cl

    dtype = weights[0].dtype
    if "cluster" in cands and cl._route_reason(input, weights, kw) is None:
        return "cluster"
    if dtype == torch.bfloat16 and "triton" in cands:
        return "triton"
    return "native"


def may_time(input: Tensor) -> bool:
    """Whether this call may be timed (a CUDA tensor, no autocast, no graph capture, no compiler tracing)."""
    if not (TUNE and input.is_cuda):
        return False
    if _autocast_on():
        return False
    if _capturing():
        return False
    compiling = getattr(getattr(torch, "compiler", None), "is_compiling", None)
    return not (compiling is not None and compiling())


def _capturing() -> bool:
    """Whether the current CUDA stream is capturing a graph (asked only for CUDA tensors)."""
    return torch.cuda.is_current_stream_capturing()


def _autocast_on() -> bool:
    """Whether CUDA autocast is on (torch < 2.4 takes no device type and means CUDA)."""
    try:
        return torch.is_autocast_enabled("cuda")
    except TypeError:  # pragma: no cover - older torch
        return torch.is_autocast_enabled()


def lstm(input: Tensor, hx: tuple[Tensor, Tensor], weights: list[Tensor], **kw):
    """``native.lstm``'s interface: the call on the path chosen for its kind (:func:`key`), timing the candidates
    the first time; what ``impl="auto"`` runs for a plain LSTM on a GPU (see the module docstring)."""
    if not isinstance(input, Tensor) or input.dim() != 3 or kw.get("lengths") is not None:
        return static(input, hx, weights, kw)(input, hx, weights, **kw)  # (only native covers these)
    if not may_time(input):  # (in a graph capture, a choice made before still holds)
        capturing = input.is_cuda and TUNE and _capturing()
        chosen = _CHOICE.get(key(input, hx, weights, kw)) if capturing else None
        if chosen is not None and _covers(chosen, input, hx, weights, kw):
            return _run(chosen, None, input, hx, weights, kw)
        return static(input, hx, weights, kw)(input, hx, weights, **kw)
    k = key(input, hx, weights, kw)
    chosen = _CHOICE.get(k)
    if chosen is None:
        cands = {n: fn for n, fn in candidates(input, hx, weights, kw).items() if (n, k) not in _FAILED}
        if len(cands) == 1:
            return _native(input, hx, weights, **kw)
        chosen = tune(k, cands, input, hx, weights, kw)
    elif not _covers(chosen, input, hx, weights, kw):  # (the kind matched, this call does not: e.g. int32 bound)
        return static(input, hx, weights, kw)(input, hx, weights, **kw)
    return _run(chosen, k, input, hx, weights, kw)


def _run(name: str, k: tuple | None, input: Tensor, hx: tuple[Tensor, Tensor], weights: list[Tensor], kw: dict):
    """The call on candidate ``name``; where a kernel's launch fails, :func:`_forget` and the static policy runs
    the call."""
    fn = {"cluster": _cluster, "triton": _triton, "native": _native}[name]
    if name == "native":
        return fn(input, hx, weights, **kw)
    try:
        return fn(input, hx, weights, **kw)
    except (RuntimeError, OSError) as e:
        _forget(name, k if k is not None else key(input, hx, weights, kw), input, weights, kw, e)
        return static(input, hx, weights, kw)(input, hx, weights, **kw)


def _forget(name: str, k: tuple, input: Tensor, weights: list[Tensor], kw: dict, e: Exception) -> None:
    """Candidate ``name`` failed on kind ``k``: a warning; never timed or chosen for that kind again in this process
    (the next call of it is timed without it); a cluster launch is remembered as ``cluster_lstm`` remembers its own,
    so the static policy does not try it again either."""
    warnings.warn(f"impl='auto': the {name} kernels failed ({type(e).__name__}: {str(e)[:200]}); this process runs "
                  "such calls on the other paths (LSTMKIT_ROUTE_TUNE=0 skips the timing)", RuntimeWarning,
                  stacklevel=4)  # fmt: skip
    _FAILED.add((name, k))
    if _CHOICE.get(k) == name:
        del _CHOICE[k]
    if name == "cluster":
        from . import cluster_lstm as cl

        try:
            cl._FAILED.add(cl._key(input, _batch_time(input, kw)[1], weights[1].shape[1]))
        except ValueError:  # (no configuration for it: the static policy cannot send it there either)
            pass


def _repeats(first_ms: float) -> int:
    """Timed calls per candidate: :data:`REPEATS`, fewer where one call is long (at most about a second each)."""
    return max(1, min(REPEATS, int(1000.0 / max(first_ms, 1e-3))))


def tune(k: tuple, cands: dict[str, Callable], input: Tensor, hx: tuple[Tensor, Tensor], weights: list[Tensor],
         kw: dict) -> str:  # fmt: skip
    """Time ``cands`` on this plain call (see the module docstring), remember and return the fastest's name. CPU
    tensors are timed with the host's clock (tests)."""
    diff = [t for t in (input, *hx, *weights) if t.requires_grad] if _grad(input, hx, weights) else []
    names = ("device", "dtype", "T_max", "batch", "input_size", "hidden_size", "num_layers", "bidirectional",
             "batch_first", "bias", "grad", "dropout")  # fmt: skip
    fields = dict(zip(names, k))
    fields["dtype"] = k[1][0]
    return choose(k, {name: partial(fn, input, hx, weights, **kw) for name, fn in cands.items()}, diff,
                  _static_name(input, hx, weights, kw, cands), input.device, fields, required="native",
                  on_fail=lambda name, e: _forget(name, k, input, weights, kw, e))  # fmt: skip


def choose(k: tuple, thunks: dict[str, Callable[[], tuple]], diff: list[Tensor], stat: str, device: torch.device,
           fields: dict, required: str | None = None, on_fail: Callable | None = None) -> str:  # fmt: skip
    """Time ``thunks`` (each runs the call on one path and returns its outputs, the first differentiated with
    respect to ``diff`` where that is not empty), remember the choice for ``k`` and return its name: the fastest
    median, or ``stat`` (the static policy's) unless another is :data:`MARGIN` faster. A thunk that raises is left
    out (``on_fail(name, error)``), except ``required``'s, whose error is the caller's. ``fields`` describe the kind
    (:func:`decisions`, the log). The random number generators are restored afterwards."""
    cuda = device.type == "cuda"
    states = (torch.get_rng_state(), torch.cuda.get_rng_state(device) if cuda else None)
    grad_out = []

    def call(thunk):
        out = thunk()[0]
        if diff:
            if not grad_out:  # (one fixed output gradient for every candidate)
                gen = torch.Generator(device=device).manual_seed(0)
                grad_out.append(torch.randn(out.shape, generator=gen, device=device, dtype=out.dtype))
            torch.autograd.grad(out, diff, grad_out[0], allow_unused=True)

    samples: dict[str, list[float]] = {}
    try:
        for name, thunk in thunks.items():  # untimed first calls: compiles, plan tuning, cuDNN's choice
            try:
                call(thunk)
                samples[name] = [_sample(partial(call, thunk), device)]
            except (RuntimeError, OSError, ValueError) as e:
                if name == required or on_fail is None:
                    raise
                on_fail(name, e)
        if not samples:
            raise RuntimeError(f"every path failed for {fields}")
        reps = _repeats(max(s[0] for s in samples.values()))
        for _ in range(reps - 1):  # interleaved, so a drift of the clocks charges every candidate alike
            for name in samples:
                samples[name].append(_sample(partial(call, thunks[name]), device))
    finally:
        torch.set_rng_state(states[0])
        if cuda:
            torch.cuda.set_rng_state(states[1], device)
    times = {name: statistics.median(v) for name, v in samples.items()}
    best = min(times, key=times.get)
    chosen = stat if stat in times and times[best] > (1.0 - MARGIN) * times[stat] else best
    _CHOICE[k], _TIMES[k] = chosen, (times, stat, fields)
    log.info("impl='auto' timed %s: %s -> %s", ", ".join(f"{a}={b}" for a, b in fields.items()),
             ", ".join(f"{n} {t:.3f} ms" for n, t in times.items()), chosen)  # fmt: skip
    return chosen


def _sample(fn: Callable[[], None], device: torch.device) -> float:
    """Milliseconds of ``fn()`` started on an idle device (CUDA events), or by the host's clock on the CPU."""
    if device.type != "cuda":
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3
    torch.cuda.synchronize(device)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end)
