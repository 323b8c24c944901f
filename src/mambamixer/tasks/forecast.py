"""Long-horizon forecasting: train a registered forecaster, pick the best epoch on validation MSE,
report test MSE/MAE over every test window, and write a self-describing run folder.

    metrics = run_forecast("dlinear", "ETTh1", horizon=96)
    evaluate_forecast("runs/forecast-dlinear-ETTh1-96-96")   # recomputes test MSE/MAE

Arguments left as None take the model's default from :data:`TRAINING_DEFAULTS`. Under
``torchrun`` the run trains with DistributedDataParallel (docs/training.md).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from mambamixer.data.forecast import ForecastData, load_forecast_data
from mambamixer.data.series_csv import typical_step
from mambamixer.io import atomic_write_json
from mambamixer.models.registry import create_model, model_task
from mambamixer.tasks.common import (
    check_out_possible,
    check_positive_int,
    check_resumable,
    data_label,
    load_run_checkpoint,
    peak_memory_mb,
    pick_device,
    prepare_out,
    resume_state,
)
from mambamixer.tasks.forecast_refit import REFIT_DIR, REFIT_STATE_NAME, check_train_on, clear_refit, refit
from mambamixer.tasks.forecast_setup import seeded_forecaster, training_loader
from mambamixer.training import distributed
from mambamixer.training.checkpoint import STATE_NAME, save_checkpoint
from mambamixer.training.distributed import Context
from mambamixer.training.plots import plot_forecast, plot_training_curves
from mambamixer.training.trainer import TrainConfig, TrainState, fit

DEFAULT_SEQ_LEN = 96
DEFAULT_EVAL_BATCH_SIZE = 256
RESERVED_OVERRIDES = ("seq_len", "horizon", "n_vars", "n_marks")  # set from the task and the data

# Training defaults per registered model; where each comes from is in docs/training.md.
# patience: epochs without validation improvement before stopping (TSLib's default is 3).
TRAINING_DEFAULTS: dict[str, dict[str, Any]] = {
    # DLinear paper / TSLib: Adam 5e-3, halved each epoch (type1), 10 epochs, batch 32.
    "dlinear": {"optimizer": "adam", "lr": 5e-3, "schedule": "halve", "epochs": 10, "batch_size": 32,
                "patience": 3},
    # iTransformer's ETTh1 script (TSLib): Adam 1e-4, type1, 10 epochs, batch 32, patience 3.
    "itransformer": {"optimizer": "adam", "lr": 1e-4, "schedule": "halve", "epochs": 10, "batch_size": 32,
                     "patience": 3},
    # PatchTST paper (ETTh1): Adam 1e-4, batch 128, 100 epochs, patience 20; cut to 20 epochs for a
    # CPU, with a cosine decay standing in for its "type3" schedule (x0.9 per epoch after 3).
    "patchtst": {"optimizer": "adam", "lr": 1e-4, "schedule": "cosine", "epochs": 20, "batch_size": 128,
                 "patience": 5},
    # TSMixer's official scripts: Adam (1e-3 in the ETTm2 script its size comes from), batch 32, 100
    # epochs with patience 5; cut to 10 epochs with patience 3 for a CPU, cosine decay (docs/baselines.md).
    "tsmixer": {"optimizer": "adam", "lr": 1e-3, "schedule": "cosine", "epochs": 10, "batch_size": 32,
                "patience": 3},
    # TSM2: AdamW 2e-4, cosine, 8 epochs, batch 64 (a first sweep on ETTh1-96), trained on MAE (the
    # lower mean validation MSE over ETTh1 96-720, ETTm1 and Weather: benchmarks/search_defaults.py,
    # docs/tsm2.md).
    "tsm2": {"optimizer": "adamw", "lr": 2e-4, "schedule": "cosine", "epochs": 8, "batch_size": 64,
             "patience": 3, "weight_decay": 0.01, "loss": "mae"},
    # SiMBA: AdamW 5e-4, cosine, 10 epochs, batch 64 (best validation MSE of an lr sweep on ETTh1-96,
    # docs/mambaout_simba.md).
    "simba": {"optimizer": "adamw", "lr": 5e-4, "schedule": "cosine", "epochs": 10, "batch_size": 64,
              "patience": 3, "weight_decay": 0.01},
}
# TSM2 at lookback 512: TSM2's recipe with lr 1e-4 (the lookback-512 grid search, docs/tsm2.md).
# MSE loss, as every lookback-512 row was run (the MAE default is chosen at lookback 96 only).
TRAINING_DEFAULTS["tsm2_512"] = {**TRAINING_DEFAULTS["tsm2"], "lr": 1e-4, "loss": "mse"}
# For forecasters registered without an entry above.
FALLBACK_DEFAULTS: dict[str, Any] = {"optimizer": "adamw", "lr": 1e-3, "schedule": "cosine", "epochs": 10,
                                     "batch_size": 32, "patience": 3, "weight_decay": 0.01}


def training_defaults(model: str) -> dict[str, Any]:
    """The full set of training hyper-parameters used when a flag is left as None."""
    base = {"optimizer": "adamw", "lr": 1e-3, "schedule": "constant", "epochs": 10, "batch_size": 32,
            "patience": None, "weight_decay": 0.0, "warmup_epochs": 0.0, "grad_clip": None, "ema_decay": None,
            "loss": "mse"}
    entry = TRAINING_DEFAULTS.get(model)
    if entry is None:  # a size of a known family ("tsm2_xyz") without its own entry takes the family's
        family = [k for k in TRAINING_DEFAULTS if model.startswith(k + "_")]
        entry = TRAINING_DEFAULTS[max(family, key=len)] if family else FALLBACK_DEFAULTS
    return {**base, **entry}


def default_seq_len(model: str) -> int:
    """The lookback a forecaster is registered with (``tsm2_512``: 512), else 96."""
    with torch.device("meta"):  # the config only: no memory, no initialisation
        net = create_model(model)
    return getattr(getattr(net, "config", None), "seq_len", DEFAULT_SEQ_LEN)


def default_out(model: str, data: str, seq_len: int, horizon: int) -> Path:
    return Path("runs") / f"forecast-{model}-{data_label(data)}-{seq_len}-{horizon}"


def predict_batch(model: nn.Module, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(prediction, target), both (batch, horizon, n_vars), of one batch ``(x, y, x_mark, y_mark)``."""
    x, y, x_mark, y_mark = batch
    return model(x, x_mark, y_mark), y


