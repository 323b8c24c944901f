"""The forecasting baselines (DLinear, PatchTST, iTransformer, TSMixer) and the RevIN layer they share."""

from __future__ import annotations

import math

import pytest
import torch
from forecast_helpers import etth1_validation_losses

from mambamixer.layers.attention import MultiheadSelfAttention, TransformerEncoder
from mambamixer.layers.normalization import RevIN
from mambamixer.models import create_model, list_models
from mambamixer.models.dlinear import DLinear, moving_average
from mambamixer.models.itransformer import ITransformer
from mambamixer.models.patchtst import PatchTST
from mambamixer.models.tsmixer import TSMixer

BASELINES = ["dlinear", "patchtst", "itransformer", "tsmixer"]
CLASSES = {"dlinear": DLinear, "patchtst": PatchTST, "itransformer": ITransformer, "tsmixer": TSMixer}
# the learning test narrows iTransformer (default d_model 256) so the suite stays fast on a busy CPU;
# TSMixer's dropout of 0.9 is meant for thousands of steps, not the test's 60
LEARN_OVERRIDES = {"itransformer": {"d_model": 64, "d_ff": 64}, "tsmixer": {"dropout": 0.1}}


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------------------- RevIN


@pytest.mark.parametrize("affine", [True, False])
def test_revin_round_trip_is_identity(affine):
    torch.manual_seed(0)
    revin = RevIN(5, affine=affine)
    if affine:  # a non-trivial affine must be undone too
        with torch.no_grad():
            revin.weight.uniform_(0.5, 2.0)
            revin.bias.normal_()
    x = torch.randn(4, 40, 5) * 3 + 7
    z, stats = revin.normalize(x)
    assert stats.mean.shape == stats.std.shape == (4, 1, 5)
    torch.testing.assert_close(revin.denormalize(z, stats), x, rtol=1e-5, atol=1e-5)


def test_revin_standardises_each_instance_and_variate():
    x = torch.randn(3, 50, 4) * torch.tensor([1.0, 10.0, 0.1, 5.0]) + torch.tensor([0.0, -3.0, 100.0, 2.0])
    z, _ = RevIN(4, affine=False).normalize(x)
    torch.testing.assert_close(z.mean(1), torch.zeros(3, 4), atol=1e-4, rtol=0)
    torch.testing.assert_close(z.std(1, unbiased=False), torch.ones(3, 4), atol=1e-3, rtol=0)


def test_revin_rejects_wrong_variate_count():
    with pytest.raises(ValueError, match="variates"):
        RevIN(3).normalize(torch.randn(2, 10, 4))


# ------------------------------------------------------------------------------ shared encoder


def test_attention_paths_agree_without_previous_scores():
    torch.manual_seed(0)
    fused = MultiheadSelfAttention(32, 4).eval()
    explicit = MultiheadSelfAttention(32, 4, residual_scores=True).eval()
    explicit.load_state_dict(fused.state_dict())
    x = torch.randn(3, 10, 32)
    out_fused, none = fused(x)
    out_explicit, scores = explicit(x)
    assert none is None and scores.shape == (3, 4, 10, 10)
    torch.testing.assert_close(out_fused, out_explicit, rtol=1e-5, atol=1e-5)


def test_residual_attention_threads_scores_through_layers():
    torch.manual_seed(0)
    enc = TransformerEncoder(2, 16, 2, 32, dropout=0.0, norm="batch", residual_scores=True).eval()
    plain = TransformerEncoder(2, 16, 2, 32, dropout=0.0, norm="batch", residual_scores=False).eval()
    plain.load_state_dict(enc.state_dict())
    x = torch.randn(4, 6, 16)
    # same first layer; the second differs only by the added scores of the first
    assert not torch.allclose(enc(x), plain(x))
    with pytest.raises(ValueError, match="norm"):
        TransformerEncoder(1, 16, 2, 32, norm="group")


# ----------------------------------------------------------------------------------- registry


def test_baselines_are_registered_as_forecasters():
    assert set(BASELINES) <= set(list_models(task="forecast"))


def test_unknown_model_name_lists_known_models():
    with pytest.raises(ValueError, match="Known models") as err:
        create_model("dlinaer")
    for name in BASELINES:
        assert name in str(err.value)


def test_overrides_reach_the_config():
    model = create_model("patchtst", seq_len=64, horizon=12, n_vars=3, d_model=32, n_layers=1)
    assert (model.config.seq_len, model.config.d_model, model.config.n_layers) == (64, 32, 1)
    with pytest.raises(TypeError):
        create_model("dlinear", not_a_field=1)


