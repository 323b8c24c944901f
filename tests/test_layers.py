"""S6, scan orders, token/channel mixers, weighted averaging and the MambaMixer stack."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mambamixer.layers.attention import TransformerEncoderLayer
from mambamixer.layers.channel_mixer import ChannelMixer
from mambamixer.layers.depthwise_conv import DepthwiseConv2d
from mambamixer.layers.mamba_mixer import MambaMixer
from mambamixer.layers.s6 import S6
from mambamixer.layers.scan_order import ORDERS_1D, ORDERS_2D, ScanOrder
from mambamixer.layers.token_mixer import TokenMixer
from mambamixer.layers.weighted_average import WeightedAverage
from mambamixer.ops import selective_scan_ref
from mambamixer.ops.causal_conv1d import causal_conv1d_ref


def test_s6_shapes_and_mamba_initialisation():
    torch.manual_seed(0)
    s6 = S6(d_inner=32, d_state=16)
    y = s6(torch.randn(3, 32, 11))
    assert y.shape == (3, 32, 11)
    dt = F.softplus(s6.dt_bias)
    assert dt.min() >= 1e-4 and dt.max() <= 0.1 + 1e-6
    torch.testing.assert_close(-torch.exp(s6.A_log)[0], -torch.arange(1, 17, dtype=torch.float32))
    assert s6.dt_rank == 1 and all(getattr(p, "_no_weight_decay", False) for p in (s6.A_log, s6.D, s6.dt_bias))


def test_non_selective_s6_ignores_input_content_in_its_parameters():
    s6 = S6(d_inner=8, d_state=4, selective=False)
    x1, x2 = torch.randn(2, 8, 5), torch.randn(2, 8, 5)
    for a, b in zip(s6.ssm_parameters(x1), s6.ssm_parameters(x2), strict=True):
        torch.testing.assert_close(a, b)
    assert S6(8, 4).ssm_parameters(x1)[1].ne(S6(8, 4).ssm_parameters(x2)[1]).any()


@pytest.mark.parametrize("name", ORDERS_1D + ORDERS_2D)
def test_scan_orders_are_invertible_permutations(name):
    order = ScanOrder(name)
    grid = (3, 5)
    x = torch.arange(15.0).reshape(1, 1, 15)
    scanned = order.apply(x, grid)
    assert sorted(scanned.flatten().tolist()) == list(range(15))
    torch.testing.assert_close(order.undo(scanned, grid), x)


def test_2d_scan_orders_visit_tokens_as_named():
    x = torch.arange(6.0)  # grid (2, 3): rows [0 1 2], [3 4 5]
    grid = (2, 3)
    assert ScanOrder("column").apply(x, grid).tolist() == [0, 3, 1, 4, 2, 5]
    assert ScanOrder("snake").apply(x, grid).tolist() == [0, 1, 2, 5, 4, 3]
    assert ScanOrder("diagonal").apply(x, grid).tolist() == [0, 1, 3, 2, 4, 5]
    assert ScanOrder("row_reverse").apply(x, grid).tolist() == [5, 4, 3, 2, 1, 0]
    with pytest.raises(ValueError, match="needs grid"):
        ScanOrder("column").apply(x)
    with pytest.raises(ValueError, match="unknown scan order"):
        ScanOrder("spiral")


def _dependence(module, x, t):
    """|d out[..., t, :] / d x| summed per input token: (tokens,)."""
    x = x.clone().requires_grad_()
    module(x)[..., t, :].sum().backward()
    return x.grad.abs().sum(dim=tuple(i for i in range(x.dim()) if i != x.dim() - 2))


def test_unidirectional_token_mixer_is_causal():
    torch.manual_seed(0)
    mixer = TokenMixer(d_model=8, d_state=4)
    x = torch.randn(2, 3, 12, 8)  # extra leading axes fold into the batch
    for t in (0, 5, 11):
        dep = _dependence(mixer, x, t)
        assert torch.all(dep[t + 1 :] == 0), f"output {t} depends on later tokens"
        assert torch.all(dep[: t + 1] > 0)


def test_bidirectional_token_mixer_sees_both_sides():
    torch.manual_seed(0)
    dep = _dependence(TokenMixer(d_model=8, d_state=4, bidirectional=True), torch.randn(2, 12, 8), 5)
    assert dep[6:].sum() > 0 and dep[:5].sum() > 0


def _mixer_by_flips(mixer, x):
    """SelectiveMixer as paper-notes words it, on the reference ops: each order's input reordered
    (the reversed order flipped), causal conv, SiLU, S6, put back; summed, normed, gated, projected."""
    u, z = mixer.in_proj(x).chunk(2, dim=-1)
    y = 0
    for order, conv, ssm in zip(mixer.orders, mixer.convs, mixer.ssms, strict=True):
        xs = causal_conv1d_ref(order.apply(u, dim=1).transpose(1, 2), conv.weight[:, 0], conv.bias, "silu")
        delta, B, C = ssm.ssm_parameters(xs)
        ys = selective_scan_ref(xs, delta, -torch.exp(ssm.A_log), B, C, ssm.D, delta_bias=ssm.dt_bias,
                                delta_softplus=True)  # fmt: skip
        y = y + order.undo(ys).transpose(1, 2)
    y = mixer.out_norm(y) if mixer.out_norm is not None else y
    return mixer.out_proj(y * F.silu(z))


@pytest.mark.parametrize("out_norm", [False, True])  # the token-major path, and the channel-first one
@pytest.mark.parametrize("expand", [2, 1.5])  # d_inner 32 (SIMD blocks of 16 channels) or 24 (a partial block)
def test_bidirectional_mixer_matches_the_flipped_construction(out_norm, expand):
    """The reversed order's conv and scan run right to left without flipped copies: same values and gradients."""
    torch.manual_seed(0)
    mixer = TokenMixer(16, bidirectional=True, d_state=4, expand=expand, d_conv=4, out_norm=out_norm).mixer.double()
    x = torch.randn(3, 9, 16, dtype=torch.float64, requires_grad=True)
    got, want = mixer(x), _mixer_by_flips(mixer, x)
    torch.testing.assert_close(got, want)
    leaves = [x, *mixer.parameters()]
    for g, w in zip(torch.autograd.grad(got.sum(), leaves), torch.autograd.grad(want.sum(), leaves), strict=True):
        torch.testing.assert_close(g, w)


