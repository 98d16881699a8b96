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
  whether a backward will follow, training or evaluation, dropout, float32's TF32 settings, and the length
  rounded up to a power of two (a shorter last batch of a similar length reuses the choice);
* each candidate runs once untimed (its compiles, Triton's plan tuning, cuDNN's own choice), then :data:`REPEATS`
  times (the first right after it, the rest in interleaved rounds) on the call's own values: the forward, and where
  the call trains the backward too (``torch.autograd.grad`` on a fixed output gradient, through detached aliases of
  the call's tensors: no ``.grad``, hook or graph of the caller's is touched), timed from an idle GPU with CUDA
  events on the input's device, so a call bound by its host work is timed as the user sees it (latency, not the
  throughput of calls queued behind other work), inside identity saved-tensor hooks (activation checkpointing's
  hooks would otherwise recompute inside the call being timed);
* the fastest median wins, but the static policy's own choice is kept unless another is at least
  :data:`MARGIN` faster (no switch on noise); a candidate that raises while timed is left out, with a warning
  (out of memory: the timing stops and the static choice is kept);
* the timed calls run without dropout, so no random number is drawn: dropout's masks and generators (cuDNN's
  dropout state too) are what they would have been without the timing.

Nothing is timed (the static policy runs) under autocast (torch's operator follows autocast's casts, the kernels
would not), while a CUDA graph is captured (a kind chosen by the eager calls before keeps its path: the graph
rounds as they did), under ``torch.compile``'s tracing, with deterministic algorithms
asked for (``torch.use_deterministic_algorithms`` or ``cudnn.deterministic``: the path would depend on timing
noise), or in evaluation mode with gradients on (cuDNN has no backward there, the kernels have).
``LSTMKIT_ROUTE_TUNE=0`` (read at import: :data:`TUNE`) turns timing off and keeps the static policy
everywhere; set it where a run must be reproducible bit for bit across processes, since the chosen path (and
so the rounding) may differ between machines and runs. :func:`decisions` lists what was timed and chosen; each
choice is logged at INFO on the ``lstmkit.kernels.route`` logger.
"""

from __future__ import annotations

import functools
import logging
import os
import statistics
import time
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from functools import partial

import torch
from torch import Tensor

from . import cuda_autocast_on as _autocast_on

__all__ = ["MARGIN", "REPEATS", "TUNE", "alias", "candidates", "choose", "chosen", "decisions", "key",
           "load_state_dict", "lstm", "may_time", "reset", "state_dict", "static", "tune", "variant_fields",
           "variant_key"]  # fmt: skip

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
#: (name, kind): a candidate that failed in this process, never timed or chosen again there: a launch failure under
#: :func:`_coarse`'s kind (every length and layout), a disagreement with the reference under the exact kind
_FAILED: set[tuple[str, tuple]] = set()


def reset() -> None:
    """Forget every choice (tests; a process whose GPU work changed)."""
    _CHOICE.clear()
    _TIMES.clear()
    _FAILED.clear()


#: the layout of :func:`state_dict` (its keys are :func:`key`'s and :func:`variant_key`'s tuples)
STATE_VERSION = 1


def state_dict() -> dict:
    """The choices made in this process, for a checkpoint: a resumed run then keeps the paths (and so the rounding
    and the dropout draws) of the run it continues instead of timing again (``lstmkit.train`` saves it)."""
    return {"version": STATE_VERSION, "choices": dict(_CHOICE)}


def load_state_dict(state: dict) -> None:
    """Take the choices of :func:`state_dict`. A CUDA device in a key becomes the current device (each rank of a
    resumed DDP run takes rank 0's choices for its own GPU); another layout's keys are ignored (timed again). A kind
    whose path cannot run here, e.g. on another GPU, still falls back per call (:func:`lstm` checks coverage)."""
    if state.get("version") != STATE_VERSION:
        return
    here = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else None
    for k, name in state.get("choices", {}).items():
        if not isinstance(k, tuple) or name not in ("cluster", "triton", "native"):
            continue
        at = 1 if k[:1] == ("variant layer",) else 0
        if len(k) != (10 if at else len(_KEY_FIELDS)) or not isinstance(k[at], torch.device):
            continue
        if here is not None and k[at].type == "cuda":
            k = k[:at] + (here,) + k[at + 1:]
        _CHOICE[k] = name


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
            kw["bias"], _grad(input, hx, weights), bool(kw["training"]), bool(kw["training"] and kw["dropout"] > 0),
            _fp32_settings() if input.dtype == torch.float32 else None)  # fmt: skip


#: :func:`key`'s fields by name (:func:`decisions`)
_KEY_FIELDS = ("device", "dtype", "T_max", "batch", "input_size", "hidden_size", "num_layers", "bidirectional",
               "batch_first", "bias", "grad", "training", "dropout", "fp32_settings")  # fmt: skip


def _fp32_settings() -> tuple:
    """The float32 settings the paths' speed depends on: TF32 in matmuls, in cuDNN and in cuDNN's RNNs. torch >= 2.9
    has them as ``fp32_precision`` (and raises when a legacy ``allow_tf32`` is read after the new API was used, so
    the legacy flags are read only where the new API is missing)."""
    if _NEW_TF32_API:
        return (_MATMUL.fp32_precision, getattr(_CUDNN, "fp32_precision", None),
                getattr(_CUDNN_RNN, "fp32_precision", None))  # fmt: skip
    return (_MATMUL.allow_tf32, _CUDNN.allow_tf32)  # pragma: no cover - torch < 2.9


# (looked up once: each lookup through torch.backends costs about a microsecond a call)
_MATMUL, _CUDNN = torch.backends.cuda.matmul, torch.backends.cudnn
_CUDNN_RNN = getattr(_CUDNN, "rnn", None)
_NEW_TF32_API = hasattr(_MATMUL, "fp32_precision")


def _coarse(k: tuple) -> tuple:
    """What a failed path is remembered under (:data:`_FAILED`): device, dtypes, batch, hidden size, a backward
    or not (a path that failed there fails at another length or layout too)."""
    return (k[0], k[1], k[3], k[5], k[10]) if k[0] != "variant layer" else k[:3] + k[4:6] + k[8:9]


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
    """Whether this call may be timed (:func:`_why_not_time`)."""
    return _why_not_time(input) is None


def _why_not_time(input: Tensor) -> str | None:
    """Why this call may not be timed, or None: not a CUDA tensor or timing off, compiler tracing (asked first: the
    other questions would break a ``fullgraph`` trace), autocast, deterministic algorithms, graph capture."""
    if not (TUNE and input.is_cuda):
        return "off"
    compiling = getattr(getattr(torch, "compiler", None), "is_compiling", None)
    if compiling is not None and compiling():
        return "compiling"
    if _autocast_on():
        return "autocast"
    if torch.are_deterministic_algorithms_enabled() or torch.backends.cudnn.deterministic:
        return "deterministic"
    return "capturing" if _capturing() else None


def _capturing() -> bool:
    """Whether the current CUDA stream is capturing a graph (asked only for CUDA tensors)."""
    return torch.cuda.is_current_stream_capturing()


def lstm(input: Tensor, hx: tuple[Tensor, Tensor], weights: list[Tensor], **kw):
    """``native.lstm``'s interface: the call on the path chosen for its kind (:func:`key`), timing the candidates
    the first time; what ``impl="auto"`` runs for a plain LSTM on a GPU (see the module docstring)."""
    if (not isinstance(input, Tensor) or input.dim() != 3 or kw.get("lengths") is not None
            or (not kw["training"] and _grad(input, hx, weights))):  # fmt: skip
        return static(input, hx, weights, kw)(input, hx, weights, **kw)
    why = _why_not_time(input)
    if why is not None:  # (a graph captures the path the eager calls before it were timed on and ran: same rounding)
        k = key(input, hx, weights, kw) if why == "capturing" else None
        chosen = _CHOICE.get(k) if k is not None else None
        if chosen is not None and _covers(chosen, input, hx, weights, kw):
            return _run(chosen, k, input, hx, weights, kw)
        return static(input, hx, weights, kw)(input, hx, weights, **kw)
    k = key(input, hx, weights, kw)
    chosen = _CHOICE.get(k)
    if chosen is None:
        cands = {n: fn for n, fn in candidates(input, hx, weights, kw).items()
                 if (n, _coarse(k)) not in _FAILED and (n, k) not in _FAILED}  # fmt: skip
        if len(cands) == 1:
            _CHOICE[k] = "native"  # (remembered: the candidates are not asked again)
            return _native(input, hx, weights, **kw)
        chosen = tune(k, cands, input, hx, weights, kw)
    elif not _covers(chosen, input, hx, weights, kw):  # (the kind matched, this call does not: e.g. int32 bound)
        return static(input, hx, weights, kw)(input, hx, weights, **kw)
    return _run(chosen, k, input, hx, weights, kw)


def _run(name: str, k: tuple, input: Tensor, hx: tuple[Tensor, Tensor], weights: list[Tensor], kw: dict):
    """The call on candidate ``name``; where a kernel's launch fails, :func:`_forget` and cuDNN runs the call (the
    static policy might send it to the path that just failed). Out of memory is the caller's error."""
    if name == "native":
        return _native(input, hx, weights, **kw)
    try:
        return {"cluster": _cluster, "triton": _triton}[name](input, hx, weights, **kw)
    except _OOM:
        raise
    except _failures() as e:  # (a new Triton specialisation compiles here: its errors are not RuntimeErrors)
        _forget(name, k, input, weights, kw, e)
        return _native(input, hx, weights, **kw)


