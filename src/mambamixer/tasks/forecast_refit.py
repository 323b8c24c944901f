"""Refit a forecaster on more of its series once validation has chosen the epoch count.

A run first trains on the training rows and keeps its best epoch on validation MSE (that model
is the one scored on test and saved in ``checkpoint/``). With ``train_on="train+val"`` or
``"all"``, a fresh model (same seed, same recipe) then trains on the training and validation rows,
or on every row of the file, for exactly that many epochs, replaying the same learning-rate
schedule, and the last epoch's weights are saved in ``refit/``: the model that ``predict`` uses,
since a forecast of the future should see the most recent data. Its inputs are standardised with
the training rows' statistics, like the validated model's, so both share one scaler.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mambamixer.data.forecast import ForecastData, ForecastWindows, time_features
from mambamixer.data.series_csv import read_series
from mambamixer.tasks.forecast_setup import seeded_forecaster, training_loader
from mambamixer.training.checkpoint import save_checkpoint
from mambamixer.training.distributed import Context
from mambamixer.training.trainer import TrainConfig, TrainState, fit

TRAIN_ON = ("train", "train+val", "all")
REFIT_DIR = "refit"
REFIT_STATE_NAME = "refit_state.pt"


def clear_refit(out: Path) -> None:
    """Remove the refit of an earlier run in ``out`` (a fresh run must never predict with it)."""
    shutil.rmtree(out / REFIT_DIR, ignore_errors=True)
    (out / REFIT_STATE_NAME).unlink(missing_ok=True)


def check_train_on(train_on: str) -> str:
    if train_on not in TRAIN_ON:
        raise ValueError(f"train_on must be one of {', '.join(TRAIN_ON)}, got {train_on!r}")
    return train_on


def refit_windows(fd: ForecastData, train_on: str, missing: str) -> ForecastWindows:
    """The windows of a refit: rows ``[0, end of validation)`` for ``"train+val"``, every row of
    the file for ``"all"``, standardised with the training rows' mean and std."""
    if train_on == "train+val":
        rows = np.concatenate([fd.train.data, fd.val.data[fd.seq_len:]])
        marks = np.concatenate([fd.train.marks, fd.val.marks[fd.seq_len:]])
    else:
        series = read_series(fd.path, missing, fd.columns)
        rows = np.ascontiguousarray(fd.transform(series.values), dtype=np.float32)
        marks, _ = time_features(series.dates, fd.freq)
    return ForecastWindows(rows, marks, fd.seq_len, fd.horizon, split=train_on, start=0)


def refit(model: str, fd: ForecastData, run: dict[str, Any], loss_fn: Callable[[nn.Module, Any], torch.Tensor],
          config: TrainConfig, epochs: int, local_batch: int, out: Path, dev: torch.device, ctx: Context,
          resume: dict[str, Any] | None) -> dict[str, Any]:  # fmt: skip
    """Train a fresh ``model`` on the rows ``run["train_on"]`` names for ``epochs`` epochs of
    ``config``'s schedule (``loss_fn(model, batch)`` as in :func:`fit`); saves ``out/refit/`` after
    every epoch and returns its summary for metrics.json. ``resume``: the state of an
    interrupted refit (``out/refit_state.pt``)."""
    windows = refit_windows(fd, run["train_on"], run["missing"])
    net = seeded_forecaster(model, fd, run["model_overrides"], run["seed"], ctx, dev)
    loader = training_loader(windows, run["seed"], ctx, local_batch, dev)
    refit_config = dataclasses.replace(config, stop_epoch=epochs, keep="last", patience=None,
                                       desc=f"{config.desc} (refit on {run['train_on']})")
    def on_epoch(state: TrainState) -> None:  # "complete" only once the last epoch is saved
        save_checkpoint(out / REFIT_DIR, state.eval_model,
                        {**run, "refit": {"on": run["train_on"], "epochs": epochs, "epochs_done": state.epoch,
                                          "complete": state.epoch == epochs}})

    result = fit(net, loader, loss_fn, refit_config, on_best=on_epoch, device=dev, ctx=ctx,
                 state_path=out / REFIT_STATE_NAME, resume=resume, state_meta={"run": run})
    last = result.history[-1] if result.history else {}
    return {"on": run["train_on"], "epochs": epochs, "windows": len(windows), "rows": int(windows.data.shape[0]),
               "last_train_loss": last.get("train_loss"), "train_seconds": result.train_seconds,
               "checkpoint": REFIT_DIR}

