"""LSTM variants: lstmkit.nn (every path) against the NumPy reference in float64, and their edges.

Each variant alone and all together, composed with layers, directions, projection and lengths: the
module and ``lstmkit.reference.stack_forward/stack_backward`` get the same weights and the same masks
(``LSTM.sample_masks``), and must agree on outputs, final states and all gradients within REF_ATOL.
With a variant off, results are bit-identical to torch.nn.LSTM's.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from lstmkit import reference as ref
from lstmkit.nn import LSTM, LSTMCell

REF_ATOL = 1e-10  # lstmkit vs the NumPy reference, float64

VARIANTS = {
    "layer_norm": dict(layer_norm=True),
    "peephole": dict(peephole=True),
    "cifg": dict(coupled_input_forget=True),
    "cell_clip": dict(cell_clip=0.3),
    "recurrent_dropout": dict(recurrent_dropout=0.4),
    "zoneout": dict(zoneout=(0.3, 0.5)),
    "weight_drop": dict(weight_drop=0.5),
    "all": dict(layer_norm=True, peephole=True, coupled_input_forget=True, cell_clip=0.5, recurrent_dropout=0.3,
                zoneout=(0.2, 0.4), weight_drop=0.3, forget_bias=1.0),
}  # fmt: skip

# (T, B, I, H, layers, bidirectional, proj, lengths, seed): small shapes that cover the compositions.
SHAPES = [
    (5, 3, 4, 5, 1, False, 0, False, 0),
    (4, 2, 3, 4, 2, True, 0, True, 1),
    (6, 3, 2, 5, 2, False, 3, True, 2),
    (3, 4, 3, 3, 1, True, 2, False, 3),
]


def make(I, H, layers, bidirectional, proj, impl, seed, **variants):
    torch.manual_seed(seed)
    m = LSTM(I, H, layers, bidirectional=bidirectional, proj_size=proj, dtype=torch.float64, impl=impl, **variants)
    with torch.no_grad():  # move LN gains/biases and peepholes away from their trivial init
        for name, p in m.named_parameters():
            if name.startswith(("layernorm", "weight_ch")):
                p.add_(torch.randn(p.shape, dtype=p.dtype) * 0.3)
    return m


def to_np_masks(masks):
    return {k: {n: t.numpy() for n, t in d.items()} for k, d in masks.items()}


def run_module(m, x, h0, c0, lengths, masks):
    x = x.clone().requires_grad_()
    h0, c0 = h0.clone().requires_grad_(), c0.clone().requires_grad_()
    m.zero_grad()
    out, (h, c) = m(x, (h0, c0), lengths=lengths, masks=masks)
    g = torch.Generator().manual_seed(11)
    wy = torch.randn(out.shape, dtype=out.dtype, generator=g)
    wh = torch.randn(h.shape, dtype=h.dtype, generator=g)
    wc = torch.randn(c.shape, dtype=c.dtype, generator=g)
    ((out * wy).sum() + (h * wh).sum() + (c * wc).sum()).backward()
    grads = {n: p.grad.clone() if p.grad is not None else torch.zeros_like(p) for n, p in m.named_parameters()}
    return out.detach(), h.detach(), c.detach(), grads, (x.grad, h0.grad, c0.grad), (wy, wh, wc)


def check_against_reference(m, T, B, seed, lengths_on, variants):
    g = torch.Generator().manual_seed(seed + 100)
    P = m.proj_size or m.hidden_size
    L = m.num_layers * (2 if m.bidirectional else 1)
    x = torch.randn(T, B, m.input_size, dtype=torch.float64, generator=g)
    h0 = torch.randn(L, B, P, dtype=torch.float64, generator=g)
    c0 = torch.randn(L, B, m.hidden_size, dtype=torch.float64, generator=g)
    lengths = torch.randint(1, T + 1, (B,), generator=g) if lengths_on else None
    masks = m.sample_masks(B, T, generator=g)
    out, h, c, grads, (dx, dh0, dc0), (wy, wh, wc) = run_module(m, x, h0, c0, lengths, masks)
    sd = {k: v.detach().numpy() for k, v in m.state_dict().items()}
    opts = {k: variants[k] for k in ("layer_norm", "peephole", "coupled_input_forget", "cell_clip") if k in variants}
    y_r, (h_r, c_r), cache = ref.stack_forward(
        x.numpy(), (h0.numpy(), c0.numpy()), sd, m.num_layers, m.bidirectional,
        None if lengths is None else lengths.numpy(), to_np_masks(masks), **opts,
    )  # fmt: skip
    np.testing.assert_allclose(out.numpy(), y_r, atol=REF_ATOL, rtol=0)
    np.testing.assert_allclose(h.numpy(), h_r, atol=REF_ATOL, rtol=0)
    np.testing.assert_allclose(c.numpy(), c_r, atol=REF_ATOL, rtol=0)
    g_r, dx_r, (dh0_r, dc0_r) = ref.stack_backward(wy.numpy(), cache, (wh.numpy(), wc.numpy()))
    np.testing.assert_allclose(dx.numpy(), dx_r, atol=REF_ATOL, rtol=0)
    np.testing.assert_allclose(dh0.numpy(), dh0_r, atol=REF_ATOL, rtol=0)
    np.testing.assert_allclose(dc0.numpy(), dc0_r, atol=REF_ATOL, rtol=0)
    assert set(grads) == set(g_r)
    for name, gr in g_r.items():
        np.testing.assert_allclose(grads[name].numpy(), gr, atol=REF_ATOL, rtol=0, err_msg=name)


@pytest.mark.parametrize("impl", ["auto", "loop"])
@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "T{}B{}I{}H{}L{}bi{}P{}len{}".format(*s[:8]))
def test_matches_reference_in_training(impl, variant, shape):
    T, B, I, H, layers, bi, proj, lengths_on, seed = shape
    m = make(I, H, layers, bi, proj, impl, seed, **VARIANTS[variant])
    m.train()
    check_against_reference(m, T, B, seed, lengths_on, VARIANTS[variant])


@pytest.mark.parametrize("impl", ["auto", "loop"])
def test_zoneout_evaluation_uses_the_expectation(impl):
    m = make(3, 4, 2, True, 0, impl, 5, layer_norm=True, zoneout=(0.25, 0.6), recurrent_dropout=0.5, weight_drop=0.5)
    m.eval()
    masks = m.sample_masks(2, 5)
    assert set(masks[0]) == {"zoneout_h", "zoneout_c"}  # dropouts are the identity in evaluation
    assert torch.all(masks[0]["zoneout_h"] == 0.25) and torch.all(masks[0]["zoneout_c"] == 0.6)
    check_against_reference(m, 5, 2, 5, True, dict(layer_norm=True))


def test_masks_shapes_and_statistics():
    m = LSTM(3, 8, 2, bidirectional=True, proj_size=4, recurrent_dropout=0.5, zoneout=(0.1, 0.9), weight_drop=0.25)
    masks = m.sample_masks(64, 50, generator=torch.Generator().manual_seed(0))
    assert sorted(masks) == [0, 1, 2, 3]
    mk = masks[3]
    assert mk["recurrent"].shape == (64, 4) and set(mk["recurrent"].unique().tolist()) <= {0.0, 2.0}
    assert mk["weight_hh"].shape == (32, 4)
    assert {round(v, 5) for v in mk["weight_hh"].unique().tolist()} <= {0.0, 1.33333}
    assert mk["zoneout_h"].shape == (50, 64, 4) and abs(mk["zoneout_h"].mean().item() - 0.1) < 0.03
    assert mk["zoneout_c"].shape == (50, 64, 8) and abs(mk["zoneout_c"].mean().item() - 0.9) < 0.03


@pytest.mark.parametrize(
    "off",
    [dict(layer_norm=False), dict(peephole=False), dict(coupled_input_forget=False), dict(recurrent_dropout=0.0),
     dict(zoneout=0.0), dict(weight_drop=0.0), dict(cell_clip=None), dict(forget_bias=0.0)],
)  # fmt: skip
@pytest.mark.parametrize("impl", ["auto", "loop"])
def test_variant_off_is_bit_identical_to_plain(off, impl):
    torch.manual_seed(0)
    theirs = torch.nn.LSTM(3, 5, 2, bidirectional=True, dtype=torch.float64)
    plain = LSTM(3, 5, 2, bidirectional=True, dtype=torch.float64, impl=impl)
    ours = LSTM(3, 5, 2, bidirectional=True, dtype=torch.float64, impl=impl, **off)
    assert ours.variants() == ()
    assert set(ours.state_dict()) == set(theirs.state_dict())
    plain.load_state_dict(theirs.state_dict())
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    results = []
    for m in (theirs if impl == "auto" else plain, ours):
        xi = x.clone().requires_grad_()
        out, (h, c) = m(xi)
        (out.sum() + h.sum() + c.sum()).backward()
        results.append([out, h, c, xi.grad] + [p.grad for p in m.parameters()])
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_dropout_variants_in_evaluation_run_torchs_operator_bit_identically():
    torch.manual_seed(0)
    theirs = torch.nn.LSTM(3, 5, 2)
    ours = LSTM(3, 5, 2, recurrent_dropout=0.5, weight_drop=0.5)
    ours.load_state_dict(theirs.state_dict())
    ours.eval()
    assert ours.variants() == ()
    x = torch.randn(6, 2, 3)
    with torch.no_grad():
        assert torch.equal(ours(x)[0], theirs(x)[0])


def test_forget_bias_sets_the_initial_forget_gate_bias():
    torch.manual_seed(3)
    theirs = torch.nn.LSTM(3, 4, 2, bidirectional=True)
    torch.manual_seed(3)
    ours = LSTM(3, 4, 2, bidirectional=True, forget_bias=1.5)
    assert ours.variants() == ()  # an initialisation, not a computation: the native operator still runs
    for name, p in theirs.named_parameters():
        q = getattr(ours, name)
        if name.startswith("bias_ih"):
            assert torch.allclose(q[4:8], p[4:8] + 1.5) and torch.equal(q[:4], p[:4]) and torch.equal(q[8:], p[8:])
        else:
            assert torch.equal(q, p)
    ours.reset_parameters()
    assert (ours.bias_ih_l0[4:8] - ours.bias_hh_l0[4:8]).min() > 1.5 - 2 / 2  # U(-1/2, 1/2) each, + 1.5
    p = ref.init_lstm_params(3, 4, 2, forget_bias=1.5)
    assert np.all(p[5] == 1.5) and np.all(p[2] == 0.0)


def test_parameter_names_and_state_dict_round_trip():
    m = LSTM(3, 4, 2, bidirectional=True, layer_norm=True, peephole=True)
    sd = m.state_dict()
    for sfx in ("_l0", "_l1_reverse"):
        assert sd["layernorm_ih_weight" + sfx].shape == (16,)
        assert sd["layernorm_hh_weight" + sfx].shape == (16,)
        assert sd["layernorm_c_weight" + sfx].shape == (4,)
        assert sd["layernorm_c_bias" + sfx].shape == (4,)
        assert sd["weight_ch" + sfx].shape == (12,)
    assert torch.all(sd["layernorm_c_weight_l0"] == 1) and torch.all(sd["layernorm_c_bias_l0"] == 0)
    other = LSTM(3, 4, 2, bidirectional=True, layer_norm=True, peephole=True)
    other.load_state_dict(sd)
    plain = torch.nn.LSTM(3, 4, 2, bidirectional=True)
    plain.load_state_dict({k: v for k, v in sd.items() if not k.startswith(("layernorm", "weight_ch"))})
    assert "layer_norm=True" in repr(m) and "peephole=True" in repr(m)


def test_cifg_input_gate_rows_get_no_gradient():
    m = LSTM(3, 4, coupled_input_forget=True, dtype=torch.float64)
    out, _ = m(torch.randn(5, 2, 3, dtype=torch.float64))
    out.sum().backward()
    assert torch.all(m.weight_ih_l0.grad[:4] == 0) and torch.all(m.weight_hh_l0.grad[:4] == 0)
    assert m.weight_ih_l0.grad[4:].abs().sum() > 0


def test_cell_clip_bounds_the_cell_state():
    m = LSTM(3, 4, cell_clip=0.1)
    with torch.no_grad():
        m.bias_ih_l0.fill_(5.0)
        _, (h, c) = m(torch.randn(8, 2, 3))
    assert c.abs().max() <= 0.1 + 1e-7 and torch.isclose(c.abs().max(), torch.tensor(0.1))


@pytest.mark.parametrize("impl", ["auto", "loop"])
def test_packed_sequence_with_variants_matches_lengths(impl):
    m = make(3, 4, 2, True, 0, impl, 4, layer_norm=True, peephole=True, zoneout=0.3)
    m.eval()
    x = torch.randn(5, 3, 3)
    lengths = torch.tensor([5, 2, 4])
    out, (h, c) = m(x.double(), lengths=lengths)
    packed = pack_padded_sequence(x.double(), lengths, enforce_sorted=False)
    out_p, (h_p, c_p) = m(packed)
    out_p, _ = pad_packed_sequence(out_p, total_length=5)
    torch.testing.assert_close(out_p, out, atol=1e-12, rtol=0)
    torch.testing.assert_close(h_p, h, atol=1e-12, rtol=0)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(recurrent_dropout=1.0), r"recurrent_dropout must be a rate in \[0, 1\), got 1.0"),
        (dict(recurrent_dropout=-0.1), "recurrent_dropout must be a rate"),
        (dict(zoneout=1.5), r"zoneout \(h\) must be a rate"),
        (dict(zoneout=(0.1, -0.2)), r"zoneout \(c\) must be a rate"),
        (dict(zoneout=(0.1, 0.2, 0.3)), "zoneout must be one rate or a pair"),
        (dict(weight_drop=1), "weight_drop must be a rate"),
        (dict(cell_clip=-1.0), "cell_clip must be a positive number"),
        (dict(cell_clip=0), "cell_clip must be a positive number"),
        (dict(forget_bias=float("nan")), "forget_bias must be a finite number"),
        (dict(forget_bias=1.0, bias=False), "forget_bias needs the biases"),
        (dict(layer_norm=1), "layer_norm must be True or False"),
    ],
)
@pytest.mark.parametrize("cls", [LSTM, LSTMCell])
def test_bad_options_raise_clear_errors(cls, kw, match):
    with pytest.raises(ValueError, match=match):
        cls(3, 4, **kw)


def test_native_impl_refuses_variants():
    m = LSTM(3, 4, layer_norm=True, impl="native")
    with pytest.raises(ValueError, match="impl='native' runs only what torch.nn.LSTM supports, but layer_norm"):
        m(torch.randn(2, 1, 3))


@pytest.mark.parametrize("variant", ["layer_norm", "peephole", "cifg", "cell_clip", "all"])
def test_cell_matches_reference_one_step(variant):
    kw = {k: v for k, v in VARIANTS[variant].items() if k not in ("recurrent_dropout", "weight_drop")}
    torch.manual_seed(1)
    cell = LSTMCell(3, 4, dtype=torch.float64, **kw)
    with torch.no_grad():
        for name, p in cell.named_parameters():
            if name.startswith(("layernorm", "weight_ch")):
                p.add_(torch.randn(p.shape, dtype=p.dtype) * 0.3)
    cell.eval()  # zoneout: the expectation, deterministic
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    h, c = cell(x, (h0, c0))
    (h.sum() * 1.5 + c.sum()).backward()
    sd = {k + "_l0": v.detach().numpy() for k, v in cell.state_dict().items()}
    masks = {}
    if "zoneout" in kw:
        zh, zc = kw["zoneout"]
        masks = {0: {"zoneout_h": np.full((1, 2, 4), zh), "zoneout_c": np.full((1, 2, 4), zc)}}
    opts = {k: kw[k] for k in ("layer_norm", "peephole", "coupled_input_forget", "cell_clip") if k in kw}
    y_r, (h_r, c_r), cache = ref.stack_forward(x.detach().numpy()[None], (h0.detach().numpy()[None],
                                               c0.detach().numpy()[None]), sd, 1, masks=masks, **opts)  # fmt: skip
    np.testing.assert_allclose(h.detach().numpy(), h_r[0], atol=REF_ATOL, rtol=0)
    np.testing.assert_allclose(c.detach().numpy(), c_r[0], atol=REF_ATOL, rtol=0)
    g_r, dx_r, (dh_r, dc_r) = ref.stack_backward(np.full((1, 2, 4), 1.5), cache, (None, np.ones((1, 2, 4))))
    np.testing.assert_allclose(x.grad.numpy(), dx_r[0], atol=REF_ATOL, rtol=0)
    np.testing.assert_allclose(h0.grad.numpy(), dh_r[0], atol=REF_ATOL, rtol=0)
    np.testing.assert_allclose(c0.grad.numpy(), dc_r[0], atol=REF_ATOL, rtol=0)
    for name, p in cell.named_parameters():
        np.testing.assert_allclose(p.grad.numpy(), g_r[name + "_l0"], atol=REF_ATOL, rtol=0, err_msg=name)


def test_cell_keeps_its_recurrent_dropout_mask_until_reset():
    torch.manual_seed(0)
    cell = LSTMCell(3, 16, recurrent_dropout=0.5)
    x, hx = torch.randn(4, 3), (torch.randn(4, 16), torch.randn(4, 16))
    a = cell(x, hx)[0]
    b = cell(x, hx)[0]
    assert torch.equal(a, b)  # same mask within a sequence
    cell.reset_masks()
    assert not torch.equal(cell(x, hx)[0], a)
    cell.eval()
    torch.testing.assert_close(cell(x, hx)[0], torch.lstm_cell(x, hx, cell.weight_ih, cell.weight_hh,
                                                              cell.bias_ih, cell.bias_hh)[0])  # fmt: skip
