"""The named DeiT recipe (tasks/vision_recipes.py): its hyper-parameters, LR scaling with the batch, and
``classify --recipe deit`` end to end through the command line, with explicit flags winning."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mambamixer.cli import main
from mambamixer.tasks.classify import evaluate_classify
from mambamixer.tasks.vision_recipes import get_recipe

pytest.importorskip("sklearn")  # digits


def test_deit_recipe_values_and_lr_scaling() -> None:
    r = get_recipe("deit")
    assert r.lr_for(512) == pytest.approx(5e-4) and r.lr_for(1024) == pytest.approx(1e-3)
    assert r.lr_for(128) == pytest.approx(1.25e-4)
    t = r.training
    assert (t["optimizer"], t["weight_decay"], t["schedule"], t["epochs"], t["warmup_epochs"]) == (
        "adamw", 0.05, "cosine", 300, 20.0)
    assert (t["label_smoothing"], t["ema_decay"], t["batch_size"]) == (0.1, 0.99996, 1024)
    aug = r.augment("cifar10", 32)
    assert (aug.rand_layers, aug.rand_magnitude, aug.rand_magnitude_std, aug.erase_prob, aug.hflip) == (
        2, 9.0, 0.5, 0.25, True)
    assert r.augment("digits", 8).hflip is False  # a mirrored digit is another digit
    mix = r.mixup(0.1)
    assert (mix.mixup_alpha, mix.cutmix_alpha, mix.switch_prob, mix.label_smoothing) == (0.8, 1.0, 0.5, 0.1)
    assert r.mixup(0.1, mixup_alpha=0.0).mixup_alpha == 0.0
    assert r.model_overrides("simba_s") == {"drop_path_rate": 0.1} and r.model_overrides("vim2_tiny") == {}
    assert get_recipe(None) is None and get_recipe("default") is None
    with pytest.raises(ValueError, match="unknown recipe 'deitt'"):
        get_recipe("deitt")


def _args(out: Path, *extra: str) -> list[str]:
    return ["classify", "--model", "resnet_test", "--data", "digits", "--recipe", "deit", "--epochs", "1",
            "--batch-size", "32", "--limit-train", "96", "--limit-eval", "48", "--out", str(out), "--quiet", *extra]


def test_classify_recipe_deit_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "deit"
    assert main(_args(out)) == 0
    printed = capsys.readouterr().out
    line = next(s for s in printed.splitlines() if s.startswith("recipe deit:"))
    assert "rand-m9-mstd0.5-inc1" in line and "mixup 0.8 / cutmix 1" in line and "ema 0.99996" in line
    run = json.loads((out / "checkpoint" / "run.json").read_text())
    t = run["training"]
    assert run["recipe"] == "deit" and run["eval_crop_pct"] == 0.875
    assert t["lr"] == pytest.approx(5e-4 * 32 / 512) and (t["weight_decay"], t["warmup_epochs"]) == (0.05, 20.0)
    assert (t["ema_decay"], t["min_lr"], t["schedule"]) == (0.99996, 1e-5, "cosine")
    assert run["augment"]["rand_layers"] == 2 and run["augment"]["erase_prob"] == 0.25
    assert run["mixup"]["mixup_alpha"] == 0.8 and run["mixup"]["cutmix_alpha"] == 1.0
    stored = json.loads((out / "metrics.json").read_text())
    again = evaluate_classify(out)  # evaluation reuses the run's centre crop
    assert again["test_top1"] == pytest.approx(stored["test_top1"])


def test_explicit_flags_win_over_the_recipe(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "override"
    assert main(_args(out, "--lr", "2e-3", "--mixup", "0", "--cutmix", "0", "--augment", "crop=1",
                      "--ema-decay", "0.9")) == 0
    assert "no mixup" in capsys.readouterr().out
    run = json.loads((out / "checkpoint" / "run.json").read_text())
    assert run["training"]["lr"] == 2e-3 and run["training"]["ema_decay"] == 0.9
    assert run["mixup"] is None and run["augment"]["rand_layers"] == 0
    assert run["training"]["weight_decay"] == 0.05  # the rest stays the recipe's