@functools.cache
def _failures() -> tuple[type[BaseException], ...]:
    """What a path's failure raises: torch's and the driver's RuntimeError, OSError (libraries), ValueError
    (``kernels.Unsupported``) and Triton's own errors (``TritonError``: compile errors, out of resources). Not
    any Exception: activation checkpointing stops its recomputation with an exception of its own, which must pass."""
    try:
        from triton.errors import TritonError
    except ImportError:  # (no triton, or one without triton.errors)
        return (RuntimeError, OSError, ValueError)
    return (RuntimeError, OSError, ValueError, TritonError)


#: torch's out-of-memory error (a RuntimeError; torch < 2.5 has it under torch.cuda only)
_OOM = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError


def _forget(name: str, k: tuple, input: Tensor, weights: list[Tensor], kw: dict, e: BaseException) -> None:
    """Candidate ``name`` failed on kind ``k``: a warning; never timed or chosen again in this process for the kinds
    :func:`_coarse` groups with ``k``; a cluster launch is remembered as ``cluster_lstm`` remembers its own, so the
    static policy does not try it again either."""
    warnings.warn(f"impl='auto': the {name} kernels failed ({type(e).__name__}: {str(e)[:200]}); this process runs "
                  "such calls on the other paths (LSTMKIT_ROUTE_TUNE=0 skips the timing)", RuntimeWarning,
                  stacklevel=4)  # fmt: skip
    if isinstance(e, Disagreement):  # (rounding apart depends on the length and the weights: this kind only, and
        _FAILED.add((name, k))  # not cluster_lstm's record, which is for launches that fail)
        if _CHOICE.get(k) == name:
            del _CHOICE[k]
        return
    _FAILED.add((name, _coarse(k)))
    for kk in [kk for kk, v in _CHOICE.items() if v == name and _coarse(kk) == _coarse(k)]:
        del _CHOICE[kk]
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
    backward = _grad(input, hx, weights) and kw["training"]
    x, h, w = alias(input, backward), tuple(alias(t, backward) for t in hx), [alias(t, backward) for t in weights]
    tkw = {**kw, "dropout": 0.0}  # (no random number drawn: see the module docstring)
    fields = dict(zip(_KEY_FIELDS, k))
    fields["dtype"] = k[1][0]
    return choose(k, {name: partial(fn, x, h, w, **tkw) for name, fn in cands.items()},
                  [t for t in (x, *h, *w) if t.requires_grad] if backward else [],
                  _static_name(input, hx, weights, kw, cands), input.device, fields, required="native",
                  on_fail=lambda name, e: _forget(name, k, input, weights, kw, e), reference="native")  # fmt: skip


