"""Bad input to lstmkit.nn: each a ValueError that says what was expected and what came."""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

from lstmkit.nn import LSTM, LSTMCell


@pytest.fixture
def lstm():
    return LSTM(3, 4, num_layers=2)


def test_wrong_number_of_dimensions(lstm):
    with pytest.raises(ValueError, match=r"3-D \(T, B, features\).*got 4-D with shape \(2, 2, 2, 3\)"):
        lstm(torch.randn(2, 2, 2, 3))
    with pytest.raises(ValueError, match="got 1-D"):
        lstm(torch.randn(3))


def test_feature_size_mismatch(lstm):
    with pytest.raises(ValueError, match=r"input has 5 features .* input_size=3"):
        lstm(torch.randn(6, 2, 5))


def test_state_shape_mismatch(lstm):
    x = torch.randn(6, 2, 3)
    good = torch.zeros(2, 2, 4)
    with pytest.raises(ValueError, match=r"h_0 must have shape \(2, 2, 4\).*got \(1, 2, 4\)"):
        lstm(x, (torch.zeros(1, 2, 4), good))
    with pytest.raises(ValueError, match=r"c_0 must have shape \(2, 2, 4\).*got \(2, 3, 4\)"):
        lstm(x, (good, torch.zeros(2, 3, 4)))
    with pytest.raises(ValueError, match="tuple"):
        lstm(x, good)
    proj = LSTM(3, 4, proj_size=2)
    with pytest.raises(ValueError, match=r"h_0 must have shape \(1, 2, 2\)"):
        proj(x, (torch.zeros(1, 2, 4), torch.zeros(1, 2, 4)))


def test_lengths_out_of_range(lstm):
    x = torch.randn(6, 2, 3)
    with pytest.raises(ValueError, match=r"lengths must lie in \[1, 6\].*from 1 to 7"):
        lstm(x, lengths=torch.tensor([1, 7]))
    with pytest.raises(ValueError, match=r"lengths must lie in \[1, 6\].*from 0 to 3"):
        lstm(x, lengths=torch.tensor([0, 3]))
    with pytest.raises(ValueError, match=r"one entry per sequence \(2\).*\(3,\)"):
        lstm(x, lengths=torch.tensor([1, 2, 3]))


def test_lengths_wrong_dtype(lstm):
    with pytest.raises(ValueError, match=r"integers.*torch.float32"):
        lstm(torch.randn(6, 2, 3), lengths=torch.tensor([2.0, 3.0]))
    with pytest.raises(ValueError, match="1-D integer torch.Tensor, got list"):
        lstm(torch.randn(6, 2, 3), lengths=[2, 3])


def test_lengths_with_packed_sequence(lstm):
    packed = pack_padded_sequence(torch.randn(6, 2, 3), torch.tensor([6, 2]))
    with pytest.raises(ValueError, match="PackedSequence already carries its lengths"):
        lstm(packed, lengths=torch.tensor([6, 2]))


def test_mixed_dtypes(lstm):
    with pytest.raises(ValueError, match=r"input has dtype torch.float64 and the LSTM's parameters torch.float32"):
        lstm(torch.randn(6, 2, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"h_0 has dtype torch.float64 and input torch.float32"):
        lstm(torch.randn(6, 2, 3), (torch.zeros(2, 2, 4, dtype=torch.float64), torch.zeros(2, 2, 4)))
    with pytest.raises(ValueError, match="floating-point"):
        lstm(torch.ones(6, 2, 3, dtype=torch.long))


def test_mixed_devices(lstm):
    # the meta device stands in for a GPU: no data, but a different device
    with pytest.raises(ValueError, match=r"input is on meta and the LSTM's parameters on cpu"):
        lstm(torch.empty(6, 2, 3, device="meta"))
    with pytest.raises(ValueError, match=r"c_0 is on meta and input on cpu"):
        lstm(torch.randn(6, 2, 3), (torch.zeros(2, 2, 4), torch.zeros(2, 2, 4, device="meta")))


def test_unknown_impl():
    with pytest.raises(ValueError, match=r"impl must be one of \('auto', 'native', 'loop', 'triton'\), got 'fast'"):
        LSTM(3, 4, impl="fast")


def test_cell_errors():
    cell = LSTMCell(3, 4)
    with pytest.raises(ValueError, match="2-D \\(batch, features\\) or 1-D"):
        cell(torch.randn(1, 2, 3))
    with pytest.raises(ValueError, match="input has 2 features"):
        cell(torch.randn(2, 2))
    with pytest.raises(ValueError, match=r"h_0 must have shape \(2, 4\)"):
        cell(torch.randn(2, 3), (torch.zeros(3, 4), torch.zeros(2, 4)))
    with pytest.raises(ValueError, match="dtype"):
        cell(torch.randn(2, 3, dtype=torch.float64))
