"""Ragged padded batches on the CPU: ``lengths=`` through torch's packed operator vs lstmkit's choice.

torch's packed LSTM backward on the CPU grows with the square of the length when lengths differ;
``impl="auto"`` runs such calls on the compiled masking kernel instead. Forward + backward, best of
``--repeats``, one thread, lengths uniform in [T/2, T]; the padded call (no lengths) for scale.

    python benchmarks/ragged_cpu.py
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import torch

from lstmkit.nn import LSTM


def best_time(m: LSTM, x: torch.Tensor, repeats: int, **kw) -> float:
    ts = []
    for _ in range(repeats):
        m.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        out, (h, c) = m(x, **kw)
        (out.sum() + h.sum() + c.sum()).backward()
        ts.append(time.perf_counter() - t0)
    return min(ts)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=16)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    print("| T | packed (impl='native') s | lstmkit auto s | padded, no lengths s | packed / auto |")
    print("|---|---|---|---|---|")
    for T in (100, 500, 1000):
        native = LSTM(2, args.hidden, impl="native")
        auto = LSTM(2, args.hidden)
        auto.load_state_dict(native.state_dict())
        x = torch.randn(T, args.batch, 2)
        lengths = torch.randint(T // 2, T + 1, (args.batch,))
        t_native = best_time(native, x, args.repeats, lengths=lengths)
        t_auto = best_time(auto, x, args.repeats, lengths=lengths)
        t_pad = best_time(native, x, args.repeats)
        print(f"| {T} | {t_native:.4f} | {t_auto:.4f} | {t_pad:.4f} | {t_native / t_auto:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
