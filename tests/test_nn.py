"""lstmkit.nn.LSTM / LSTMCell against torch.nn.LSTM / LSTMCell and against the NumPy reference (float64).

Every path (``impl="auto"``, which runs torch's native operator for these configurations, and
``impl="loop"``, the readable pure-torch path) must give torch's outputs, final states and gradients
within ATOL, and the reference's within REF_ATOL, on random shapes (hypothesis).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from lstmkit import reference as ref
from lstmkit.nn import LSTM, LSTMCell

ATOL = 1e-10  # lstmkit vs torch.nn.LSTM, float64 (issue: 1e-10)
REF_ATOL = 1e-10  # lstmkit vs the NumPy reference, float64
IMPLS = ["auto", "loop"]

configs = st.fixed_dictionaries(
    {
        "T": st.integers(1, 6),
        "B": st.integers(1, 4),
        "I": st.integers(1, 5),
        "H": st.integers(1, 6),
        "layers": st.integers(1, 3),
        "bidirectional": st.booleans(),
        "batch_first": st.booleans(),
        "proj": st.integers(0, 3),
        "bias": st.booleans(),
        "seed": st.integers(0, 2**16),
    }
)


def make_pair(cfg, impl):
    torch.manual_seed(cfg["seed"])
    proj = min(cfg["proj"], cfg["H"] - 1) if cfg["H"] > 1 else 0
    kw = dict(num_layers=cfg["layers"], bias=cfg["bias"], batch_first=cfg["batch_first"],
              bidirectional=cfg["bidirectional"], proj_size=proj, dtype=torch.float64)  # fmt: skip
    theirs = torch.nn.LSTM(cfg["I"], cfg["H"], **kw)
    ours = LSTM(cfg["I"], cfg["H"], impl=impl, **kw)
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


def random_inputs(cfg, m):
    g = torch.Generator().manual_seed(cfg["seed"] + 1)
    T, B = cfg["T"], cfg["B"]
    shape = (B, T, cfg["I"]) if cfg["batch_first"] else (T, B, cfg["I"])
    x = torch.randn(shape, dtype=torch.float64, generator=g)
    L = m.num_layers * (2 if m.bidirectional else 1)
    h0 = torch.randn(L, B, m.proj_size or m.hidden_size, dtype=torch.float64, generator=g)
    c0 = torch.randn(L, B, m.hidden_size, dtype=torch.float64, generator=g)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    return x, h0, c0, lengths


def grads_of(m, *tensors):
    return [p.grad.clone() for p in m.parameters()] + [t.grad.clone() for t in tensors]


def run(m, x, hx, **kw):
    x = x.clone().requires_grad_()
    hx = tuple(t.clone().requires_grad_() for t in hx)
    m.zero_grad()
    out, (h, c) = m(x, hx, **kw)
    g = torch.Generator().manual_seed(7)
    loss = (out * torch.randn(out.shape, dtype=out.dtype, generator=g)).sum() + (h * 1.3).sum() + (c * 0.7).sum()
    loss.backward()
    return out.detach(), h.detach(), c.detach(), grads_of(m, x, *hx)


def assert_all_close(a, b, atol):
    assert len(a) == len(b)
    for u, v in zip(a, b):
        if isinstance(u, (list, tuple)):
            assert_all_close(u, v, atol)
        else:
            assert u.shape == v.shape
            torch.testing.assert_close(u, v, atol=atol, rtol=0)


@pytest.mark.parametrize("impl", IMPLS)
@given(cfg=configs)
def test_matches_torch_lstm(impl, cfg):
    ours, theirs = make_pair(cfg, impl)
    x, h0, c0, _ = random_inputs(cfg, ours)
    assert_all_close(run(ours, x, (h0, c0)), run(theirs, x, (h0, c0)), ATOL)


@pytest.mark.parametrize("impl", IMPLS)
@given(cfg=configs)
def test_lengths_match_packed_torch(impl, cfg):
    """lengths= (any order) equals torch on a packed batch, unpacked with zeros in the padding."""
    ours, theirs = make_pair(cfg, impl)
    x, h0, c0, lengths = random_inputs(cfg, ours)
    a = run(ours, x, (h0, c0), lengths=lengths)

    class Packed(torch.nn.Module):  # torch's way: pack, run, unpack
        def __init__(self, lstm):
            super().__init__()
            self.lstm = lstm

        def forward(self, x, hx):
            p = pack_padded_sequence(x, lengths, batch_first=cfg["batch_first"], enforce_sorted=False)
            out, hc = self.lstm(p, hx)
            out, _ = pad_packed_sequence(out, batch_first=cfg["batch_first"], total_length=cfg["T"])
            return out, hc

    b = run(Packed(theirs), x, (h0, c0))
    assert_all_close(a, b, ATOL)


@pytest.mark.parametrize("impl", IMPLS)
@given(cfg=configs)
def test_packed_sequence_in_and_out(impl, cfg):
    ours, theirs = make_pair(cfg, impl)
    x, h0, c0, lengths = random_inputs(cfg, ours)
    packed = pack_padded_sequence(x, lengths, batch_first=cfg["batch_first"], enforce_sorted=False)
    out_a, (h_a, c_a) = ours(packed, (h0, c0))
    out_b, (h_b, c_b) = theirs(packed, (h0, c0))
    assert isinstance(out_a, torch.nn.utils.rnn.PackedSequence)
    torch.testing.assert_close(out_a.data, out_b.data, atol=ATOL, rtol=0)
    torch.testing.assert_close(out_a.batch_sizes, out_b.batch_sizes)
    assert_all_close([h_a, c_a], [h_b, c_b], ATOL)
    # and without an initial state
    out_a, _ = ours(packed)
    out_b, _ = theirs(packed)
    torch.testing.assert_close(out_a.data, out_b.data, atol=ATOL, rtol=0)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("batch_first", [False, True])
def test_unbatched_input(impl, batch_first):
    cfg = dict(T=5, B=1, I=3, H=4, layers=2, bidirectional=True, batch_first=batch_first, proj=2, bias=True, seed=3)
    ours, theirs = make_pair(cfg, impl)
    x = torch.randn(5, 3, dtype=torch.float64)
    h0 = torch.randn(4, 2, dtype=torch.float64)
    c0 = torch.randn(4, 4, dtype=torch.float64)
    a = run(ours, x, (h0, c0))
    b = run(theirs, x, (h0, c0))
    assert a[0].shape == (5, 4)
    assert_all_close(a, b, ATOL)
    out, (h, c) = ours(x)
    assert h.shape == (4, 2) and c.shape == (4, 4)
    out_l, (h_l, _) = ours(x, lengths=torch.tensor([3]))
    torch.testing.assert_close(out_l[:3], ours(x[:3])[0], atol=ATOL, rtol=0)
    assert (out_l[3:] == 0).all()


@pytest.mark.parametrize("impl", IMPLS)
def test_dropout_between_layers_trains_and_evaluates(impl):
    torch.manual_seed(0)
    m = LSTM(3, 4, num_layers=2, dropout=0.5, impl=impl, dtype=torch.float64)
    t = torch.nn.LSTM(3, 4, num_layers=2, dropout=0.5, dtype=torch.float64)
    t.load_state_dict(m.state_dict())
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    m.eval(), t.eval()
    torch.testing.assert_close(m(x)[0], t(x)[0], atol=ATOL, rtol=0)  # no dropout in eval
    m.train()
    a, b = m(x)[0], m(x)[0]
    assert not torch.equal(a, b)  # dropout is live in training


def test_state_dict_loads_both_ways_and_isinstance():
    m = LSTM(4, 6, num_layers=2, bidirectional=True, proj_size=3)
    t = torch.nn.LSTM(4, 6, num_layers=2, bidirectional=True, proj_size=3)
    assert list(m.state_dict()) == list(t.state_dict())
    assert [p.shape for p in m.parameters()] == [p.shape for p in t.parameters()]
    t.load_state_dict(m.state_dict())
    m.load_state_dict(t.state_dict())
    assert isinstance(m, torch.nn.LSTM)
    c, tc = LSTMCell(4, 6), torch.nn.LSTMCell(4, 6)
    tc.load_state_dict(c.state_dict())
    c.load_state_dict(tc.state_dict())


@pytest.mark.parametrize("impl", IMPLS)
@given(B=st.integers(1, 4), I=st.integers(1, 5), H=st.integers(1, 6), bias=st.booleans(), seed=st.integers(0, 999))
def test_cell_matches_torch_cell(impl, B, I, H, bias, seed):
    torch.manual_seed(seed)
    theirs = torch.nn.LSTMCell(I, H, bias=bias, dtype=torch.float64)
    ours = LSTMCell(I, H, bias=bias, impl=impl, dtype=torch.float64)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(B, I, dtype=torch.float64)
    hx = (torch.randn(B, H, dtype=torch.float64), torch.randn(B, H, dtype=torch.float64))
    outs = []
    for m in (ours, theirs):
        xx = x.clone().requires_grad_()
        hh = tuple(t.clone().requires_grad_() for t in hx)
        m.zero_grad()
        h, c = m(xx, hh)
        (h.sum() * 1.5 + (c * c).sum()).backward()
        outs.append([h.detach(), c.detach(), *grads_of(m, xx, *hh)])
    assert_all_close(outs[0], outs[1], ATOL)
    h1, c1 = ours(x[0])  # unbatched
    torch.testing.assert_close(h1, theirs(x[0])[0], atol=ATOL, rtol=0)
    h2, _ = ours(x)  # zero state
    torch.testing.assert_close(h2, theirs(x)[0], atol=ATOL, rtol=0)


# ---------------------------------------------------------------------------------------------
# Against the NumPy reference: a stacked, bidirectional, projected LSTM composed of reference layers
# ---------------------------------------------------------------------------------------------


def ref_stack_forward(x, h0, c0, sd, layers, dirs):
    """x (T, B, I) numpy; returns output (T, B, D*P), h_n, c_n and the caches."""
    caches, h_n, c_n = [], [], []
    for layer in range(layers):
        outs = []
        for d in range(dirs):
            p = ref.from_torch(sd, layer=layer, reverse=d == 1)
            xs = list(x[::-1] if d == 1 else x)
            k = layer * dirs + d
            hs, (h, c), cache = ref.layer_forward(xs, (h0[k], c0[k]), p)
            y = np.stack(hs)
            outs.append(y[::-1] if d == 1 else y)
            caches.append(cache)
            h_n.append(h)
            c_n.append(c)
        x = np.concatenate(outs, axis=2)
    return x, np.stack(h_n), np.stack(c_n), caches


def ref_stack_backward(dout, dh_n, dc_n, caches, layers, dirs):
    """Backpropagation through the stack; returns seed-named grads per (layer, dir), dx, dh0, dc0."""
    grads, dh0, dc0 = {}, [None] * (layers * dirs), [None] * (layers * dirs)
    for layer in reversed(range(layers)):
        P = dout.shape[2] // dirs
        dx = None
        for d in range(dirs):
            k = layer * dirs + d
            dy = dout[:, :, d * P : (d + 1) * P]
            dhs = list(dy[::-1] if d == 1 else dy)
            g, dxs, (dh, dc) = ref.layer_backward(dhs, caches[k], (dh_n[k], dc_n[k]))
            dxs = np.stack(dxs)
            dxs = dxs[::-1] if d == 1 else dxs
            dx = dxs if dx is None else dx + dxs
            grads[(layer, d)] = g
            dh0[k], dc0[k] = dh, dc
        dout = dx
    return grads, dout, np.stack(dh0), np.stack(dc0)


@pytest.mark.parametrize("impl", IMPLS)
@given(cfg=configs)
def test_matches_numpy_reference(impl, cfg):
    cfg = {**cfg, "bias": True}
    ours, _ = make_pair(cfg, impl)
    x, h0, c0, _ = random_inputs(cfg, ours)
    out, h, c, grads = run(ours, x, (h0, c0))
    sd = {k: v.numpy() for k, v in ours.state_dict().items()}
    xt = x.transpose(0, 1) if cfg["batch_first"] else x  # (T, B, I)
    dirs = 2 if cfg["bidirectional"] else 1
    r_out, r_h, r_c, caches = ref_stack_forward(xt.numpy(), h0.numpy(), c0.numpy(), sd, cfg["layers"], dirs)
    out_t = out.transpose(0, 1) if cfg["batch_first"] else out
    np.testing.assert_allclose(out_t.numpy(), r_out, atol=REF_ATOL, rtol=0)
    np.testing.assert_allclose(h.numpy(), r_h, atol=REF_ATOL, rtol=0)
    np.testing.assert_allclose(c.numpy(), r_c, atol=REF_ATOL, rtol=0)
    # the same loss as run(): <w, out> + 1.3 sum(h) + 0.7 sum(c)
    w = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(7))
    w_t = (w.transpose(0, 1) if cfg["batch_first"] else w).numpy()
    rg, rdx, rdh0, rdc0 = ref_stack_backward(
        w_t, np.full_like(r_h, 1.3), np.full_like(r_c, 0.7), caches, cfg["layers"], dirs
    )
    named = dict(zip([n for n, _ in ours.named_parameters()], grads))
    for (layer, d), g in rg.items():
        tg = ref.to_torch(g, layer=layer, reverse=d == 1)
        sfx = f"_l{layer}" + ("_reverse" if d == 1 else "")
        for name in ("weight_ih", "weight_hh", "weight_hr"):
            if name + sfx in tg:
                np.testing.assert_allclose(named[name + sfx].numpy(), tg[name + sfx], atol=REF_ATOL, rtol=0)
        for name in ("bias_ih", "bias_hh"):  # both torch biases get the seed bias's gradient
            np.testing.assert_allclose(named[name + sfx].numpy(), tg["bias_ih" + sfx], atol=REF_ATOL, rtol=0)
    n_params = len(named)
    dx = grads[n_params].transpose(0, 1) if cfg["batch_first"] else grads[n_params]
    np.testing.assert_allclose(dx.numpy(), rdx, atol=REF_ATOL, rtol=0)
    np.testing.assert_allclose(grads[n_params + 1].numpy(), rdh0, atol=REF_ATOL, rtol=0)
    np.testing.assert_allclose(grads[n_params + 2].numpy(), rdc0, atol=REF_ATOL, rtol=0)


def test_seed_model_equals_lstm_plus_linear():
    """The reference's 14-parameter seed model == lstmkit.nn.LSTM followed by a Linear layer."""
    rng = np.random.default_rng(0)
    params = ref.init_lstm_params(3, 5, 4, rng, scale=0.5)
    xs = [rng.standard_normal((2, 3)) for _ in range(6)]
    state = (rng.standard_normal((2, 5)), rng.standard_normal((2, 5)))
    Y, (H, C) = ref.lstm(xs, state, params)
    m = LSTM(3, 5, dtype=torch.float64)
    m.load_state_dict({k: torch.from_numpy(v) for k, v in ref.to_torch(ref.params_to_dict(params)).items()})
    out, (h, c) = m(torch.from_numpy(np.stack(xs)), tuple(torch.from_numpy(s)[None] for s in state))
    Y_t = out @ torch.from_numpy(params[12]) + torch.from_numpy(params[13])  # (T, B, Q)
    np.testing.assert_allclose(Y_t.reshape(-1, 4).detach().numpy(), Y, atol=REF_ATOL, rtol=0)
    np.testing.assert_allclose(h[0].detach().numpy(), H, atol=REF_ATOL, rtol=0)
    np.testing.assert_allclose(c[0].detach().numpy(), C, atol=REF_ATOL, rtol=0)