# Training losses of a forecaster, on the z-scored scale (validation and the reported figures are
# MSE/MAE whatever the loss; "mae" is neuralforecast's default, "huber" is delta 1, docs/tsm2.md).
FORECAST_LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "mse": F.mse_loss, "mae": F.l1_loss, "huber": F.smooth_l1_loss,
}


def check_loss(name: str) -> str:
    if name not in FORECAST_LOSSES:
        raise ValueError(f"loss must be one of {sorted(FORECAST_LOSSES)}, got {name!r}")
    return name


def make_forecast_loss(name: str = "mse") -> Callable[[nn.Module, Any], torch.Tensor]:
    """``loss_fn(model, batch)`` for :func:`fit`: the named loss of one batch ``(x, y, x_mark, y_mark)``
    already on the model's device, averaged over every predicted value."""
    criterion = FORECAST_LOSSES[check_loss(name)]

    def loss_fn(model: nn.Module, batch: Any) -> torch.Tensor:
        pred, y = predict_batch(model, batch)
        return criterion(pred, y)

    return loss_fn


forecast_loss = make_forecast_loss("mse")  # mean squared error of one batch


@torch.no_grad()
def forecast_errors(model: nn.Module, dataset: Dataset, batch_size: int = DEFAULT_EVAL_BATCH_SIZE,
                    device: torch.device | str | None = None, ctx: Context | None = None) -> dict[str, float]:
    """MSE and MAE over every window of ``dataset`` (no window dropped; sums accumulated in float64).

    Every window has horizon x n_vars values, so this equals the mean over windows of each
    window's error. Distributed (``ctx``), each rank takes a contiguous share of the windows and
    the sums are all-reduced: every rank returns the figures of the whole split.
    Returns ``{"mse", "mae", "windows"}``.
    """
    ctx = ctx or Context()
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    if len(dataset) == 0:  # type: ignore[arg-type]
        raise ValueError("the evaluation split has no windows")
    part = Subset(dataset, distributed.shard_range(len(dataset), ctx)) if ctx.distributed else dataset  # type: ignore[arg-type]
    loader = DataLoader(part, batch_size=batch_size, shuffle=False, drop_last=False)
    sq = ab = 0.0
    values = windows = 0
    for batch in loader:
        batch = [t.to(device) for t in batch]
        pred, y = predict_batch(model, batch)
        diff = (pred.float() - y).double()
        sq += diff.square().sum().item()
        ab += diff.abs().sum().item()
        values += diff.numel()
        windows += y.shape[0]
    model.train(was_training)
    sq, ab, values, windows = distributed.all_reduce_sum([sq, ab, values, windows], ctx)
    return {"mse": sq / values, "mae": ab / values, "windows": int(windows)}


