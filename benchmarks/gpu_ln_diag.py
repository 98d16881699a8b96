"""On a GPU: which launch plan makes the user-path layer-norm case fail (run 5: 2.3e-4 in fp32, 1.7 in bf16,
with the heuristic plans; benchmarks/gpu.py's tuned plans passed).

Each row: gpu_user_path.case with the layer kernel forced to one plan (tiles, exchange of the row statistics).
Run: ``PYTHONPATH=src python benchmarks/gpu_ln_diag.py`` (prints a markdown table).
"""

import sys

import torch

sys.path.insert(0, "benchmarks")
from gpu_user_path import case  # noqa: E402
from lstmkit.kernels import triton_lstm as tk  # noqa: E402

tk.SYNC_CHECK = True
tk.TUNE = False
ORIG = tk.variant_layer


def forced(kw):
    def f(*a, **k):
        return ORIG(*a, **{**k, **kw})

    f.per_layer, f.linear, f.fuses_input_norm, f.__name__ = True, None, True, "variant_layer"
    return f


v = dict(peephole=True, zoneout=(0.1, 0.05), recurrent_dropout=0.25, weight_drop=0.3)
LN4 = {**v, "layer_norm": True}
LN = {"layer_norm": True}
ONE = dict(num_layers=1, bidirectional=False)
plans = [
    {},
    {"ln_sync": True},
    {"mode": "persistent", "tiles": (16, 16)},
    {"mode": "persistent", "tiles": (16, 16), "ln_sync": True},
    {"mode": "persistent", "tiles": (16, 32)},
    {"mode": "persistent", "tiles": (16, 8), "resident": False},
]
rows = [
    ("bf16 LN only, 1 layer, no lengths", LN, torch.bfloat16, False, ONE),
    ("bf16 user path", LN4, torch.bfloat16, True, {}),
    ("fp32 user path", LN4, torch.float32, True, {}),
]
print("| case | plan asked | fwd plan | rel. error |\n|---|---|---|---|", flush=True)
for name, opts, dt, lengths, kw in rows:
    for pk in plans:
        try:
            fp = tk._plan_for(
                "fwd",
                6,
                112,
                dt,
                torch.device("cuda"),
                {k: pk.get(k) for k in ("mode", "tiles", "resident", "poll", "ll", "ln_sync")},
                True,
            )
            tk.variant_layer = forced(pk)
            r = case(name, opts, dt, lengths, tk.variant_layer, "triton", **kw)
            print(f"| {name} | {pk} | {fp!r} | {r['err']:.2e} |", flush=True)
        except Exception as e:
            print(f"| {name} | {pk} | ERROR {type(e).__name__}: {str(e)[:200]} | |", flush=True)
        finally:
            tk.variant_layer = ORIG
