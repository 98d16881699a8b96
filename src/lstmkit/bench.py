"""``lstmkit bench``: time plain and variant LSTMs against ``torch.nn.LSTM`` and a plain PyTorch loop.

For every shape (T, B, I=H, layers) and pass (forward; forward+backward) one run times, alternating
repeat by repeat so that machine noise hits all alike:

    torch            torch.nn.LSTM (cuDNN / oneDNN), the yardstick
    <variant>        lstmkit.nn.LSTM with that variant, impl="auto" (what users get)
    <variant>/loop   the same module with impl="loop": a plain PyTorch loop of the same maths

and reports medians and the ratios ``time / torch time`` and ``time / loop time`` (< 1 is faster).
With ``--memory`` (CPU) each model's peak resident memory in a fresh process (``VmHWM`` after three
training steps, and its growth over the peak before the first step) is measured too, because
torch's allocations are invisible to ``tracemalloc``.

    lstmkit bench                                   # the four standard shapes, CPU
    lstmkit bench --shape 50,16,128,1 --json        # plus a shape of yours, machine-readable
    lstmkit bench --device cuda --variants plain layer_norm
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch

__all__ = ["SHAPES", "VARIANTS", "BenchConfig", "run_bench", "format_table", "peak_memory", "register", "main",
           "routes"]

log = logging.getLogger(__name__)

#: The standard shapes (T, B, I=H, layers) of the speed targets.
SHAPES = [(35, 20, 200, 2), (35, 20, 650, 2), (100, 1, 256, 1), (100, 32, 256, 1)]

#: Named variant configurations: keyword options of ``lstmkit.nn.LSTM``.
VARIANTS: dict[str, dict] = {
    "plain": {},
    "layer_norm": {"layer_norm": True},
    "zoneout+recurrent_dropout": {"zoneout": 0.1, "recurrent_dropout": 0.25},
    "peephole+cifg+clip": {"peephole": True, "coupled_input_forget": True, "cell_clip": 3.0},
    "all": {"layer_norm": True, "peephole": True, "coupled_input_forget": True, "cell_clip": 3.0,
            "recurrent_dropout": 0.25, "zoneout": 0.1, "weight_drop": 0.2},
}  # fmt: skip

DEFAULT_VARIANTS = ["plain", "layer_norm", "zoneout+recurrent_dropout"]


@dataclass
class BenchConfig:
    """What ``lstmkit bench`` runs; each field is a CLI flag of the same name."""

    shapes: list[tuple[int, int, int, int]] = field(default_factory=lambda: list(SHAPES))  # (T, B, I=H, layers)
    variants: list[str] = field(default_factory=lambda: list(DEFAULT_VARIANTS))  # names in VARIANTS
    device: str = "cpu"  # cpu or cuda
    repeats: int = 20  # timed repeats per model; the median is reported
    warmup: int = 3  # untimed repeats first (compilation, allocator, caches)
    threads: int = 0  # torch CPU threads; 0 keeps torch's default
    loop: bool = True  # also time impl="loop" (slow: the plain PyTorch loop)
    memory: bool = False  # also measure peak memory, one subprocess per model (CPU only)
    seed: int = 0  # weights and inputs


def _check(cfg: BenchConfig) -> None:
    unknown = [v for v in cfg.variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    for s in cfg.shapes:
        if len(s) != 4 or min(s) < 1:
            raise ValueError(f"a shape is T,B,I,layers with positive integers, got {s}")
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda but torch sees no GPU; use --device cpu")
    if cfg.device not in ("cpu",) and not cfg.device.startswith("cuda"):
        raise ValueError(f"--device must be cpu or cuda[:k], got {cfg.device!r}")
    if cfg.repeats < 1 or cfg.warmup < 0:
        raise ValueError("--repeats must be >= 1 and --warmup >= 0")


def cpu_name() -> str:
    """The CPU's model name as lscpu reports it."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown CPU"


