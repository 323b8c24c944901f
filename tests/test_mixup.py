"""Mixup / CutMix (data/mixup.py): soft targets that sum to one, the convex combination, the pasted box with
its area-corrected lambda, the switch, seeding, and the loss on soft targets."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mambamixer.data.mixup import Mixup, MixupConfig, smooth_one_hot
from mambamixer.tasks.classify import classification_loss


def _batch(n: int = 8, classes: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 3, 16, 16, generator=g), torch.randint(0, classes, (n,), generator=g)


def test_smoothed_targets_are_those_of_cross_entropy() -> None:
    logits, labels = torch.randn(6, 5), torch.randint(0, 5, (6,))
    torch.testing.assert_close(F.cross_entropy(logits, smooth_one_hot(labels, 5, 0.1)),
                               F.cross_entropy(logits, labels, label_smoothing=0.1))


def test_mixup_is_the_stated_convex_combination() -> None:
    x, y = _batch()
    torch.manual_seed(0)
    mix = Mixup(MixupConfig(mixup_alpha=0.8, cutmix_alpha=0.0, label_smoothing=0.1), 5)
    mixed, targets = mix(x, y)
    lam = mix.last_lam
    assert mix.last_mode == "mixup" and 0 < lam < 1
    torch.testing.assert_close(mixed, lam * x + (1 - lam) * x.flip(0))
    expected = lam * smooth_one_hot(y, 5, 0.1) + (1 - lam) * smooth_one_hot(y.flip(0), 5, 0.1)
    torch.testing.assert_close(targets, expected)
    torch.testing.assert_close(targets.sum(dim=1), torch.ones(8))


def test_cutmix_pastes_one_box_with_the_kept_area_as_lambda() -> None:
    x, y = _batch()
    mix = Mixup(MixupConfig(mixup_alpha=0.0, cutmix_alpha=1.0, label_smoothing=0.0), 5)
    for seed in range(5):
        torch.manual_seed(seed)
        mixed, targets = mix(x, y)
        assert mix.last_mode == "cutmix"
        pasted = (mixed != x).any(dim=1)  # (batch, H, W); random images differ everywhere from their reverse
        assert torch.equal(mixed[pasted[:, None].expand_as(x)], x.flip(0)[pasted[:, None].expand_as(x)])
        rows, cols = pasted[0].any(dim=1).nonzero(), pasted[0].any(dim=0).nonzero()
        if len(rows):  # one rectangle: every pixel of its bounding box is pasted
            assert pasted[0, rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()
        kept = 1 - pasted[0].float().mean().item()
        assert mix.last_lam == pytest.approx(kept)
        torch.testing.assert_close(targets.sum(dim=1), torch.ones(8))
        assert targets[0, y[0]].item() >= mix.last_lam - 1e-6


def test_switch_chooses_cutmix_about_half_the_time_and_is_seeded() -> None:
    x, y = _batch()
    mix = Mixup(MixupConfig(), 5)
    torch.manual_seed(0)
    modes, lams = [], []
    for _ in range(200):
        mix(x, y)
        modes.append(mix.last_mode)
        lams.append(mix.last_lam)
    assert 0.35 < modes.count("cutmix") / 200 < 0.65 and "none" not in modes
    torch.manual_seed(0)
    again = []
    for _ in range(200):
        mix(x, y)
        again.append(mix.last_lam)
    assert again == lams


def test_no_mixing_gives_smoothed_one_hot_targets() -> None:
    x, y = _batch()
    mixed, targets = Mixup(MixupConfig(prob=0.0), 5)(x, y)
    assert torch.equal(mixed, x)
    torch.testing.assert_close(targets, smooth_one_hot(y, 5, 0.1))
    with pytest.raises(ValueError, match="alpha"):
        MixupConfig(mixup_alpha=-1)


def test_classification_loss_takes_soft_targets_without_smoothing_them_again() -> None:
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 5))
    x, y = _batch()
    soft = smooth_one_hot(y, 5, 0.1)
    torch.testing.assert_close(classification_loss(model, x, soft, label_smoothing=0.1),
                               classification_loss(model, x, y, label_smoothing=0.1))