def test_channel_mixer_axes():
    torch.manual_seed(0)
    x = torch.randn(2, 10, 6)  # (batch, tokens, channels): channels scanned, tokens are the features
    assert ChannelMixer(d_features=10)(x).shape == x.shape
    x4 = torch.randn(2, 5, 7, 8)  # (batch, variates, patches, d_model): scan over variates
    mixer = ChannelMixer(d_features=8, channel_axis=1)
    assert mixer(x4).shape == x4.shape
    x4 = x4.requires_grad_()
    mixer(x4)[:, 2].sum().backward()
    per_variate = x4.grad.abs().sum(dim=(0, 2, 3))
    per_patch = x4.grad.abs().sum(dim=(0, 1, 3))
    assert torch.all(per_variate > 0)  # every variate, both directions
    assert per_patch[0] > 0 and torch.count_nonzero(per_patch) == 7


def test_weighted_average_starts_one_hot_on_newest():
    avg = WeightedAverage(3)
    a, b, c = torch.randn(3, 4, 5).unbind(0)
    torch.testing.assert_close(avg([a, b, c]), c)
    with pytest.raises(ValueError, match="expected 3 feature maps"):
        avg([a, b])


def _stack(weighted: bool) -> MambaMixer:
    torch.manual_seed(0)
    return MambaMixer(3, 8, token_mixer=lambda: TokenMixer(8, d_state=4),
                      channel_mixer=lambda: ChannelMixer(10), weighted_average=weighted)  # fmt: skip


def test_weighted_averaging_starts_as_plain_residual_stack():
    dense, plain = _stack(True), _stack(False)
    plain_state = plain.state_dict()
    dense.load_state_dict(plain_state, strict=False)
    x = torch.randn(2, 10, 8)
    torch.testing.assert_close(dense(x), plain(x))
    n_mixers = 6
    assert len(dense.averages) == n_mixers + 1 and dense.averages[-1].weight.numel() == n_mixers + 1
    # and the plain residual stack really is x + f(norm(x)) per mixer
    h = x
    for mixer, norm in zip(plain.mixers, plain.norms, strict=True):
        h = h + mixer(norm(h))
    torch.testing.assert_close(plain(x), h)


def test_weighted_averaging_weights_receive_gradients():
    dense = _stack(True)
    dense(torch.randn(2, 10, 8)).square().sum().backward()
    grads = [avg.weight.grad for avg in dense.averages]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g[:-1].abs().sum() > 0 for g in grads[1:])


def test_token_mixer_parameter_count():
    d, n, expand, conv = 16, 8, 2, 4
    d_inner, dt_rank = expand * d, math.ceil(d / 16)
    conv_params = d_inner * conv + d_inner
    s6_params = d_inner * (dt_rank + 2 * n) + dt_rank * d_inner + d_inner + d_inner + d_inner * n  # dt_bias, D, A_log
    per_scan = conv_params + s6_params
    expected = d * 2 * d_inner + d_inner * d + 2 * per_scan
    mixer = TokenMixer(d, bidirectional=True, d_state=n)
    assert sum(p.numel() for p in mixer.parameters()) == expected


def test_pre_norm_encoder_layer_follows_its_formula():
    torch.manual_seed(0)
    layer = TransformerEncoderLayer(16, 4, 32, dropout=0.0, norm_first=True).eval()
    x = torch.randn(3, 5, 16)
    h = x + layer.attn(layer.norm_attn(x))[0]
    expected = h + layer.ffn(layer.norm_ffn(h))
    torch.testing.assert_close(layer(x)[0], expected)
    post = TransformerEncoderLayer(16, 4, 32, dropout=0.0).eval()
    post.load_state_dict(layer.state_dict())
    assert not torch.allclose(post(x)[0], expected)  # the default stays post-norm


def test_depthwise_conv_weight_strides_match_its_gradient():
    """Fed a channels-last view, as the vision mixers do, the weight gradient has the weight's strides
    (else DDP warns and copies each step); values and state dict are nn.Conv2d's."""
    torch.manual_seed(0)
    conv = DepthwiseConv2d(6, 3)
    plain = nn.Conv2d(6, 6, 3, padding=1, groups=6)
    plain.load_state_dict(conv.state_dict())
    x = torch.randn(2, 5, 4, 6).permute(0, 3, 1, 2)  # (batch, C, H, W) view of channels-last memory
    y = conv(x)
    torch.testing.assert_close(y, plain(x))
    y.square().sum().backward()
    assert conv.weight.grad.stride() == conv.weight.stride() and conv.weight.is_contiguous()
    assert set(conv.state_dict()) == {"weight", "bias"}