def _build(kind: str, H: int, layers: int, device: str, seed: int) -> torch.nn.Module:
    """``torch`` -> torch.nn.LSTM; ``<variant>`` / ``<variant>/loop`` -> lstmkit.nn.LSTM."""
    from lstmkit.nn import LSTM

    torch.manual_seed(seed)
    if kind == "torch":
        return torch.nn.LSTM(H, H, layers).to(device)
    name, _, impl = kind.partition("/")
    return LSTM(H, H, layers, impl=impl or "auto", **VARIANTS[name]).to(device)


def _step(m: torch.nn.Module, x: torch.Tensor, backward: bool) -> None:
    if backward:
        m.zero_grad(set_to_none=True)
        out, (h, c) = m(x)
        out.sum().backward()
    else:
        with torch.no_grad():
            m(x)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _time(mods: dict[str, torch.nn.Module], x, backward: bool, cfg: BenchConfig) -> dict[str, float]:
    """Median seconds per call of each module, repeats alternating between the modules."""
    for _ in range(cfg.warmup):
        for m in mods.values():
            _step(m, x, backward)
    times: dict[str, list[float]] = {k: [] for k in mods}
    for _ in range(cfg.repeats):
        for k, m in mods.items():
            _sync(cfg.device)
            t0 = time.perf_counter()
            _step(m, x, backward)
            _sync(cfg.device)
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def _memory_child(spec: str) -> None:
    """In a fresh process: build one model, train a few steps, print its peak RSS (KiB) as JSON."""
    s = json.loads(spec)
    if s["threads"]:
        torch.set_num_threads(s["threads"])
    T, B, H, layers = s["shape"]
    m = _build(s["kind"], H, layers, "cpu", 0)
    x = torch.randn(T, B, H)
    if s["kind"] != "torch" and m.variants():
        from lstmkit.kernels import cpu_fused

        cpu_fused.available()  # load the extension before the baseline
    before = _peak_rss_kib()
    for _ in range(3):
        _step(m, x, True)
    peak = _peak_rss_kib()
    print(json.dumps({"peak_kib": peak, "growth_kib": peak - before}))