def _plot_windows(model: nn.Module, dataset: Dataset, device: torch.device, path: Path,
                  columns: list[str], title: str) -> None:
    n = len(dataset)
    ids = sorted({0, n // 2, n - 1})
    items = [dataset[i] for i in ids]
    x, y, x_mark, y_mark = (torch.stack([it[k] for it in items]) for k in range(4))
    model.eval()
    with torch.no_grad():
        pred = model(x.to(device), x_mark.to(device), y_mark.to(device)).float().cpu()
    n_vars = x.shape[-1]
    var_ids = sorted({0, n_vars // 2, n_vars - 1})
    names = [columns[v] if v < len(columns) else f"variate {v}" for v in var_ids]
    plot_forecast(x[..., var_ids].numpy(), y[..., var_ids].numpy(), pred[..., var_ids].numpy(), path,
                  columns=names, window_ids=ids, title=title)


def run_forecast(
    model: str,
    data: str,
    horizon: int,
    seq_len: int | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    seed: int = 0,
    data_dir: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    patience: int | None = None,
    quiet: bool = False,
    model_overrides: dict[str, Any] | None = None,
    optimizer: str | None = None,
    schedule: str | None = None,
    weight_decay: float | None = None,
    warmup_epochs: float | None = None,
    grad_clip: float | None = None,
    ema_decay: float | None = None,
    eval_batch_size: int | None = None,
    device: str | torch.device | None = None,
    resume: bool = False,
    train_on: str = "train",
    missing: str = "error",
    loss: str | None = None,
) -> dict[str, Any]:
    """Train ``model`` on dataset ``data`` and write the run folder; returns the metrics dict.

    ``data`` is a dataset name (ETTh1, weather, ...) or a CSV path. ``patience=0`` disables
    early stopping. ``model_overrides`` are passed to ``create_model`` (the four shape fields
    seq_len/horizon/n_vars/n_marks are set by the task). ``batch_size`` is the global batch of
    one optimiser step (split over the processes under ``torchrun``). ``resume=True`` continues
    the interrupted run in ``out`` (same arguments) from its ``train_state.pt``. ``train_on``:
    ``"train"``, or ``"train+val"`` / ``"all"`` to refit a fresh model on those rows for the chosen
    number of epochs once validation has chosen it (``refit/``, what ``predict`` uses; see
    tasks/forecast_refit.py). ``missing``: the missing-value policy of ``load_forecast_data``. ``loss``: the
    training loss (:data:`FORECAST_LOSSES`); the best epoch is chosen on validation MSE whatever it is.
    Writes into ``out``: ``metrics.json``, ``checkpoint/``, ``train_state.pt``, ``forecast.png``,
    ``training_curves.png`` (and ``refit/``, ``refit_state.pt``).
    """
    # 1. check every argument before anything is read or written
    if model_task(model) != "forecast":  # unknown names raise ValueError with suggestions
        raise ValueError(f"model {model!r} is a {model_task(model)} model, not a forecaster")
    horizon = check_positive_int("horizon", horizon)
    check_train_on(train_on)
    seq_len = check_positive_int("seq_len", default_seq_len(model) if seq_len is None else seq_len)
    overrides = dict(model_overrides or {})
    reserved = sorted(set(overrides) & set(RESERVED_OVERRIDES))
    if reserved:
        raise ValueError(f"model overrides cannot set {reserved}: they come from the task and the data")
    given = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "patience": patience,
             "optimizer": optimizer, "schedule": schedule, "weight_decay": weight_decay,
             "warmup_epochs": warmup_epochs, "grad_clip": grad_clip, "ema_decay": ema_decay, "loss": loss}
    hp = {**training_defaults(model), **{k: v for k, v in given.items() if v is not None}}
    hp["batch_size"] = check_positive_int("batch_size", hp["batch_size"])
    loss_fn = make_forecast_loss(hp["loss"])
    eval_batch_size = check_positive_int(
        "eval_batch_size", DEFAULT_EVAL_BATCH_SIZE if eval_batch_size is None else eval_batch_size)
    if hp["patience"] == 0:
        hp["patience"] = None
    train_config = TrainConfig(
        epochs=hp["epochs"], lr=hp["lr"], optimizer=hp["optimizer"], weight_decay=hp["weight_decay"],
        schedule=hp["schedule"], warmup_epochs=hp["warmup_epochs"], grad_clip=hp["grad_clip"],
        patience=hp["patience"], quiet=quiet, desc=f"{model} epoch", ema_decay=hp["ema_decay"],
        train_label=f"train {hp['loss']}", val_label="val mse",
    )  # validates the values
    out = Path(out) if out is not None else default_out(model, data, seq_len, horizon)
    check_out_possible(out)
    if resume:
        check_resumable(out)
    ctx, dev = distributed.setup(pick_device(device))
    local_batch = distributed.local_batch_size(hp["batch_size"], ctx)

    # 2. data, model, then the output folder
    fd = load_forecast_data(data, seq_len, horizon, data_dir=data_dir, missing=missing)
    for split in ("train", "val", "test"):
        if len(getattr(fd, split)) == 0:
            raise ValueError(f"{fd.name}: the {split} split has no window of seq_len {seq_len} + "
                             f"horizon {horizon}")
    net = seeded_forecaster(model, fd, overrides, seed, ctx, dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    n_params = sum(p.numel() for p in net.parameters() if p.requires_grad)

    data_path = Path(data)
    run = {
        "task": "forecast", "model_name": model,
        "data": str(data_path.resolve()) if data_path.is_file() else data,  # what to reload
        "dataset": fd.name, "data_file": str(fd.path),
        "data_dir": str(Path(data_dir).resolve()) if data_dir is not None else None,
        "seq_len": seq_len, "horizon": horizon, "n_vars": fd.n_vars, "n_marks": fd.n_marks,
        "columns": list(fd.columns), "seed": seed, "model_overrides": overrides,
        "train_on": train_on, "missing": missing, "freq": fd.freq, "mark_names": list(fd.mark_names),
        "step": typical_step(fd.dates), "scaler": {"mean": fd.mean.tolist(), "std": fd.std.tolist()},
        "training": {**{k: hp[k] for k in ("epochs", "batch_size", "lr", "optimizer", "schedule", "weight_decay",
                                           "warmup_epochs", "grad_clip", "patience", "ema_decay", "loss")},
                     "eval_batch_size": eval_batch_size, "drop_last_train": True},
        "device": str(dev), "processes": ctx.world_size, "torch_version": torch.__version__,
    }
    state = resume_state(out, run) if resume else None  # checked before anything is written
    prepare_out(out, note=ctx.is_main and not (quiet or resume))
    if ctx.is_main and not resume:  # a refit left by an earlier run in this folder is not this run's
        clear_refit(out)
    ckpt_dir = out / "checkpoint"

    # 3. train: best epoch on validation MSE, checkpoint written at each new best
    train_loader = training_loader(fd.train, seed, ctx, local_batch, dev)

    def validate(m: nn.Module) -> float:
        return forecast_errors(m, fd.val, eval_batch_size, dev, ctx)["mse"]

    def on_best(state: TrainState) -> None:
        save_checkpoint(ckpt_dir, state.eval_model, {**run, "best_epoch": state.best_epoch,
                                                "best_val_mse": state.best_val})

    result = fit(net, train_loader, loss_fn, train_config, validate=validate, on_best=on_best,
                 device=dev, ctx=ctx, state_path=out / STATE_NAME, resume=state, state_meta={"run": run})

    # 4. evaluate the best weights on every val and test window (shared out over the processes)
    val = forecast_errors(net, fd.val, eval_batch_size, dev, ctx)
    test = forecast_errors(net, fd.test, eval_batch_size, dev, ctx)
    epochs_run = result.epochs_run
    metrics = {
        "test_mse": test["mse"], "test_mae": test["mae"], "val_mse": val["mse"], "val_mae": val["mae"],
        "test_windows": test["windows"], "val_windows": val["windows"], "train_windows": len(fd.train),
        "n_params": n_params, "train_seconds": result.train_seconds,
        "seconds_per_epoch": sum(h["seconds"] for h in result.history) / max(epochs_run, 1),
        "epochs_run": epochs_run, "best_epoch": result.best_epoch, "stopped_early": result.stopped_early,
        "peak_memory_mb": peak_memory_mb(dev),
        "config": dataclasses.asdict(net.config) if dataclasses.is_dataclass(getattr(net, "config", None))
        else {},
        "run": run, "history": result.history,
    }
    if not all(math.isfinite(metrics[k]) for k in ("test_mse", "test_mae", "val_mse", "val_mae")):
        raise ValueError(f"non-finite evaluation metrics: test MSE {test['mse']}, val MSE {val['mse']}")
    if train_on != "train":
        state = resume_state(out, run, REFIT_STATE_NAME) if resume and (out / REFIT_STATE_NAME).is_file() else None
        metrics["refit"] = refit(model, fd, run, loss_fn, train_config, result.best_epoch, local_batch,
                                    out, dev, ctx, state)
    if ctx.is_main:
        title = f"{model} on {fd.name}, lookback {seq_len}, horizon {horizon}"
        _plot_windows(net, fd.test, dev, out / "forecast.png", list(fd.columns), title)
        plot_training_curves(result.history, out / "training_curves.png", result.best_epoch, title)
        atomic_write_json(out / "metrics.json", metrics)
        print(f"{model} {fd.name} seq_len {seq_len} horizon {horizon}: "
              f"test MSE {test['mse']:.4f}  MAE {test['mae']:.4f}  (best epoch {result.best_epoch}/{epochs_run}, "
              f"{n_params:,} parameters)")
        if "refit" in metrics:
            print(f"refit on {train_on} ({metrics['refit']['windows']} windows, {result.best_epoch} epochs): "
                  f"{out / REFIT_DIR} is the model `mambamixer predict` uses")
        if not quiet:
            print(f"wrote {out}")
    return distributed.broadcast_object(metrics, ctx)  # rank 0's figures (timings, memory) on every rank


def load_forecast_run(run_dir: str | os.PathLike, data_dir: str | os.PathLike | None = None
                      ) -> tuple[Path, nn.Module, dict[str, Any], ForecastData]:  # fmt: skip
    """A finished run's ``(checkpoint folder, model, run.json, ForecastData)``: the model from its
    checkpoint, the data it was trained on (from ``data_dir``, default the run's own folder)."""
    ckpt, net, run = load_run_checkpoint(run_dir, "forecast", "a forecasting run", ("data", "seq_len", "horizon"))
    fd = load_forecast_data(run["data"], run["seq_len"], run["horizon"],
                            data_dir=data_dir if data_dir is not None else run.get("data_dir"))
    if fd.n_vars != getattr(net.config, "n_vars", fd.n_vars):
        raise ValueError(f"the data has {fd.n_vars} variates, the checkpoint expects {net.config.n_vars}")
    return ckpt, net, run, fd


def evaluate_forecast(
    run_dir: str | os.PathLike,
    data_dir: str | os.PathLike | None = None,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
) -> dict[str, Any]:
    """Reload a run's checkpoint and recompute its test MSE/MAE over every test window.

    ``run_dir`` is a run folder (holding ``checkpoint/``) or a checkpoint folder itself;
    ``data_dir`` defaults to the one the run used.
    """
    ckpt, net, run, fd = load_forecast_run(run_dir, data_dir)
    dev = pick_device(device)
    net.to(dev)
    bs = batch_size or run.get("training", {}).get("eval_batch_size", DEFAULT_EVAL_BATCH_SIZE)
    test = forecast_errors(net, fd.test, bs, dev)
    result: dict[str, Any] = {
        "test_mse": test["mse"], "test_mae": test["mae"], "test_windows": test["windows"],
        "model": run["model_name"], "data": fd.name, "seq_len": run["seq_len"], "horizon": run["horizon"],
        "checkpoint": str(ckpt),
    }
    metrics_path = ckpt.parent / "metrics.json" if ckpt.name == "checkpoint" else None
    if metrics_path is not None and metrics_path.is_file():
        try:
            stored = json.loads(metrics_path.read_text())
            result["stored_test_mse"] = stored.get("test_mse")
            result["stored_test_mae"] = stored.get("test_mae")
        except (OSError, json.JSONDecodeError):
            pass
    return result


__all__ = ["FORECAST_LOSSES", "TRAINING_DEFAULTS", "evaluate_forecast", "forecast_errors", "forecast_loss",
           "load_forecast_run", "make_forecast_loss", "predict_batch", "run_forecast", "training_defaults"]
