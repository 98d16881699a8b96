"""How far torch's own bfloat16 layer-norm LSTM is from float64, step by step (no GPU needed).

Why the user-path check of layer norm in bf16 (benchmarks/gpu_user_path.py) compares the kernels with torch's
own error in the same dtype: at its initialisation a layer-norm LSTM amplifies rounding from step to step.
Two tables, both through lstmkit.nn.LSTM(impl="loop") in bf16 against the same module in float64:
the output's relative error at each step of a one-layer module (B=6, H=100, T=5), and the worst relative
error over output, states and every gradient of gpu_user_path.py's layer-norm case (two layers, both
directions, lengths=, the four other variants) at T=10 and T=40.

    PYTHONPATH=src python benchmarks/ln_bf16_rounding.py --out docs/gpu_runs/ln-bf16-rounding-DATE.md   # seconds
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import gpu_user_path  # noqa: E402
from lstmkit.nn import LSTM  # noqa: E402


def per_step(T: int = 5, B: int = 6, H: int = 100) -> list[float]:
    torch.manual_seed(0)
    kw = dict(num_layers=1, batch_first=True, layer_norm=True, impl="loop")
    ref = LSTM(H, H, **kw, dtype=torch.float64).train()
    m = LSTM(H, H, **kw, dtype=torch.bfloat16).train()
    m.load_state_dict(ref.state_dict())
    x = torch.randn(B, T, H, dtype=torch.float64)
    with torch.no_grad():
        want, _ = ref(x)
        got, _ = m(x.to(torch.bfloat16))
    return ((got.double() - want).norm(dim=(0, 2)) / want.norm(dim=(0, 2))).tolist()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    gpu_user_path.DEVICE = "cpu"
    lines = ["# torch's bf16 layer-norm LSTM against float64", "",
             "Command: `python benchmarks/ln_bf16_rounding.py`  ",
             f"Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, torch {torch.__version__}, "
             "CPU", "", "One layer, B=6, H=100: relative error of the output at each step", "",
             "| step | rel. error |", "|---|---|"]  # fmt: skip
    lines += [f"| {t} | {e:.2e} |" for t, e in enumerate(per_step())]
    lines += ["", "gpu_user_path.py's layer-norm case through the loop: worst over output, states and gradients", "",
              "| T | rel. error |", "|---|---|"]  # fmt: skip
    v = dict(peephole=True, zoneout=(0.1, 0.05), recurrent_dropout=0.25, weight_drop=0.3, layer_norm=True)
    for T in (10, 40):
        r = gpu_user_path.case("ln", v, torch.bfloat16, True, None, "loop", T=T)
        lines.append(f"| {T} | {r['err']:.2e} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