def _peak_rss_kib() -> int:
    """This process's peak resident set (KiB): VmHWM on Linux; ``ru_maxrss`` elsewhere (Linux keeps
    ``ru_maxrss`` across exec, so a child would report its parent's size)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def peak_memory(kind: str, shape: tuple[int, int, int, int], threads: int = 0) -> dict[str, float]:
    """Peak resident memory (MiB) of 3 training steps of ``kind`` on ``shape``, in a fresh process."""
    spec = json.dumps({"kind": kind, "shape": list(shape), "threads": threads})
    code = "import sys; from lstmkit.bench import _memory_child; _memory_child(sys.argv[1])"
    out = subprocess.run([sys.executable, "-c", code, spec], capture_output=True, text=True, check=True).stdout
    r = json.loads(out.strip().splitlines()[-1])
    return {"peak_mib": r["peak_kib"] / 1024, "growth_mib": r["growth_kib"] / 1024}


def run_bench(cfg: BenchConfig) -> dict:
    """Run the benchmark; returns ``{"meta": {...}, "rows": [...]}`` (one row per shape, pass, variant)."""
    from lstmkit.train import progress

    _check(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    rows = []
    for shape in progress(cfg.shapes, desc="shapes"):
        T, B, H, layers = shape
        kinds = ["torch"]
        for v in cfg.variants:
            kinds += [v] + ([f"{v}/loop"] if cfg.loop else [])
        mods = {k: _build(k, H, layers, cfg.device, cfg.seed) for k in kinds}
        for k, m in mods.items():  # same weights everywhere torch has them
            if k != "torch":
                m.load_state_dict(mods["torch"].state_dict(), strict=False)
        g = torch.Generator().manual_seed(cfg.seed)
        x = torch.randn(T, B, H, generator=g).to(cfg.device)
        mem = {}
        if cfg.memory and cfg.device == "cpu":
            mem = {k: peak_memory(k, shape, cfg.threads) for k in kinds if not k.endswith("/loop")}
        for backward in (False, True):
            med = _time(mods, x, backward, cfg)
            for v in cfg.variants:
                row = {
                    "shape": list(shape),
                    "pass": "fwd+bwd" if backward else "fwd",
                    "variant": v,
                    "torch_ms": med["torch"] * 1e3,
                    "lstmkit_ms": med[v] * 1e3,
                    "vs_torch": med[v] / med["torch"],
                }
                if cfg.loop:
                    row["loop_ms"] = med[f"{v}/loop"] * 1e3
                    row["vs_loop"] = med[v] / med[f"{v}/loop"]
                    row["loop_vs_torch"] = med[f"{v}/loop"] / med["torch"]
                if mem and backward:
                    row["torch_peak_mib"] = mem["torch"]["peak_mib"]
                    row["lstmkit_peak_mib"] = mem[v]["peak_mib"]
                    row["torch_growth_mib"] = mem["torch"]["growth_mib"]
                    row["lstmkit_growth_mib"] = mem[v]["growth_mib"]
                    row["peak_vs_torch"] = mem[v]["peak_mib"] / mem["torch"]["peak_mib"]
                rows.append(row)
                log.info("%s %s %s: %.2f ms, %.2fx torch", shape, row["pass"], v, row["lstmkit_ms"], row["vs_torch"])
    device = cpu_name() if cfg.device == "cpu" else torch.cuda.get_device_name(cfg.device)
    meta = {
        "date": f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        "machine": device,
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "config": asdict(cfg),
    }
    if cfg.device != "cpu":  # which path impl="auto" timed and chose for each kind of call (kernels/route.py)
        meta["routes"] = routes()
    return {"meta": meta, "rows": rows}


def routes() -> list[dict]:
    """``kernels.route.decisions()`` as plain JSON values: what impl="auto" timed on the GPU and chose."""
    from lstmkit.kernels import route

    def plain(v):
        if isinstance(v, (bool, int, float, str)) or v is None:
            return v
        if isinstance(v, dict):
            return {str(a): plain(b) for a, b in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(b) for b in v]
        return str(v).replace("torch.", "")

    return [plain(d) for d in route.decisions()]


def format_table(result: dict) -> str:
    """A markdown table of :func:`run_bench`'s result (ratios: time / torch time, time / loop time)."""
    rows = result["rows"]
    has_loop = any("loop_ms" in r for r in rows)
    has_mem = any("peak_vs_torch" in r for r in rows)
    head = ["shape (T, B, I=H, layers)", "pass", "variant", "torch.nn.LSTM ms", "lstmkit ms", "x torch"]
    if has_loop:
        head += ["loop ms", "x loop", "loop x torch"]
    if has_mem:
        head += ["peak MiB torch / lstmkit", "x torch (peak)", "growth MiB torch / lstmkit"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [f"({', '.join(map(str, r['shape']))})", r["pass"], r["variant"], f"{r['torch_ms']:.2f}",
                 f"{r['lstmkit_ms']:.2f}", f"{r['vs_torch']:.2f}"]  # fmt: skip
        if has_loop:
            cells += [f"{r['loop_ms']:.2f}", f"{r['vs_loop']:.2f}", f"{r['loop_vs_torch']:.2f}"]
        if has_mem:
            if "peak_vs_torch" in r:
                cells += [f"{r['torch_peak_mib']:.0f} / {r['lstmkit_peak_mib']:.0f}", f"{r['peak_vs_torch']:.2f}",
                          f"{r['torch_growth_mib']:.0f} / {r['lstmkit_growth_mib']:.0f}"]  # fmt: skip
            else:
                cells += ["", "", ""]
        lines.append("| " + " | ".join(cells) + " |")
    m = result["meta"]
    if m.get("routes"):
        lines += ["", "impl='auto' timed these kinds of call on their first call (ms, median) and chose:", ""]
        for d in m["routes"]:
            what = ", ".join(f"{k}={d[k]}" for k in ("kind", "dtype", "T_max", "batch", "hidden_size", "num_layers",
                                                     "grad") if k in d)  # fmt: skip
            times = ", ".join(f"{n} {t:.3f}" for n, t in d["ms"].items())
            lines.append(f"- {what}: {times} -> **{d['chosen']}** (fixed policy: {d['static']})")
    header = (
        f"Date: {m['date']}  \nMachine: {m['machine']}, {m['cpu_count']} CPUs, {m['threads']} torch threads, "
        f"torch {m['torch']}  \nMedians of {m['config']['repeats']} alternating repeats after "
        f"{m['config']['warmup']} warm-up rounds; ratios are time / torch.nn.LSTM time and time / loop time "
        "(< 1 is faster).\n\n"
    )
    return header + "\n".join(lines) + "\n"


def _shape(text: str) -> tuple[int, int, int, int]:
    try:
        parts = tuple(int(p) for p in text.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 4 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"a shape is T,B,I,layers (positive integers), got {text!r}")
    return parts  # type: ignore[return-value]


def _add_arguments(p: argparse.ArgumentParser) -> None:
    d = BenchConfig()
    p.add_argument("--shape", type=_shape, action="append", default=[], metavar="T,B,I,LAYERS",
                   help="an extra shape (repeatable); I = H")  # fmt: skip
    p.add_argument("--no-default-shapes", action="store_true", help=f"skip the standard shapes {SHAPES}")
    p.add_argument("--variants", nargs="+", default=d.variants, choices=list(VARIANTS), help="variants to time")
    p.add_argument("--device", default=d.device, help="cpu or cuda")
    p.add_argument("--repeats", type=int, default=d.repeats, help="timed repeats (median reported)")
    p.add_argument("--warmup", type=int, default=d.warmup, help="untimed repeats first")
    p.add_argument("--threads", type=int, default=d.threads, help="torch CPU threads (0: torch's default)")
    p.add_argument("--no-loop", action="store_true", help="skip the slow impl='loop' timings")
    p.add_argument("--memory", action="store_true", help="also measure peak memory (CPU; a process per model)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--out", default=None, help="also write the table (or JSON with --json) to this file")


def _config(args: argparse.Namespace) -> BenchConfig:
    shapes = ([] if args.no_default_shapes else list(SHAPES)) + list(args.shape)
    if not shapes:
        raise ValueError("no shapes: give --shape T,B,I,LAYERS or drop --no-default-shapes")
    return BenchConfig(shapes=shapes, variants=list(args.variants), device=args.device, repeats=args.repeats,
                       warmup=args.warmup, threads=args.threads, loop=not args.no_loop, memory=args.memory,
                       seed=args.seed)  # fmt: skip


def _run(args: argparse.Namespace) -> int:
    result = run_bench(_config(args))
    argv = getattr(args, "argv", None)  # set by main(); under the lstmkit CLI, the process's own
    result["meta"]["command"] = "lstmkit bench " + " ".join(argv) if argv is not None else "lstmkit " + " ".join(
        sys.argv[1:]
    )
    text = json.dumps(result, indent=2) if args.json else format_table(result)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + ("\n" if args.json else ""))
    return 0


def register(subparsers) -> None:
    """Add ``lstmkit bench`` to the CLI."""
    p = subparsers.add_parser(
        "bench", help="time plain and variant LSTMs against torch.nn.LSTM and a PyTorch loop",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    _add_arguments(p)
    p.set_defaults(func=_run)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m lstmkit.bench``: the same as ``lstmkit bench``."""
    p = argparse.ArgumentParser(prog="lstmkit bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    _add_arguments(p)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = p.parse_args(argv)
    args.argv = argv
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        return _run(args)
    except ValueError as e:
        print(f"lstmkit bench: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
