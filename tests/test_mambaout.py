"""MambaOut and its gated CNN block: published sizes, shapes, features_only, save/load, errors, learning."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from image_helpers import digits_held_out_losses

from mambamixer import create_model
from mambamixer.layers.gated_cnn import GatedCNNBlock
from mambamixer.models import list_models
from mambamixer.models.mambaout import MambaOut

# Published parameter counts (ImageNet-1K, 1000 classes), MambaOut paper table 1, in millions.
PUBLISHED = {"mambaout_femto": 7.3, "mambaout_kobe": 9.1, "mambaout_tiny": 26.5, "mambaout_small": 48.5,
             "mambaout_base": 84.8}  # fmt: skip


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def nano(**kw) -> MambaOut:
    torch.manual_seed(0)
    return create_model("mambaout_nano", **{"num_classes": 10, "in_chans": 1, **kw})


# ----------------------------------------------------------------------------------- gated CNN block


def test_gated_cnn_block_matches_its_definition():
    torch.manual_seed(0)
    block = GatedCNNBlock(12, conv_ratio=0.5).eval()
    x = torch.randn(2, 5, 6, 12)
    g, i, c = torch.split(block.fc1(F.layer_norm(x, (12,), block.norm.weight, block.norm.bias, 1e-6)), (32, 26, 6), -1)
    c = F.conv2d(c.permute(0, 3, 1, 2), block.conv.weight, block.conv.bias, padding=3, groups=6).permute(0, 2, 3, 1)
    expected = x + block.fc2(F.gelu(g) * torch.cat([i, c], dim=-1))
    torch.testing.assert_close(block(x), expected)


def test_gated_cnn_block_mixes_tokens_only_within_its_kernel():
    block = GatedCNNBlock(8, kernel_size=3)
    x = torch.randn(1, 7, 7, 8, requires_grad=True)
    block(x)[0, 3, 3].sum().backward()
    reach = x.grad[0].abs().sum(-1) > 0  # which pixels the centre output depends on
    expected = torch.zeros(7, 7, dtype=torch.bool)
    expected[2:5, 2:5] = True
    assert torch.equal(reach, expected)


def test_gated_cnn_block_rejects_bad_arguments():
    with pytest.raises(ValueError, match="conv_ratio"):
        GatedCNNBlock(8, conv_ratio=3.0)
    with pytest.raises(ValueError, match="odd"):
        GatedCNNBlock(8, kernel_size=4)


# ------------------------------------------------------------------------------------------ model


def test_registered_as_vision_models():
    assert set(PUBLISHED) | {"mambaout_nano"} <= set(list_models("mambaout_*", task="vision"))


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameter_counts_match_the_paper_within_1_percent(name):
    with torch.device("meta"):  # counts only: no memory, no initialisation cost
        model = create_model(name)
    ours = n_params(model) / 1e6
    assert abs(ours - PUBLISHED[name]) / PUBLISHED[name] < 0.01, (name, ours)


def test_nano_is_a_small_image_model():
    model = nano()
    assert 1e6 <= n_params(model) <= 3e6
    assert model.total_stride == 4


@pytest.mark.parametrize("name, size", [("mambaout_nano", (28, 28)), ("mambaout_nano", (32, 20)),
                                        ("mambaout_femto", (64, 64)), ("mambaout_femto", (32, 96))])  # fmt: skip
def test_output_shapes(name, size):
    model = create_model(name, num_classes=7, in_chans=2).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 2, *size)).shape == (2, 7)


def test_features_only_strides_and_channels():
    model = create_model("mambaout_femto", features_only=True).eval()
    assert [f["reduction"] for f in model.feature_info] == [4, 8, 16, 32]
    assert [f["num_chs"] for f in model.feature_info] == [48, 96, 192, 288]
    with torch.no_grad():
        maps = model(torch.randn(1, 3, 64, 96))
    assert [tuple(m.shape) for m in maps] == [(1, 48, 16, 24), (1, 96, 8, 12), (1, 192, 4, 6), (1, 288, 2, 3)]
    assert isinstance(model.head, torch.nn.Identity)
    picked = create_model("mambaout_nano", features_only=True, out_indices=(1, -1)).eval()
    with torch.no_grad():
        assert [tuple(m.shape) for m in picked(torch.randn(1, 3, 28, 28))] == [(1, 64, 7, 7), (1, 128, 7, 7)]


def test_num_classes_zero_gives_pooled_features():
    model = create_model("mambaout_nano", num_classes=0).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 28, 28)).shape == (2, 4 * 128)  # the MLP head's hidden width


def test_save_and_load_round_trip_is_bit_exact(tmp_path):
    model = nano(drop_path_rate=0.1)
    model.save_pretrained(tmp_path)
    loaded = MambaOut.from_pretrained(tmp_path)
    assert loaded.config == model.config
    x = torch.randn(3, 1, 28, 28)
    model.eval(), loaded.eval()
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    # a checkpoint rebuilds by registered name from its stored config (training/checkpoint.py)
    rebuilt = create_model("mambaout_nano", **dataclasses.asdict(model.config))
    assert rebuilt.config == model.config


def test_bad_inputs_and_configs_raise_clear_errors():
    model = nano()
    with pytest.raises(ValueError, match=r"built for in_chans=1, got an image with 3 channels"):
        model(torch.randn(1, 3, 28, 28))
    with pytest.raises(ValueError, match="divisible by its total stride 4"):
        model(torch.randn(1, 1, 30, 28))
    with pytest.raises(ValueError, match="floating-point"):
        model(torch.zeros(1, 1, 28, 28, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"expects images \(batch, 1, height, width\)"):
        model(torch.randn(1, 28, 28))
    with pytest.raises(ValueError, match="one entry per stage"):
        create_model("mambaout_femto", strides=(4, 2, 2))
    with pytest.raises(ValueError, match="out_indices"):
        create_model("mambaout_femto", features_only=True, out_indices=(4,))
    with pytest.raises(TypeError, match="unknown MambaOut overrides"):
        create_model("mambaout_femto", depth=3)


def test_short_training_lowers_held_out_loss_on_digits():
    before, after = digits_held_out_losses(nano(), steps=25)
    assert after < 0.7 * before, (before, after)
