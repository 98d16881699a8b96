"""Looking inside: gradient flow against the lag, and the LSTM's gates on an adding sequence.

Both unroll the network step by step from the module's own weights (the equations of
``lstmkit.nn.cell``; torch's for the GRU and the tanh RNN) so that every h_t, c_t and gate is a
tensor we can read or differentiate:

    RNN   h_t = tanh(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh)
    GRU   r, z = sigma(.), n = tanh(x W_in^T + b_in + r * (h W_hn^T + b_hn)), h_t = (1 - z) n + z h_{t-1}
    LSTM  i, f, g, o from x_t W_ih^T + b + h_{t-1} W_hh^T; c_t = f c_{t-1} + i g; h_t = o tanh(c_t)

Gradient flow, for sequences of one fixed length T (mean over the batch, lag = T - 1 - t):

* ``dL/dh_t``: the whole derivative of the end-of-sequence loss with respect to h_t;
* ``dh_T/dh_t``: the Frobenius norm of the Jacobian of the last state with respect to h_t (one
  backward pass per hidden unit); for the LSTM also ``dL/dc_t``, the error in the carousel.

In a tanh RNN both fall off exponentially with the lag (vanishing gradients, Hochreiter 1991;
Bengio et al. 1994); in an LSTM whose forget gates stay near 1 they do not.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from . import data
from .models import MemoryNet

__all__ = ["Unrolled", "unroll", "fixed_length", "gradient_flow", "gate_summary", "plot_gradient_flow", "plot_gates"]


@dataclass
class Unrolled:
    """Every step of one forward pass: states and (LSTM) gates, each a list of T tensors (B, H)."""

    h: list[Tensor]
    c: list[Tensor]
    i: list[Tensor]
    f: list[Tensor]
    y: Tensor  # read-out at the last step (B, O)


def unroll(model: MemoryNet, x: Tensor, *, track: bool = False) -> Unrolled:
    """Run ``model`` over ``x`` (T, B, I), all sequences of length T, one step at a time.

    With ``track=True`` every h_t (and c_t) is made a leaf of its own step's graph point via
    ``retain_grad`` so that ``.grad`` holds dL/dh_t after a backward pass.
    """
    rnn = model.rnn
    T, B, _ = x.shape
    H = rnn.hidden_size
    w_ih, w_hh, b_ih, b_hh = rnn.weight_ih_l0, rnn.weight_hh_l0, rnn.bias_ih_l0, rnn.bias_hh_l0
    h = x.new_zeros(B, H)
    c = x.new_zeros(B, H)
    out = Unrolled([], [], [], [], x.new_zeros(0))
    gx = x @ w_ih.t() + b_ih  # (T, B, G*H), one GEMM for all steps
    for t in range(T):
        if model.model == "lstm":
            gates = gx[t] + b_hh + h @ w_hh.t()  # (B, 4H)
            i, f, g, o = gates.chunk(4, dim=1)  # 4 x (B, H)
            i_t, f_t, c_tilde, o_t = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
            c = f_t * c + i_t * c_tilde
            h = o_t * torch.tanh(c)
            out.i.append(i_t)
            out.f.append(f_t)
        elif model.model == "gru":
            gh = h @ w_hh.t() + b_hh  # (B, 3H)
            xr, xz, xn = gx[t].chunk(3, dim=1)
            hr, hz, hn = gh.chunk(3, dim=1)
            r_t = torch.sigmoid(xr + hr)
            z_t = torch.sigmoid(xz + hz)
            n_t = torch.tanh(xn + r_t * hn)
            h = (1 - z_t) * n_t + z_t * h
        else:
            h = torch.tanh(gx[t] + b_hh + h @ w_hh.t())
        if track:
            h.retain_grad()
            if model.model == "lstm":
                c.retain_grad()
        out.h.append(h)
        out.c.append(c)
    out.y = model.out(h)
    return out


def fixed_length(batch: data.Batch, T: int) -> Tensor:
    """Adding sequences cut to exactly T steps (marks lie within T/2, so targets are unchanged); (T, B, 2)."""
    x = batch.x[:T].clone()  # (T, B, 2)
    x[T - 1, :, 1] = -1.0  # the last step's marker
    return x


def gradient_flow(model: MemoryNet, x: Tensor, target: Tensor, *, jacobian: bool = True) -> dict[str, np.ndarray]:
    """Norms against the lag (index 0 = the last step) for adding-problem inputs ``x`` (T, B, 2).

    Returns ``dL_dh`` (T,), ``dhT_dh`` (T,) when ``jacobian``, and ``dL_dc`` (T,) for an LSTM.
    Computed in float64 on a copy of the model, so that norms far below float32's range (a tanh
    RNN's reach 1e-40 within a hundred steps) are still numbers, not zeros.
    """
    model = copy.deepcopy(model).double()
    x, target = x.double(), target.double()
    model.eval()
    with torch.enable_grad():
        run = unroll(model, x, track=True)
        loss = torch.nn.functional.mse_loss(run.y.squeeze(-1), target, reduction="sum")
        loss.backward(retain_graph=jacobian)
        res = {"dL_dh": np.array([float(h.grad.norm(dim=1).mean()) for h in run.h])[::-1].copy()}
        if model.model == "lstm":
            res["dL_dc"] = np.array([float(c.grad.norm(dim=1).mean()) for c in run.c])[::-1].copy()
        if jacobian:
            h_T = run.h[-1]  # (B, H)
            sq = torch.zeros(len(run.h), x.shape[1], dtype=torch.float64)  # (T, B): squared Frobenius norms
            for j in range(h_T.shape[1]):  # row j of every sequence's Jacobian dh_T/dh_t at once
                grads = torch.autograd.grad(h_T[:, j].sum(), run.h, retain_graph=True, allow_unused=True)
                for t, g in enumerate(grads):
                    if g is not None:
                        sq[t] += (g**2).sum(dim=1)
            sq[-1] = float(h_T.shape[1])  # dh_T/dh_T = identity
            res["dhT_dh"] = sq.sqrt().mean(dim=1).numpy()[::-1].copy()
    return res


@torch.no_grad()
def gate_summary(model: MemoryNet, x: Tensor, marks: Tensor) -> dict[str, float]:
    """LSTM gate statistics over adding sequences ``x`` (T, B, 2) with marks (B, 2).

    ``i_at_marks`` / ``i_elsewhere``: the median over steps of the largest input gate of any unit
    (at the marked steps / at all other steps), ``i_elsewhere_max`` its maximum; ``f_unit_min`` /
    ``f_unit_max``: the smallest and largest per-unit mean forget gate.
    """
    if model.model != "lstm":
        raise ValueError("gate statistics are for an LSTM only")
    run = unroll(model, x)
    i_max = torch.stack(run.i).amax(-1)  # (T, B): the most open input gate at each step
    f = torch.stack(run.f)  # (T, B, H)
    at_mark = torch.zeros_like(i_max, dtype=torch.bool)
    rows = torch.arange(x.shape[1])
    at_mark[marks[:, 0], rows] = True
    at_mark[marks[:, 1], rows] = True
    f_unit = f.mean(dim=(0, 1))  # (H,)
    return {"i_at_marks": float(i_max[at_mark].median()), "i_elsewhere": float(i_max[~at_mark].median()),
            "i_elsewhere_max": float(i_max[~at_mark].max()), "f_unit_min": float(f_unit.min()),
            "f_unit_max": float(f_unit.max())}  # fmt: skip


def plot_gradient_flow(curves: dict[str, dict[str, np.ndarray]], path: str | Path, title: str = "") -> Path:
    """Log-scale norms against the lag; ``curves`` maps a label ("LSTM, trained") to :func:`gradient_flow`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharex=True)
    for label, res in curves.items():
        style = "-" if "trained" in label else "--"
        color = {"lstm": "C0", "rnn": "C3", "gru": "C2"}.get(label.split(",")[0].lower(), "C7")
        lag = np.arange(len(res["dL_dh"]))
        pos = lambda v: np.where(v > 0, v, np.nan)  # an exact zero ends the line
        axes[0].semilogy(lag, pos(res["dL_dh"]), style, color=color, label=f"{label}: dL/dh_t")
        if "dL_dc" in res:
            axes[0].semilogy(lag, pos(res["dL_dc"]), style, color="C1", alpha=0.8, label=f"{label}: dL/dc_t")
        if "dhT_dh" in res:
            axes[1].semilogy(lag, pos(res["dhT_dh"]), style, color=color, label=label)
    axes[0].set(xlabel="lag T - t", ylabel="mean norm", title="||dLoss / dh_t|| (and dc_t)")
    axes[1].set(xlabel="lag T - t", title="||dh_T / dh_t||_F")
    for ax in axes:
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def plot_gates(model: MemoryNet, x: Tensor, marks: Tensor, path: str | Path, title: str = "") -> Path:
    """Input and forget gates of an LSTM over one adding sequence ``x`` (T, 1, 2), marks at ``marks`` (2,)."""
    if model.model != "lstm":
        raise ValueError("gates are plotted for an LSTM only")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with torch.no_grad():
        run = unroll(model, x)
    i = torch.stack(run.i)[:, 0].numpy()  # (T, H)
    f = torch.stack(run.f)[:, 0].numpy()
    c = torch.stack(run.c)[:, 0].numpy()
    T = x.shape[0]
    fig, axes = plt.subplots(5, 1, figsize=(10, 9.5), sharex=True, gridspec_kw={"height_ratios": [1, 2, 2, 1.3, 1.5]})
    axes[0].plot(x[:, 0, 0].numpy(), lw=0.6, color="0.5", label="value")
    axes[0].plot(x[:, 0, 1].numpy(), lw=1.0, color="k", label="marker")
    axes[0].set(ylabel="input")
    axes[0].legend(fontsize=7, loc="upper right")
    for ax, g, name in ((axes[1], i, "input gate i_t"), (axes[2], f, "forget gate f_t")):
        im = ax.imshow(g.T, aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
        ax.set(ylabel=f"{name}\nunit")
        fig.colorbar(im, cax=ax.inset_axes([1.01, 0.0, 0.012, 1.0]))  # beside, not shrinking the axes
    axes[3].plot(i.max(axis=1), lw=0.9, color="C0", label="max over units of i_t")
    axes[3].plot(f.min(axis=1), lw=0.9, color="C1", label="min over units of f_t")
    axes[3].set(ylabel="gates", ylim=(-0.05, 1.05))
    axes[3].legend(fontsize=7, loc="center right")
    axes[4].plot(c, lw=0.8)
    axes[4].set(ylabel="cell c_t", xlabel="step t")
    for ax in axes:
        for m in marks.tolist():
            ax.axvline(m, color="r", lw=0.8, ls=":")
        ax.set_xlim(-0.5, T - 0.5)
    axes[0].set_title(title or "LSTM gates on an adding sequence (red: marked steps)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 0.96, 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