def alias(t: Tensor | None, grad: bool) -> Tensor | None:
    """``t``'s values as a leaf of its own (the same storage): timing differentiates it without touching the
    caller's graph, hooks or ``.grad``."""
    if t is None:
        return None
    return t.detach().requires_grad_(grad and t.requires_grad)


def choose(k: tuple, thunks: dict[str, Callable[[], tuple]], diff: list[Tensor], stat: str, device: torch.device,
           fields: dict, required: str | None = None, on_fail: Callable | None = None,
           reference: str | None = None) -> str:  # fmt: skip
    """Time ``thunks`` (each runs the call on one path and returns its outputs, the first differentiated with respect to
    ``diff`` where that is not empty: leaves of the timing's own, :func:`alias`), remember the choice for ``k`` and
    return its name: the fastest median, or ``stat`` (the static policy's) unless another is :data:`MARGIN` faster.
    A thunk that raises is left out (``on_fail(name, error)``), except ``required``'s, whose error is the caller's,
    as is the reference's (else the last) error when every thunk raised. So is a thunk whose first output differs
    from ``reference``'s (run first) by more than :data:`AGREE` (a kernel the compiler or driver got wrong on this
    machine must not win on speed). Out of memory stops the timing: ``stat`` is kept untimed. ``fields`` describe
    the kind (:func:`decisions`, the log; the differences from the reference are added as ``rel_diff``)."""
    cuda = device.type == "cuda"
    rng = (torch.get_rng_state(), torch.cuda.get_rng_state(device) if cuda else None)
    grad_out = []
    if reference in thunks:  # (first: every other path is compared with its output)
        thunks = {reference: thunks[reference], **{n: t for n, t in thunks.items() if n != reference}}
    ref_out: list[Tensor] = []
    rel_diff: dict[str, float] = {}

    def call(thunk, check: str | None = None):
        with torch.enable_grad() if diff else torch.no_grad():
            out = thunk()[0]
        grads = ()
        if diff:
            if not grad_out:  # (one fixed output gradient for every candidate)
                gen = torch.Generator(device=device).manual_seed(0)
                grad_out.append(torch.randn(out.shape, generator=gen, device=device, dtype=out.dtype))
            grads = torch.autograd.grad(out, diff, grad_out[0], allow_unused=True)
        if check is not None:  # (the output and, where timed, every gradient)
            _agree(check, [out, *grads], reference, ref_out, rel_diff)

    samples: dict[str, list[float]] | None = {}
    errors: dict[str, Exception] = {}

    def failed(name: str, e: Exception) -> None:
        if name == required or on_fail is None:
            raise e
        errors[name] = e
        on_fail(name, e)

    # the caller's saved-tensor hooks (activation checkpointing's, which drop what a forward saves and recompute it
    # in the backward, re-entering this call) must not see the timing's own forward and backward: identity hooks
    with torch.cuda.device(device) if cuda else nullcontext(), torch.autograd.graph.saved_tensors_hooks(_same, _same):
        try:
            for name, thunk in thunks.items():  # untimed first calls: compiles, plan tuning, cuDNN's choice
                try:
                    call(thunk, check=name if reference is not None else None)
                    samples[name] = [_sample(partial(call, thunk), device)]
                except _OOM:
                    samples = None
                    break
                except _failures() as e:
                    failed(name, e)
            ref_out.clear()  # (compared: not needed through the timed rounds)
            reps = _repeats(max(v[0] for v in samples.values())) if samples else 0
            for _ in range(reps - 1):  # interleaved, so a drift of the clocks charges every candidate alike
                for name in list(samples):
                    try:
                        samples[name].append(_sample(partial(call, thunks[name]), device))
                    except _OOM:
                        samples = None
                        break
                    except _failures() as e:
                        del samples[name]
                        failed(name, e)
                if samples is None:
                    break
        finally:
            grad_out.clear()
            ref_out.clear()
            _restore_rng(rng, device)
    if samples is None:  # (the static choice, unless it failed or disagreed before the memory ran out)
        keep = next((n for n in (stat, reference, required) if n is not None and n in thunks and n not in errors), stat)
        log.warning("impl='auto': out of memory while timing the paths for %s; keeping %s untimed", fields, keep)
        _CHOICE[k] = keep
        return keep
    if not samples:  # (the reference's error where it failed: kernels.Unsupported sends a module to its loop)
        raise errors.get(reference) or next(reversed(errors.values()))
    times = {name: statistics.median(v) for name, v in samples.items()}
    best = min(times, key=times.get)
    chosen = stat if stat in times and times[best] > (1.0 - MARGIN) * times[stat] else best
    if rel_diff:
        fields = {**fields, "rel_diff": rel_diff}
    _CHOICE[k], _TIMES[k] = chosen, (times, stat, fields)
    log.info("impl='auto' timed %s: %s -> %s", ", ".join(f"{a}={b}" for a, b in fields.items()),
             ", ".join(f"{n} {t:.3f} ms" for n, t in times.items()), chosen)  # fmt: skip
    return chosen


