"""``lstmkit.nn.LSTM``: a drop-in for ``torch.nn.LSTM`` (layers x directions x time), plus ``lengths``.

Same constructor, parameter names (``weight_ih_l0``, ``weight_hh_l0_reverse``, ``weight_hr_l0``, ...),
shapes, forward signature and return values as ``torch.nn.LSTM``, so ``state_dict`` s load both ways
and ``isinstance(m, torch.nn.LSTM)`` holds. Beyond torch, ``forward(input, hx, lengths=...)`` takes
the true length of each padded sequence (any order, any device): padding is masked, padded outputs
are zero and each sequence's final state is the one at its own last valid step.

Variants (``layer_norm``, ``peephole``, ``forget_bias``, ``coupled_input_forget``,
``recurrent_dropout``, ``zoneout``, ``weight_drop``, ``cell_clip``; see ``variants.py`` for the
equations and parameter names) are keyword options; with all of them off the module is plain torch.

Which code runs is decided by ``lstmkit.kernels`` alone: torch's fused operator when it covers the
call (cuDNN / oneDNN, so plain use costs nothing over ``torch.nn.LSTM``); for variants on the CPU a
compiled per-layer kernel (``kernels.cpu_fused``: the time loop in C++) that takes ``gx`` below and
the step's masks; otherwise the readable loop below:

    for layer in layers:                      x: (T, B, I) time-major
        for direction in (forward, reverse):  reverse = each sequence flipped within its length
            gx = x W_ih^T + b_ih + b_hh       one GEMM for all steps: (T, B, 4H)
            for t in 0..T-1:                  cell.lstm_step, masked where t >= length
                h, c = step(gx[t], h, c)
        x = concat(directions) -> dropout -> next layer
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from .. import kernels
from ._checks import check_lstm_args, check_state
from .cell import lstm_step
from .variants import Variants, add_variant_params, init_variant_params, input_projection, sample_masks, variant_step

log = logging.getLogger(__name__)

__all__ = ["LSTM", "reverse_padded"]


def reverse_padded(x: Tensor, lengths: Tensor | None) -> Tensor:
    """Flip each sequence of time-major ``x`` (T, B, ...) within its own length; padding stays put.

    Applying it twice gives ``x`` back.
    """
    if lengths is None:
        return x.flip(0)
    T, B = x.shape[0], x.shape[1]
    t = torch.arange(T, device=x.device).unsqueeze(1)  # (T, 1)
    L = lengths.to(x.device).unsqueeze(0)  # (1, B)
    idx = torch.where(t < L, L - 1 - t, t)  # (T, B): source step of each output step
    idx = idx.view(T, B, *([1] * (x.dim() - 2))).expand_as(x)
    return x.gather(0, idx)


class LSTM(torch.nn.LSTM):
    """Multi-layer LSTM, a drop-in for ``torch.nn.LSTM``.

    Args are those of ``torch.nn.LSTM`` (``input_size, hidden_size, num_layers=1, bias=True,
    batch_first=False, dropout=0.0, bidirectional=False, proj_size=0, device=None, dtype=None``),
    plus ``impl``: ``"auto"`` (the fastest kernel that covers the call), ``"native"`` (torch's fused
    operator or an error), ``"fused"`` (the compiled CPU kernel or an error) or ``"loop"`` (the
    pure-torch loop, for reading and testing), and the variants (keyword-only, all off by default):
    ``layer_norm``, ``peephole``, ``forget_bias``, ``coupled_input_forget``, ``recurrent_dropout``,
    ``zoneout`` (one rate or ``(rate_h, rate_c)``), ``weight_drop``, ``cell_clip``.

    ``forward(input, hx=None, lengths=None, *, masks=None) -> (output, (h_n, c_n))``, shapes as in
    torch; ``masks`` (from :meth:`sample_masks`) fixes the random variants' masks of one call.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        device=None,
        dtype=None,
        *,
        impl: str = "auto",
        layer_norm: bool = False,
        peephole: bool = False,
        forget_bias: float = 0.0,
        coupled_input_forget: bool = False,
        recurrent_dropout: float = 0.0,
        zoneout: float | tuple[float, float] = 0.0,
        weight_drop: float = 0.0,
        cell_clip: float | None = None,
    ) -> None:
        variants = Variants.build(
            layer_norm=layer_norm, peephole=peephole, forget_bias=forget_bias,
            coupled_input_forget=coupled_input_forget, recurrent_dropout=recurrent_dropout, zoneout=zoneout,
            weight_drop=weight_drop, cell_clip=cell_clip, bias=bias,
        )  # fmt: skip
        super().__init__(
            input_size, hidden_size, num_layers, bias=bias, batch_first=batch_first, dropout=dropout,
            bidirectional=bidirectional, proj_size=proj_size, device=device, dtype=dtype,
        )  # fmt: skip
        kernels._check_impl(impl)  # the name only: whether the kernel can run is decided per call, once on its device
        self.impl = impl
        self.variant_config = variants
        factory = {"device": device, "dtype": dtype}
        for sfx in self._suffixes():
            add_variant_params(self, variants, sfx, hidden_size, factory)
            init_variant_params(self, variants, sfx, hidden_size)

    def _suffixes(self) -> list[str]:
        dirs = ("", "_reverse") if self.bidirectional else ("",)
        return [f"_l{k}{d}" for k in range(self.num_layers) for d in dirs]

    def reset_parameters(self) -> None:
        super().reset_parameters()
        v = getattr(self, "variant_config", None)
        if v is not None:  # not during torch's __init__, which calls this before the variants exist
            for sfx in self._suffixes():
                init_variant_params(self, v, sfx, self.hidden_size)

    def variants(self) -> tuple[str, ...]:
        """The features beyond ``torch.nn.LSTM`` that change this call's computation (mode-dependent:
        dropouts are the identity in evaluation; ``forget_bias`` only changes the initial weights)."""
        return self.variant_config.names(self.training)

    def extra_repr(self) -> str:
        s = super().extra_repr()
        if self.impl != "auto":
            s = f"{s}, impl={self.impl!r}"
        extra = self.variant_config.describe()
        return f"{s}, {extra}" if extra else s

    def sample_masks(self, batch: int, steps: int, like: Tensor | None = None, generator=None) -> dict[int, dict]:
        """The random variants' masks for a call on ``batch`` sequences of ``steps`` steps, keyed by
        ``layer * num_directions + direction`` (shapes in ``lstmkit.nn.variants``); empty dicts when
        no mask is needed. Depends on ``self.training``."""
        like = self.weight_ih_l0 if like is None else like
        h_size = self.proj_size if self.proj_size > 0 else self.hidden_size
        dirs = 2 if self.bidirectional else 1
        return {
            k: sample_masks(self.variant_config, self.training, steps, batch, self.hidden_size, h_size, like, generator)
            for k in range(self.num_layers * dirs)
        }

    # -- forward ----------------------------------------------------------------------------

    def forward(
        self, input, hx: tuple[Tensor, Tensor] | None = None, lengths: Tensor | None = None, *, masks=None
    ):
        kernel = kernels.select_lstm(
            self.impl, self.variants(), proj_size=self.proj_size, like=self.weight_ih_l0,
            ragged=lengths is not None or isinstance(input, PackedSequence),
        )  # fmt: skip
        if getattr(kernel, "per_layer", False):  # a kernel for one layer and direction: the loop calls it
            kernel, layer_kernel = None, kernel
        else:
            layer_kernel = None
        if isinstance(input, PackedSequence):
            return self._forward_packed(input, hx, lengths, kernel, layer_kernel, masks)
        is_batched = check_lstm_args(self, input, hx, lengths)
        if not is_batched:
            input = input.unsqueeze(0 if self.batch_first else 1)  # (T, I) -> one sequence
            if hx is not None:
                hx = (hx[0].unsqueeze(1), hx[1].unsqueeze(1))
        if hx is None:
            hx = self._zero_state(input.shape[0] if self.batch_first else input.shape[1], input)
        if kernel is not None:
            self._update_flat_weights()
            out, h, c = kernel(
                input, hx, self._flat_weights, bias=self.bias, num_layers=self.num_layers, dropout=self.dropout,
                training=self.training, bidirectional=self.bidirectional, batch_first=self.batch_first,
                lengths=lengths,
            )  # fmt: skip
        else:
            x = input.transpose(0, 1) if self.batch_first else input  # (T, B, I)
            out, h, c = self._forward_loop(x, hx, lengths, layer_kernel, masks)
            out = out.transpose(0, 1) if self.batch_first else out
        if not is_batched:
            out = out.squeeze(0 if self.batch_first else 1)
            h, c = h.squeeze(1), c.squeeze(1)
        return out, (h, c)

    def _zero_state(self, batch: int, like: Tensor) -> tuple[Tensor, Tensor]:
        layers = self.num_layers * (2 if self.bidirectional else 1)
        h_size = self.proj_size if self.proj_size > 0 else self.hidden_size
        h0 = torch.zeros(layers, batch, h_size, dtype=like.dtype, device=like.device)
        c0 = torch.zeros(layers, batch, self.hidden_size, dtype=like.dtype, device=like.device)
        return h0, c0

    def _forward_packed(self, packed: PackedSequence, hx, lengths, kernel, layer_kernel=None, masks=None):
        """PackedSequence in and out; the loop path unpacks, runs with ``lengths``, and re-packs."""
        if lengths is not None:
            raise ValueError("lengths= goes with a padded tensor; a PackedSequence already carries its lengths")
        data, batch_sizes, sorted_idx, unsorted_idx = packed
        if data.dim() != 2 or data.shape[-1] != self.input_size:
            raise ValueError(f"PackedSequence data must be (total steps, {self.input_size}), got {tuple(data.shape)}")
        batch = int(batch_sizes[0])
        if hx is not None:
            check_state(self, hx, batch, data)
        else:
            hx = self._zero_state(batch, data)
        if kernel is not None:
            self._update_flat_weights()
            if sorted_idx is not None:
                hx = (hx[0].index_select(1, sorted_idx), hx[1].index_select(1, sorted_idx))
            out, h, c = kernels.native.lstm_packed(
                data, batch_sizes, hx, self._flat_weights, bias=self.bias, num_layers=self.num_layers,
                dropout=self.dropout, training=self.training, bidirectional=self.bidirectional,
            )  # fmt: skip
            if unsorted_idx is not None:
                h, c = h.index_select(1, unsorted_idx), c.index_select(1, unsorted_idx)
            return PackedSequence(out, batch_sizes, sorted_idx, unsorted_idx), (h, c)
        x, lens = pad_packed_sequence(packed)  # (T, B, I), original batch order
        out, h, c = self._forward_loop(x, hx, lens, layer_kernel, masks)
        out = pack_padded_sequence(out, lens, enforce_sorted=False)
        return out, (h, c)

    def _forward_loop(self, x: Tensor, hx: tuple[Tensor, Tensor], lengths: Tensor | None, layer_kernel=None,
                      masks=None):  # fmt: skip
        """The readable path: x (T, B, I) time-major -> (output (T, B, D*P), h_n, c_n).

        Per layer and direction: ``gx`` for all steps (one GEMM, + LN with the variant), then either
        ``layer_kernel`` (a compiled time loop for one layer and direction) or one step per time step,
        :func:`lstm_step` (the plain LSTM) or :func:`variant_step`, masked where t >= length.
        """
        T, B = x.shape[0], x.shape[1]
        v = self.variant_config
        plain = not self.variants()
        dirs = 2 if self.bidirectional else 1
        if masks is None:
            masks = {} if plain else self.sample_masks(B, T, like=x)
        mask = None
        if lengths is not None:
            lengths = lengths.to(x.device)
            mask = (torch.arange(T, device=x.device).unsqueeze(1) < lengths.unsqueeze(0)).unsqueeze(-1)  # (T, B, 1)
        h_n, c_n = [], []
        for layer in range(self.num_layers):
            if layer > 0 and self.dropout > 0 and self.training:
                x = F.dropout(x, self.dropout, training=True)
            outs = []
            for d in range(dirs):
                sfx = f"_l{layer}" + ("_reverse" if d == 1 else "")
                k = layer * dirs + d
                m = masks.get(k, {})
                p = {n: getattr(self, n + sfx, None) for n in ("layernorm_hh_weight", "layernorm_c_weight",
                                                              "layernorm_c_bias", "weight_ch")}  # fmt: skip
                w_hh = getattr(self, "weight_hh" + sfx)
                if "weight_hh" in m:
                    w_hh = w_hh * m["weight_hh"]  # DropConnect, one mask per forward
                w_hr = getattr(self, "weight_hr" + sfx) if self.proj_size > 0 else None
                bias = getattr(self, "bias_ih" + sfx) + getattr(self, "bias_hh" + sfx) if self.bias else None
                xd = reverse_padded(x, lengths) if d == 1 else x
                ln_ih = getattr(self, "layernorm_ih_weight" + sfx, None)
                w_ih = getattr(self, "weight_ih" + sfx)
                h, c = hx[0][k], hx[1][k]  # (B, P or H), (B, H)
                y = None
                if layer_kernel is not None:  # the kernel adds bias and LN to x W_ih^T itself
                    gx = input_projection(xd, w_ih, None, None, layer_kernel.linear)  # (T, B, 4H)
                    pk = {**p, "bias": bias, "layernorm_ih_weight": ln_ih}
                    try:
                        y, h, c = layer_kernel(gx, h, c, w_hh, v, pk, m, mask)
                    except kernels.Unsupported as e:  # this call only (e.g. too large): the loop below
                        log.info("%s; running the pure-torch loop for this layer", e)
                if y is None:
                    gx = input_projection(xd, w_ih, bias, ln_ih)  # (T, B, 4H), one GEMM for all steps
                    ys = []
                    for t in range(T):
                        if plain:
                            h_t, c_t = lstm_step(gx[t], h, c, w_hh, w_hr)
                        else:
                            h_t, c_t = variant_step(gx[t], h, c, w_hh, w_hr, v, p, m, t)
                        if mask is not None:
                            h_t = torch.where(mask[t], h_t, h)
                            c_t = torch.where(mask[t], c_t, c)
                        h, c = h_t, c_t
                        ys.append(h)
                    y = torch.stack(ys)  # T x (B, P) -> (T, B, P)
                if mask is not None:
                    y = y * mask
                outs.append(reverse_padded(y, lengths) if d == 1 else y)
                h_n.append(h)
                c_n.append(c)
            x = torch.cat(outs, dim=2) if dirs == 2 else outs[0]  # (T, B, D*P)
        return x, torch.stack(h_n), torch.stack(c_n)
