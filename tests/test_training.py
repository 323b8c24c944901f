"""The training core: schedules, early stopping, NaN handling, checkpoints, atomic writes, the
epoch sampler, exact resume, signals, bf16 autocast and gradient clipping."""

from __future__ import annotations

import json
import math
import os
import signal
import stat
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook
from torch.utils.data import DataLoader, TensorDataset

from mambamixer.io import atomic_write, atomic_write_bytes, atomic_write_json, save_state_dict
from mambamixer.models import registry
from mambamixer.models.pretrained import PretrainedMixin
from mambamixer.training import (
    Context,
    EpochSampler,
    TrainConfig,
    TrainingInterrupted,
    fit,
    load_checkpoint,
    load_train_state,
    lr_at,
    save_checkpoint,
    save_train_state,
)
from mambamixer.training.distributed import local_batch_size, shard_range
from mambamixer.training.ema import ModelEMA
from mambamixer.training.trainer import STOP_AFTER_ENV, LRSchedule


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


def test_saved_files_get_the_umask_mode(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        paths = [save_state_dict(tmp_path / "w.safetensors", {"a": torch.zeros(2)}),  # safetensors replaces the temp
                 atomic_write_json(tmp_path / "m.json", {}),
                 save_train_state(tmp_path / "s.pt", {"format": 1})]
        save_checkpoint(tmp_path / "ckpt", Tiny(TinyConfig()), {"model_name": "tiny"})
        paths += sorted((tmp_path / "ckpt").iterdir())
    finally:
        os.umask(old)
    assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in paths} == {p.name: "0o644" for p in paths}


# --- the epoch sampler (one process or many see the same global batches) -------------------------