#: how far (||out - ref|| / ||ref||, the first output) a path may land from the reference path on the call being
#: timed and still be chosen: two correct paths differ by their roundings (runs 5-7: within 1e-2 of float64 in
#: 16 bits, 1e-5 in float32; cuDNN's float32 RNN may use TF32, 1e-3), so these bounds catch a wrong kernel (a
#: miscompiled or unsupported configuration lands O(1) away), not rounding; a long chaotic layer-norm module can
#: exceed them where two correct paths round apart (run 7: torch's own float32 loop 25% from float64 over 256
#: steps at gains 1): the path is then left out (a warning), never a wrong result
AGREE = {torch.float64: 1e-6, torch.float32: 2e-2, torch.bfloat16: 0.25, torch.float16: 0.25}


class Disagreement(ValueError):
    """A path's output or gradients are past :data:`AGREE` from the reference path's on the call being timed."""


def _agree(name: str, got: list, reference: str | None, ref_out: list, rel_diff: dict) -> None:
    """The reference's output and gradients are kept; another path's are compared with them, each on its own: a
    ValueError (the path is left out) where one is past :data:`AGREE`, or not finite where the reference's is."""
    got = [None if t is None else t.detach() for t in got]
    if name == reference:
        ref_out.extend(got)
        return
    if not ref_out:
        return  # (the reference itself failed: nothing to compare with)
    worst, bound = 0.0, AGREE.get(ref_out[0].dtype, 0.25)
    for t, ref in zip(got, ref_out):
        if t is None or ref is None:  # (a gradient one path gives and the other does not: wrong where it is not 0)
            other = ref if t is None else t
            if other is not None and float(other.float().norm()) != 0.0:
                worst = max(worst, 1.0)
            continue
        ref = ref.float()
        scale = float(ref.norm())
        if scale == 0.0:  # (no scale to be relative to: only finiteness is asked)
            worst = worst if bool(torch.isfinite(t).all()) else float("inf")
            continue
        if scale != scale or scale == float("inf"):
            continue  # (beyond the dtype's range on the reference path too: nothing to hold the other to)
        d = float((t.float() - ref).norm()) / scale
        worst = max(worst, d) if d == d else float("inf")  # (NaN: not finite)
    rel_diff[name] = worst
    if worst > bound:
        raise Disagreement(f"its output or gradients differ from the {reference} path's by {worst:.3g} (relative; "
                         f"bound {bound}): a kernel wrong on this machine is never chosen")


def _same(t):
    return t


def _restore_rng(rng: tuple, device: torch.device) -> None:
    """Put the generators back only where a path drew from them (none should: the timed calls have no dropout);
    setting CUDA's unchanged state would reset cuDNN's dropout state (``set_rng_state`` reseeds it)."""
    if not torch.equal(torch.get_rng_state(), rng[0]):
        torch.set_rng_state(rng[0])
    if rng[1] is not None and not torch.equal(torch.cuda.get_rng_state(device), rng[1]):
        torch.cuda.set_rng_state(rng[1], device)


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
