"""SiMBA for vision and for forecasting: sizes, shapes, features_only, save/load, errors, learning."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from forecast_helpers import etth1_validation_losses
from image_helpers import digits_held_out_losses

from mambamixer import create_model
from mambamixer.layers.einfft import EinFFT
from mambamixer.layers.selective_mixer import SelectiveMixer
from mambamixer.models import list_models
from mambamixer.models.simba import SiMBA, SiMBABlock, SiMBAForecaster

# Published parameter counts (ImageNet-1K, EinFFT channel mixing), in millions: paper-notes' table.
PUBLISHED = {"simba_s": 15.3, "simba_b": 22.8, "simba_l": 36.6}


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def nano(**kw) -> SiMBA:
    torch.manual_seed(0)
    return create_model("simba_nano", **{"num_classes": 10, "in_chans": 1, **kw})


def forecaster(**kw) -> SiMBAForecaster:
    torch.manual_seed(0)
    return create_model("simba", **{"seq_len": 48, "horizon": 24, "n_vars": 5, "d_model": 16, "patch_len": 8,
                                    "stride": 4, **kw})


# ------------------------------------------------------------------------------------------- block


def test_block_reuses_the_mamba_block_and_einfft():
    block = SiMBABlock(16, nano().config)
    assert isinstance(block.mamba, SelectiveMixer) and isinstance(block.einfft, EinFFT)
    x = torch.randn(2, 9, 16)
    assert block(x).shape == x.shape


# ------------------------------------------------------------------------------------------ vision


def test_registered_in_both_tasks():
    assert set(PUBLISHED) | {"simba_nano"} <= set(list_models("simba*", task="vision"))
    assert "simba" in list_models(task="forecast")


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameter_counts_match_the_paper_within_5_percent(name):
    with torch.device("meta"):
        model = create_model(name)
    ours = n_params(model) / 1e6
    assert abs(ours - PUBLISHED[name]) / PUBLISHED[name] < 0.05, (name, ours)


def test_nano_is_a_small_image_model():
    model = nano()
    assert 1e6 <= n_params(model) <= 3e6 and model.total_stride == 4


@pytest.mark.parametrize("size", [(28, 28), (16, 24)])
def test_vision_output_shapes(size):
    model = nano().eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, *size)).shape == (2, 10)


def test_simba_s_runs_at_a_small_resolution():
    model = create_model("simba_s", num_classes=5).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 5)


def test_features_only_strides_and_channels():
    model = create_model("simba_s", features_only=True).eval()
    assert [f["reduction"] for f in model.feature_info] == [4, 8, 16, 32]
    assert [f["num_chs"] for f in model.feature_info] == [64, 128, 320, 448]
    with torch.no_grad():
        maps = model(torch.randn(1, 3, 64, 32))
    assert [tuple(m.shape) for m in maps] == [(1, 64, 16, 8), (1, 128, 8, 4), (1, 320, 4, 2), (1, 448, 2, 1)]
    small = nano(features_only=True, out_indices=(0, 2)).eval()
    with torch.no_grad():
        assert [tuple(m.shape) for m in small(torch.randn(1, 1, 28, 28))] == [(1, 32, 14, 14), (1, 96, 7, 7)]


def test_vision_save_and_load_round_trip_is_bit_exact(tmp_path):
    model = nano(scan_orders=("forward", "reverse"), fft_over_blocks=True)
    model.train()(torch.randn(4, 1, 28, 28))  # move the stem's BatchNorm statistics away from their init
    model.save_pretrained(tmp_path)
    loaded = SiMBA.from_pretrained(tmp_path)
    assert loaded.config == model.config
    x = torch.randn(2, 1, 28, 28)
    model.eval(), loaded.eval()
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert create_model("simba_nano", **dataclasses.asdict(model.config)).config == model.config


def test_vision_bad_inputs_and_configs_raise_clear_errors():
    model = nano()
    with pytest.raises(ValueError, match="built for in_chans=1"):
        model(torch.randn(1, 3, 28, 28))
    with pytest.raises(ValueError, match="divisible by its total stride 4"):
        model(torch.randn(1, 1, 28, 30))
    with pytest.raises(ValueError, match="divisible by einfft_blocks=4"):
        create_model("simba_s", dims=(64, 128, 320, 450))
    with pytest.raises(ValueError, match="1D orders"):
        create_model("simba_s", scan_orders=("row",))
    with pytest.raises(TypeError, match="unknown SiMBA overrides"):
        create_model("simba_s", mlp_ratios=(8, 8, 4, 4))


def test_vision_short_training_lowers_held_out_loss_on_digits():
    before, after = digits_held_out_losses(nano(), steps=20)
    assert after < 0.7 * before, (before, after)


# ------------------------------------------------------------------------------------- forecasting


@pytest.mark.parametrize("seq_len, n_vars", [(48, 5), (96, 1)])
def test_forecast_shapes(seq_len, n_vars):
    model = forecaster(seq_len=seq_len, n_vars=n_vars)
    assert model(torch.randn(3, seq_len, n_vars)).shape == (3, 24, n_vars)
    marks = torch.randn(3, seq_len, 4), torch.randn(3, 24, 4)  # accepted and ignored
    assert model(torch.randn(3, seq_len, n_vars), *marks).shape == (3, 24, n_vars)


def test_variates_are_forecast_independently():
    model = forecaster().eval()
    x = torch.randn(2, 48, 5)
    changed = x.clone()
    changed[..., 3] += torch.randn(2, 48)
    diff = (model(x) - model(changed)).abs().amax(dim=(0, 1))
    assert diff[3] > 0 and torch.all(diff[[0, 1, 2, 4]] == 0)


def test_forecast_save_and_load_round_trip_is_bit_exact(tmp_path):
    model = forecaster().eval()
    model.save_pretrained(tmp_path)
    loaded = SiMBAForecaster.from_pretrained(tmp_path).eval()
    x = torch.randn(2, 48, 5)
    assert torch.equal(model(x), loaded(x))


def test_forecast_bad_inputs_raise_clear_errors():
    model = forecaster()
    with pytest.raises(ValueError, match=r"x must have shape \(batch, seq_len, n_vars\) = \(batch, 48, 5\)"):
        model(torch.randn(2, 40, 5))
    with pytest.raises(ValueError, match="shorter than patch_len"):
        create_model("simba", seq_len=8, patch_len=16)
    with pytest.raises(ValueError, match="divisible by einfft_blocks"):
        create_model("simba", d_model=30)
    with pytest.raises(ValueError, match="d_model must be >= 1"):
        create_model("simba", d_model=0)


def test_forecast_short_training_lowers_validation_loss_on_etth1(shared_data):
    before, after = etth1_validation_losses("simba", shared_data)
    assert after < 0.85 * before, (before, after)