# ------------------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("name", BASELINES)
@pytest.mark.parametrize("seq_len,horizon", [(96, 24), (40, 7)])
@pytest.mark.parametrize("n_vars", [7, 1])
@pytest.mark.parametrize("n_marks", [0, 4])
def test_output_shape(name, seq_len, horizon, n_vars, n_marks):
    model = create_model(name, seq_len=seq_len, horizon=horizon, n_vars=n_vars, n_marks=n_marks).eval()
    x = torch.randn(2, seq_len, n_vars)
    x_mark = torch.randn(2, seq_len, n_marks) if n_marks else None
    y_mark = torch.randn(2, horizon, n_marks) if n_marks else None
    with torch.no_grad():
        y = model(x, x_mark, y_mark)
        assert y.shape == (2, horizon, n_vars)
        assert torch.isfinite(y).all()
        assert model(x).shape == (2, horizon, n_vars)  # marks are always optional


def test_itransformer_uses_marks_as_extra_tokens():
    torch.manual_seed(0)
    model = create_model("itransformer", seq_len=24, horizon=8, n_vars=3, n_marks=2, d_model=32).eval()
    x, x_mark = torch.randn(2, 24, 3), torch.randn(2, 24, 2)
    with torch.no_grad():
        assert not torch.allclose(model(x, x_mark), model(x, x_mark + 1.0))
        with pytest.raises(ValueError, match="n_marks"):
            model(x, torch.randn(2, 24, 5))


def test_channel_independent_models_do_not_mix_variates():
    torch.manual_seed(0)
    for name in ["dlinear", "patchtst"]:
        model = create_model(name, seq_len=48, horizon=12, n_vars=3).eval()
        x = torch.randn(2, 48, 3)
        x2 = x.clone()
        x2[..., 1] += torch.randn(2, 48)
        with torch.no_grad():
            y, y2 = model(x), model(x2)
        torch.testing.assert_close(y[..., [0, 2]], y2[..., [0, 2]])


# ----------------------------------------------------------------------------------- DLinear


def test_moving_average_matches_replicate_padded_mean():
    x = torch.randn(2, 30, 3)
    k = 5
    padded = torch.cat([x[:, :1].repeat(1, 2, 1), x, x[:, -1:].repeat(1, 2, 1)], dim=1)
    expected = torch.stack([padded[:, t : t + k].mean(1) for t in range(30)], dim=1)
    torch.testing.assert_close(moving_average(x, k), expected)


@pytest.mark.parametrize("individual", [False, True])
@pytest.mark.parametrize("seq_len,horizon,n_vars", [(96, 96, 7), (336, 720, 21), (40, 7, 1)])
def test_dlinear_parameter_count_is_exact(individual, seq_len, horizon, n_vars):
    model = create_model("dlinear", seq_len=seq_len, horizon=horizon, n_vars=n_vars, individual=individual)
    per_map = seq_len * horizon + horizon  # weight + bias of one linear map over time
    expected = 2 * per_map * (n_vars if individual else 1)  # seasonal + trend
    assert n_params(model) == expected


def test_dlinear_rejects_even_kernel():
    with pytest.raises(ValueError, match="odd"):
        create_model("dlinear", kernel_size=24)


# ------------------------------------------------------------------------------- param counts


@pytest.mark.parametrize("name,d,d_ff,heads,dropout,most",
                         [("patchtst", 16, 128, 4, 0.3, 100_000), ("patchtst_128", 128, 256, 16, 0.2, 1_000_000)])
def test_patchtst_parameter_count(name, d, d_ff, heads, dropout, most):
    model = create_model(name, seq_len=96, horizon=96, n_vars=7)
    n_patches, layers = 12, 3  # (96 - 16) // 8 + 1 + 1 end-padding patch
    assert model.config.n_patches == n_patches
    assert (model.config.n_heads, model.config.dropout) == (heads, dropout)
    per_layer = 4 * (d * d + d) + 2 * 2 * d + (d * d_ff + d_ff) + (d_ff * d + d)  # attn, 2 BN, FFN
    expected = (16 * d + d) + n_patches * d + layers * per_layer + (d * n_patches * 96 + 96)
    assert n_params(model) == expected
    assert 10_000 < n_params(model) < most


def test_itransformer_parameter_count():
    model = create_model("itransformer", seq_len=96, horizon=96, n_vars=7)
    d, d_ff, layers = 256, 256, 2
    per_layer = 4 * (d * d + d) + 2 * 2 * d + (d * d_ff + d_ff) + (d_ff * d + d)  # attn, 2 LN, FFN
    expected = (96 * d + d) + layers * per_layer + 2 * d + (d * 96 + 96)
    assert n_params(model) == expected
    assert 500_000 < n_params(model) < 2_000_000
    # the covariate tokens share the variate embedding: no parameters depend on n_vars or n_marks
    assert n_params(create_model("itransformer", n_vars=321, n_marks=4)) == expected


