"""The training core: schedules, early stopping, NaN handling, checkpoints, atomic writes."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from mambamixer.io import atomic_write, atomic_write_bytes
from mambamixer.models import registry
from mambamixer.models.pretrained import PretrainedMixin
from mambamixer.training import TrainConfig, fit, load_checkpoint, lr_at, save_checkpoint
from mambamixer.training.trainer import LRSchedule


@dataclass
class TinyConfig:
    n_in: int = 3
    n_out: int = 2


class Tiny(PretrainedMixin, nn.Module):
    config_class = TinyConfig

    def __init__(self, config: TinyConfig) -> None:
        super().__init__()
        self.config = config
        self.linear = nn.Linear(config.n_in, config.n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


@pytest.fixture
def tiny_registered(monkeypatch: pytest.MonkeyPatch) -> str:
    """Register a tiny model for this test only (the global registry is restored afterwards)."""
    name = "tiny_training_test"

    def builder(**overrides) -> Tiny:
        return Tiny(TinyConfig(**overrides))

    registry._ensure_loaded()
    monkeypatch.setitem(registry._ENTRYPOINTS, name, builder)
    monkeypatch.setitem(registry._TASKS, name, "forecast")
    return name


def _loader(n: int = 64, batch_size: int = 16) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, generator=g)
    y = x @ torch.randn(3, 2, generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size)


def _mse(model: nn.Module, batch) -> torch.Tensor:
    x, y = batch
    return nn.functional.mse_loss(model(x), y)


# --- schedules ---------------------------------------------------------------------------------

def test_halve_schedule_follows_tslib_type1() -> None:
    # TSLib keeps epochs 1 and 2 at lr, then halves every epoch (0-based epochs here).
    assert [lr_at("halve", 1e-2, e) for e in range(5)] == pytest.approx([1e-2, 1e-2, 5e-3, 2.5e-3, 1.25e-3])
    # constant within an epoch
    assert lr_at("halve", 1.0, 3, step_in_epoch=7, steps_per_epoch=10) == 0.25


def test_cosine_schedule_with_and_without_warmup() -> None:
    lrs = [lr_at("cosine", 1.0, e, s, steps_per_epoch=10, epochs=2) for e in range(2) for s in range(10)]
    assert lrs[0] == pytest.approx(1.0)
    assert lrs[10] == pytest.approx(0.5)  # half-way through the 20 steps
    assert lrs[-1] == pytest.approx(0.5 * (1 + math.cos(math.pi * 19 / 20)))
    assert all(a >= b for a, b in zip(lrs, lrs[1:], strict=False))
    # one warm-up epoch of 10 steps, then cosine over the remaining 10
    warm = [lr_at("cosine", 1.0, e, s, 10, 2, warmup_epochs=1) for e in range(2) for s in range(10)]
    assert warm[:10] == pytest.approx([(i + 1) / 10 for i in range(10)])
    assert warm[10] == pytest.approx(1.0)
    assert warm[15] == pytest.approx(0.5)
    assert lr_at("cosine", 1.0, 1, 9, 10, 2, min_lr=0.1) > 0.1
    assert lr_at("constant", 3e-4, 7, 5, 10, 10) == 3e-4


def test_fit_applies_the_schedule() -> None:
    torch.manual_seed(0)
    model = Tiny(TinyConfig())
    config = TrainConfig(epochs=4, lr=0.1, optimizer="adam", schedule="halve", quiet=True)
    result = fit(model, _loader(), _mse, config)
    assert [h["lr"] for h in result.history] == pytest.approx([0.1, 0.1, 0.05, 0.025])
    assert LRSchedule(config, 4)(3, 2) == pytest.approx(0.025)
    assert set(result.history[0]) >= {"epoch", "train_loss", "val_loss", "lr", "seconds"}


def test_bad_config_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="schedule"):
        TrainConfig(schedule="linear")
    with pytest.raises(ValueError, match="epochs"):
        TrainConfig(epochs=0)
    with pytest.raises(ValueError, match="optimizer"):
        TrainConfig(optimizer="sgd")


# --- early stopping ----------------------------------------------------------------------------

def test_early_stopping_stops_after_patience_and_restores_best() -> None:
    torch.manual_seed(0)
    model = Tiny(TinyConfig())
    scripted = iter([1.0, 0.5, 0.6, 0.7, 0.8, 0.1, 0.1])  # best at epoch 2, then 3 bad epochs
    snapshots: list[dict[str, torch.Tensor]] = []

    def validate(m: nn.Module) -> float:
        snapshots.append({k: v.clone() for k, v in m.state_dict().items()})
        return next(scripted)

    saved: list[int] = []
    config = TrainConfig(epochs=7, lr=0.05, optimizer="adamw", patience=3, quiet=True, grad_clip=1.0)
    result = fit(model, _loader(), _mse, config, validate=validate,
                 on_best=lambda state: saved.append(state.best_epoch))
    assert result.epochs_run == 5 and result.stopped_early
    assert result.best_epoch == 2 and result.best_val == 0.5
    assert saved == [1, 2]
    assert [h["val_loss"] for h in result.history] == [1.0, 0.5, 0.6, 0.7, 0.8]
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, snapshots[1][k])
    assert not torch.equal(model.linear.weight, snapshots[-1]["linear.weight"])


def test_no_patience_runs_every_epoch() -> None:
    model = Tiny(TinyConfig())
    losses = iter([1.0, 2.0, 3.0, 4.0])
    result = fit(model, _loader(), _mse, TrainConfig(epochs=4, quiet=True), validate=lambda m: next(losses))
    assert result.epochs_run == 4 and result.best_epoch == 1 and not result.stopped_early


# --- non-finite losses -------------------------------------------------------------------------

def test_nan_loss_raises_naming_epoch_and_step_and_keeps_best() -> None:
    torch.manual_seed(0)
    model = Tiny(TinyConfig())
    calls = {"n": 0}
    steps_per_epoch = len(_loader())

    def loss_fn(m: nn.Module, batch) -> torch.Tensor:
        calls["n"] += 1
        loss = _mse(m, batch)
        if calls["n"] == steps_per_epoch + 3:  # epoch 2, step 3
            return loss * float("nan")
        return loss

    best: list[dict[str, torch.Tensor]] = []

    def on_best(state) -> None:
        best.append({k: v.clone() for k, v in state.model.state_dict().items()})

    with pytest.raises(ValueError, match=r"epoch 2, step 3") as info:
        fit(model, _loader(), loss_fn, TrainConfig(epochs=3, lr=0.01, quiet=True),
            validate=lambda m: 1.0, on_best=on_best)
    assert "nan" in str(info.value) and "epoch 1" in str(info.value)
    assert len(best) == 1
    for k, v in model.state_dict().items():  # weights rolled back to the best epoch
        torch.testing.assert_close(v, best[0][k])


# --- checkpoints -------------------------------------------------------------------------------

def test_checkpoint_round_trip(tmp_path: Path, tiny_registered: str) -> None:
    model = registry.create_model(tiny_registered, n_in=4, n_out=3)
    run = {"model_name": tiny_registered, "data": "toy", "seed": 1}
    save_checkpoint(tmp_path / "ckpt", model, run)
    assert {p.name for p in (tmp_path / "ckpt").iterdir()} == {"model.safetensors", "config.json", "run.json"}
    loaded, loaded_run = load_checkpoint(tmp_path / "ckpt")
    assert isinstance(loaded, Tiny) and loaded.config == model.config
    assert loaded_run == run
    x = torch.randn(5, 4)
    torch.testing.assert_close(loaded(x), model(x))


def test_truncated_checkpoint_is_a_value_error(tmp_path: Path, tiny_registered: str) -> None:
    save_checkpoint(tmp_path, registry.create_model(tiny_registered), {"model_name": tiny_registered})
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-7])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_checkpoint(tmp_path)


def test_mismatched_or_incomplete_checkpoint_is_a_value_error(tmp_path: Path, tiny_registered: str) -> None:
    save_checkpoint(tmp_path, registry.create_model(tiny_registered), {"model_name": tiny_registered})
    config_path = tmp_path / "config.json"
    blob = json.loads(config_path.read_text())
    blob["config"]["n_out"] = 5  # weights no longer fit
    config_path.write_text(json.dumps(blob))
    with pytest.raises(ValueError, match="do not fit"):
        load_checkpoint(tmp_path)
    blob["config"] = {"n_in": 3, "n_out": 2, "depth": 4}  # a field the model does not know
    config_path.write_text(json.dumps(blob))
    with pytest.raises(ValueError, match="does not fit"):
        load_checkpoint(tmp_path)
    config_path.write_text("{not json")
    with pytest.raises(ValueError, match="cannot read"):
        load_checkpoint(tmp_path)
    config_path.write_text(json.dumps({**blob, "config": {"n_in": 3, "n_out": 2}}))
    (tmp_path / "run.json").write_text(json.dumps({"model_name": "no_such_model"}))
    with pytest.raises(ValueError, match="unknown model"):
        load_checkpoint(tmp_path)
    (tmp_path / "run.json").unlink()
    with pytest.raises(ValueError, match="missing"):
        load_checkpoint(tmp_path)
    with pytest.raises(ValueError, match="no checkpoint"):
        load_checkpoint(tmp_path / "nowhere")


def test_save_checkpoint_needs_a_model_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="model_name"):
        save_checkpoint(tmp_path, Tiny(TinyConfig()), {})


# --- atomic writes -----------------------------------------------------------------------------

def test_failed_atomic_write_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "metrics.json"
    atomic_write_bytes(path, b"old")

    def failing(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(b"half-writ")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(path, failing)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temporary left behind