@pytest.mark.parametrize("world_size", [1, 2, 4])
def test_epoch_sampler_shards_the_single_process_batches(world_size: int) -> None:
    n, global_batch, seed = 50, 8, 3
    local = local_batch_size(global_batch, Context(world_size=world_size))
    single = EpochSampler(n, seed, Context(), global_batch)
    ranks = [EpochSampler(n, seed, Context(rank=r, world_size=world_size), local) for r in range(world_size)]
    for epoch in (0, 1):
        single.set_epoch(epoch)
        whole = single.indices()
        assert len(whole) == len(single) == 48  # the tail of 2 that fills no global batch is dropped
        for r in ranks:
            r.set_epoch(epoch)
        for step in range(n // global_batch):
            union = sorted(i for r in ranks for i in r.indices()[step * local:(step + 1) * local])
            assert union == sorted(whole[step * global_batch:(step + 1) * global_batch])
    single.set_epoch(0)
    first = single.indices()
    single.set_epoch(1)
    assert single.indices() != first  # a new order each epoch
    ranks[-1].set_epoch(1, skip_samples=2 * local)  # resume after two steps
    full = EpochSampler(n, seed, Context(rank=world_size - 1, world_size=world_size), local)
    full.set_epoch(1)
    assert ranks[-1].indices() == full.indices()[2 * local:] and len(ranks[-1]) == len(full) - 2 * local


def test_epoch_sampler_smaller_than_a_batch_and_evaluation_shards() -> None:
    assert len(EpochSampler(5, 0, Context(rank=1, world_size=2), 4)) == 2  # one short step, equal on both ranks
    assert sorted(i for r in range(3) for i in shard_range(10, Context(rank=r, world_size=3))) == list(range(10))
    with pytest.raises(ValueError, match="not divisible by the 3 processes"):
        local_batch_size(32, Context(world_size=3))


# --- exact resume ------------------------------------------------------------------------------

class Noisy(nn.Module):
    """Dropout makes the loss depend on the global RNG, which a resume must restore."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 2)
        self.drop = nn.Dropout(0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.drop(x))


def _train(state_path: Path, loader_kind: str, resume: dict | None = None,
           ema_decay: float | None = None) -> tuple[nn.Module, list[dict]]:
    torch.manual_seed(0)
    model = Noisy()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(64, 3, generator=g), torch.randn(64, 2, generator=g)
    data = TensorDataset(x, y)
    if loader_kind == "epoch_sampler":  # skips by index on resume
        loader = DataLoader(data, batch_size=8, sampler=EpochSampler(64, 5, batch_size=8), generator=torch.Generator())
    else:  # a plain shuffled loader drawing from the global RNG: replayed on resume
        loader = DataLoader(data, batch_size=8, shuffle=True)
    val = (torch.randn(16, 3, generator=g), torch.randn(16, 2, generator=g))
    config = TrainConfig(epochs=3, lr=0.05, schedule="cosine", quiet=True, ema_decay=ema_decay)
    result = fit(model, loader, _mse, config, validate=lambda m: _mse(m, val).item(), state_path=state_path,
                 resume=resume)
    return model, result.history


@pytest.mark.parametrize("loader_kind", ["epoch_sampler", "shuffled_loader"])
@pytest.mark.parametrize("stop_after", [3, 8, 13])  # mid-epoch, the end of epoch 1, mid-epoch 2 (8 steps an epoch)
@pytest.mark.parametrize("ema_decay", [None, 0.9])
def test_stop_and_resume_equals_an_uninterrupted_run(loader_kind: str, stop_after: int, ema_decay: float | None,
                                                     tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, history = _train(tmp_path / "full.pt", loader_kind, ema_decay=ema_decay)
    monkeypatch.setenv(STOP_AFTER_ENV, str(stop_after))
    with pytest.raises(TrainingInterrupted) as info:
        _train(tmp_path / "part.pt", loader_kind, ema_decay=ema_decay)
    assert info.value.exit_code == 130 and info.value.state_path == tmp_path / "part.pt"
    assert f"optimiser step {stop_after}" in str(info.value) and "--resume" in str(info.value)
    monkeypatch.delenv(STOP_AFTER_ENV)
    blob = load_train_state(tmp_path / "part.pt")  # torch.load(weights_only=True)
    assert (blob["step"], blob["epoch"], blob["finished"]) == (stop_after, (stop_after - 1) // 8, False)
    assert (blob["ema"] is None) == (ema_decay is None)
    resumed, resumed_history = _train(tmp_path / "part.pt", loader_kind, resume=blob, ema_decay=ema_decay)
    for k, v in model.state_dict().items():
        assert torch.equal(resumed.state_dict()[k], v), k
    keys = ("epoch", "train_loss", "val_loss", "lr", "samples")
    assert [{k: h[k] for k in keys} for h in resumed_history] == [{k: h[k] for k in keys} for h in history]
    assert load_train_state(tmp_path / "part.pt")["finished"]


def test_sigterm_stops_after_the_step_and_saves(tmp_path: Path) -> None:
    calls = {"n": 0}

    def loss_fn(m: nn.Module, batch) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # a real signal: the handler only sets a flag
        return _mse(m, batch)

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(TrainingInterrupted) as info:
        fit(Tiny(TinyConfig()), _loader(), loss_fn, TrainConfig(epochs=2, quiet=True), state_path=tmp_path / "s.pt")
    assert info.value.signum == signal.SIGTERM and info.value.exit_code == 143
    assert "SIGTERM: stopped at epoch 1, step 3 of 4" in str(info.value)
    blob = load_train_state(tmp_path / "s.pt")
    assert (blob["step"], blob["step_in_epoch"], blob["epoch"]) == (3, 3, 0)
    assert signal.getsignal(signal.SIGTERM) is before  # the previous handler is back


def test_second_ctrl_c_stops_at_once(tmp_path: Path) -> None:
    def loss_fn(m: nn.Module, batch) -> torch.Tensor:
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)
        return _mse(m, batch)

    with pytest.raises(KeyboardInterrupt) as info:
        fit(Tiny(TinyConfig()), _loader(), loss_fn, TrainConfig(epochs=1, quiet=True), state_path=tmp_path / "s.pt")
    assert not isinstance(info.value, TrainingInterrupted) and not (tmp_path / "s.pt").exists()


def test_training_state_errors(tmp_path: Path) -> None:
    path = tmp_path / "s.pt"
    with pytest.raises(ValueError, match="nothing to resume"):
        load_train_state(path)
    fit(Tiny(TinyConfig()), _loader(), _mse, TrainConfig(epochs=1, quiet=True), state_path=path)
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match="truncated, corrupt"):
        load_train_state(path)
    torch.save({"format": 1, "config": TinyConfig()}, path)  # a pickled Python object: refused, not run
    with pytest.raises(ValueError, match="not a plain tensor file"):
        load_train_state(path)
    torch.save({"weights": torch.zeros(2)}, path)
    with pytest.raises(ValueError, match="not a mambamixer training state"):
        load_train_state(path)
    path.write_bytes(good)
    blob = load_train_state(path)
    with pytest.raises(ValueError, match="does not fit this model"):
        fit(Tiny(TinyConfig(n_out=3)), _loader(), _mse, TrainConfig(epochs=2, quiet=True), resume=blob)


def test_resume_needs_the_same_ema_setting(tmp_path: Path) -> None:
    fit(Tiny(TinyConfig()), _loader(), _mse, TrainConfig(epochs=1, quiet=True), state_path=tmp_path / "s.pt")
    blob = load_train_state(tmp_path / "s.pt")
    with pytest.raises(ValueError, match="has no EMA of the weights; resume with the same --ema-decay"):
        fit(Tiny(TinyConfig()), _loader(), _mse, TrainConfig(epochs=2, quiet=True, ema_decay=0.9), resume=blob)


def test_nan_keeps_the_last_saved_state(tmp_path: Path) -> None:
    calls = {"n": 0}

    def loss_fn(m: nn.Module, batch) -> torch.Tensor:
        calls["n"] += 1
        return _mse(m, batch) * (float("nan") if calls["n"] == 6 else 1.0)  # epoch 2, step 2

    with pytest.raises(ValueError, match=r"epoch 2, step 2 \(optimiser step 6\)"):
        fit(Tiny(TinyConfig()), _loader(), loss_fn, TrainConfig(epochs=3, quiet=True), state_path=tmp_path / "s.pt")
    blob = load_train_state(tmp_path / "s.pt")  # the state of epoch 1, untouched
    assert (blob["epoch"], blob["step"]) == (1, 4) and all(v.isfinite().all() for v in blob["model"].values())


# --- weight averaging (EMA) -------------------------------------------------------------------

def test_model_ema_follows_its_formula_with_warm_up() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    ema = ModelEMA(model, decay=0.99)
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    for t in range(30):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        model(torch.randn(8, 3))  # moves the BatchNorm statistics (copied, not averaged)
        d = min(0.99, (1 + t) / (10 + t))
        assert ema.current_decay() == d
        ema.update(model)
        for name, param in model.named_parameters():
            expected[name] = d * expected[name] + (1 - d) * param.detach()
    for name, value in ema.module.state_dict().items():
        if name in dict(model.named_parameters()):
            torch.testing.assert_close(value, expected[name], rtol=1e-5, atol=1e-6)
        else:
            assert torch.equal(value, model.state_dict()[name]), name
    assert ema.updates == 30 and not any(p.requires_grad for p in ema.module.parameters())
    with pytest.raises(ValueError, match=r"ema_decay must be in \(0, 1\)"):
        ModelEMA(model, 1.0)
    with pytest.raises(ValueError, match=r"ema_decay must be in \(0, 1\)"):
        TrainConfig(ema_decay=0.0)


def test_fit_with_ema_validates_and_keeps_the_average() -> None:
    torch.manual_seed(0)
    model = Tiny(TinyConfig())
    seen: list[nn.Module] = []
    kept: list[dict[str, torch.Tensor]] = []

    def validate(m: nn.Module) -> float:
        seen.append(m)
        return float(len(seen) != 2)  # epoch 2 is the best: 0.0, the others 1.0

    def on_best(state) -> None:
        kept.append({k: v.clone() for k, v in state.eval_model.state_dict().items()})

    result = fit(model, _loader(), _mse, TrainConfig(epochs=3, lr=0.05, quiet=True, ema_decay=0.9),
                 validate=validate, on_best=on_best)
    assert all(m is not model and isinstance(m, Tiny) for m in seen)  # the EMA copy is validated
    assert result.best_epoch == 2 and len(kept) == 2
    for k, v in model.state_dict().items():  # the model ends with the averaged weights of epoch 2
        assert torch.equal(v, kept[1][k]), k
    torch.manual_seed(0)
    raw = Tiny(TinyConfig())
    fit(raw, _loader(), _mse, TrainConfig(epochs=2, lr=0.05, quiet=True))
    assert not torch.equal(raw.linear.weight, model.linear.weight)  # the average is not the last step


# --- numerics ----------------------------------------------------------------------------------

def test_bf16_autocast_on_cpu() -> None:
    torch.manual_seed(0)
    model = Tiny(TinyConfig())
    seen: list[tuple[bool, torch.dtype]] = []

    def loss_fn(m: nn.Module, batch) -> torch.Tensor:
        x, y = batch
        out = m(x)
        seen.append((torch.is_autocast_enabled("cpu"), out.dtype))
        return nn.functional.mse_loss(out.float(), y)

    result = fit(model, _loader(), loss_fn, TrainConfig(epochs=4, lr=0.05, bf16=True, quiet=True))
    assert set(seen) == {(True, torch.bfloat16)}  # the forward ran in bfloat16 ...
    assert all(p.dtype == torch.float32 for p in model.parameters())  # ... the weights stay float32
    assert result.history[-1]["train_loss"] < 0.5 * result.history[0]["train_loss"]


@pytest.mark.parametrize("clip", [None, 1e-3])
def test_grad_clip_bounds_the_gradient_norm(clip: float | None) -> None:
    norms: list[float] = []

    def record(optimizer: torch.optim.Optimizer, args, kwargs) -> None:
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        norms.append(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item())

    handle = register_optimizer_step_pre_hook(record)
    try:
        fit(Tiny(TinyConfig()), _loader(), _mse, TrainConfig(epochs=1, quiet=True, grad_clip=clip))
    finally:
        handle.remove()
    assert len(norms) == 4
    assert max(norms) <= 1e-3 * (1 + 1e-4) if clip else min(norms) > 1e-2


def test_optimizer_is_fused_and_exempts_biases_and_norms_from_weight_decay():
    from mambamixer.training.trainer import TrainConfig, build_optimizer

    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))
    for name in ("adamw", "adam"):
        opt = build_optimizer(model, TrainConfig(epochs=1, lr=1e-3, optimizer=name, weight_decay=0.05))
        assert opt.defaults["fused"] is True  # one fused update of every parameter (CPU here)
        decayed, exempt = opt.param_groups
        assert [p.shape for p in decayed["params"]] == [(8, 4), (2, 8)] and decayed["weight_decay"] == 0.05
        assert len(exempt["params"]) == 4 and exempt["weight_decay"] == 0.0  # 2 biases, LayerNorm weight and bias


def test_resuming_a_state_saved_before_the_fused_update_keeps_it_fused():
    from mambamixer.training.trainer import TrainConfig, TrainState, build_optimizer

    config = TrainConfig(epochs=1, lr=1e-3)
    model = nn.Linear(3, 2)
    groups = [{"params": [model.weight], "weight_decay": config.weight_decay},
              {"params": [model.bias], "weight_decay": 0.0}]
    old = torch.optim.AdamW(groups, lr=1e-3)  # fused=None: how earlier runs saved their state
    model(torch.randn(4, 3)).sum().backward()
    old.step()
    state = TrainState(model, old, LRSchedule(config, 1))
    blob = state.state_dict(rng=[])
    assert [g["fused"] for g in blob["optimizer"]["param_groups"]] == [None, None]
    resumed = TrainState(model, build_optimizer(model, config), LRSchedule(config, 1))
    resumed.load_state_dict(blob)
    assert [g["fused"] for g in resumed.optimizer.param_groups] == [True, True]
    assert torch.equal(resumed.optimizer.state[model.weight]["exp_avg"], old.state[model.weight]["exp_avg"])
    model(torch.randn(4, 3)).sum().backward()
    resumed.optimizer.step()  # the fused kernel accepts the loaded step counters