@pytest.mark.parametrize("norm", ["batch", "layer"])
def test_tsmixer_parameter_count(norm):
    seq_len, horizon, n_vars, ff_dim, blocks = 96, 96, 7, 64, 2
    model = create_model("tsmixer", seq_len=seq_len, horizon=horizon, n_vars=n_vars, norm=norm)
    plane = seq_len * n_vars  # either norm has a weight and a bias per (time step, variate)
    per_block = 2 * 2 * plane + (seq_len * seq_len + seq_len) + (n_vars * ff_dim + ff_dim) + (ff_dim * n_vars + n_vars)
    expected = 2 * n_vars + blocks * per_block + (seq_len * horizon + horizon)  # RevIN affine, blocks, head
    assert n_params(model) == expected == 35_260


def test_tsmixer_mixes_variates_and_time_in_order():
    torch.manual_seed(0)
    model = create_model("tsmixer", seq_len=24, horizon=6, n_vars=3, dropout=0.0).eval()
    x = torch.randn(2, 24, 3)
    x2 = x.clone()
    x2[..., 1] += torch.randn(2, 24)
    with torch.no_grad():
        assert not torch.allclose(model(x)[..., 0], model(x2)[..., 0])  # the feature MLP mixes variates
    block = model.blocks[0]
    with torch.no_grad():  # time mixing alone: a per-variate map over time, then the feature MLP per step
        z = torch.randn(2, 24, 3)
        time_only = z + block.time_linear(block.time_norm(z).transpose(1, 2)).relu().transpose(1, 2)
        expected = time_only + block.feature_mlp(block.feature_norm(time_only))
        torch.testing.assert_close(block(z), expected)
    with pytest.raises(ValueError, match="norm"):
        create_model("tsmixer", norm="group")
    with pytest.raises(ValueError, match="dropout"):
        create_model("tsmixer", dropout=1.0)


# ---------------------------------------------------------------------------- save and load


@pytest.mark.parametrize("name", BASELINES)
def test_save_load_round_trip_is_bit_exact(name, tmp_path):
    torch.manual_seed(0)
    kwargs = {"seq_len": 48, "horizon": 12, "n_vars": 3, "n_marks": 2}
    model = create_model(name, **kwargs)
    x, x_mark = torch.randn(4, 48, 3), torch.randn(4, 48, 2)
    model.train()
    model(x, x_mark)  # move BatchNorm running statistics away from their initial values
    model.eval()
    model.save_pretrained(tmp_path / name)
    loaded = CLASSES[name].from_pretrained(tmp_path / name).eval()
    assert loaded.config == model.config
    state, loaded_state = model.state_dict(), loaded.state_dict()
    assert state.keys() == loaded_state.keys()
    for key in state:
        assert torch.equal(state[key], loaded_state[key]), key
    with torch.no_grad():
        assert torch.equal(model(x, x_mark), loaded(x, x_mark))


# ----------------------------------------------------------------------------------- learning


def noisy_sines(n: int, seq_len: int, horizon: int, n_vars: int, generator: torch.Generator):
    """Sines of period 24 with random phase, amplitude and level per series, plus noise."""
    t = torch.arange(seq_len + horizon, dtype=torch.float32)
    phase = torch.rand(n, 1, n_vars, generator=generator) * 2 * math.pi
    amp = 0.5 + 1.5 * torch.rand(n, 1, n_vars, generator=generator)
    level = torch.randn(n, 1, n_vars, generator=generator)
    series = level + amp * torch.sin(2 * math.pi * t[None, :, None] / 24 + phase)
    series = series + 0.1 * torch.randn(series.shape, generator=generator)
    return series[:, :seq_len], series[:, seq_len:]


@pytest.mark.parametrize("name", BASELINES)
def test_model_learns_noisy_sines(name):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    seq_len, horizon, n_vars = 48, 24, 3
    x_train, y_train = noisy_sines(512, seq_len, horizon, n_vars, g)
    x_val, y_val = noisy_sines(128, seq_len, horizon, n_vars, g)
    overrides = LEARN_OVERRIDES.get(name, {})
    model = create_model(name, seq_len=seq_len, horizon=horizon, n_vars=n_vars, **overrides)

    def val_mse() -> float:
        model.eval()
        with torch.no_grad():
            return torch.nn.functional.mse_loss(model(x_val), y_val).item()

    before = val_mse()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for step in range(60):
        idx = torch.randint(0, 512, (64,), generator=g)
        loss = torch.nn.functional.mse_loss(model(x_train[idx]), y_train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert math.isfinite(loss.item()), step
    after = val_mse()
    assert after < 0.2 * before, (before, after)


def test_tsmixer_learns_on_etth1(shared_data):
    before, after = etth1_validation_losses("tsmixer", shared_data, dropout=0.1)
    assert after < 0.85 * before, (before, after)
