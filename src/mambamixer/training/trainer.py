"""The training loop, written once for every task: optimiser, LR schedule, early stopping.

A task supplies a ``loss_fn(model, batch) -> scalar`` (the mean loss of one batch) and,
optionally, a ``validate(model) -> float | dict``; :func:`fit` does the rest:

    result = fit(model, train_loader, loss_fn, TrainConfig(epochs=10, lr=1e-3),
                 validate=lambda m: val_mse(m), on_best=lambda state: save(state.model))

Everything a run would need to resume lives in one :class:`TrainState` (model, optimiser,
schedule, epoch, step, best, history, RNG), so exact resume and DDP can be added around it
without touching the tasks.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from mambamixer.training.seed import rng_state

SCHEDULES = ("halve", "cosine", "constant")
OPTIMIZERS = ("adamw", "adam")


@dataclass
class TrainConfig:
    """Hyper-parameters of the loop (the task fills them from its per-model defaults)."""

    epochs: int = 10
    lr: float = 1e-3
    optimizer: str = "adamw"  # "adamw" or "adam"
    weight_decay: float = 0.0  # biases, norms and `model.no_weight_decay()` names are exempt
    schedule: str = "constant"  # "halve" (TSLib type1), "cosine" or "constant"
    warmup_epochs: float = 0.0  # linear warm-up from ~0, in (fractional) epochs
    min_lr: float = 0.0  # floor of the cosine schedule
    grad_clip: float | None = None  # max global gradient norm; None = no clipping
    patience: int | None = None  # epochs without validation improvement before stopping
    quiet: bool = False  # no progress bars or epoch lines
    desc: str = "epoch"  # progress-bar label
    bf16: bool = False  # run loss_fn (forward and loss) under bfloat16 autocast; weights stay float32
    monitor: str = "val_loss"  # key of validate()'s dict that picks the best epoch (lower is better)

    def __post_init__(self) -> None:
        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise ValueError(f"epochs must be a positive integer, got {self.epochs!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.weight_decay < 0 or self.warmup_epochs < 0 or self.min_lr < 0:
            raise ValueError("weight_decay, warmup_epochs and min_lr must be >= 0")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ValueError(f"grad_clip must be positive, got {self.grad_clip!r}")
        if self.patience is not None and (not isinstance(self.patience, int) or self.patience < 1):
            raise ValueError(f"patience must be a positive integer, got {self.patience!r}")


def autocast(device: torch.device | str, enabled: bool) -> contextlib.AbstractContextManager:
    """bfloat16 autocast on ``device`` when ``enabled`` (CPU and CUDA), else a no-op context."""
    device = torch.device(device)
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def lr_at(
    schedule: str,
    base_lr: float,
    epoch: int,
    step_in_epoch: int = 0,
    steps_per_epoch: int = 1,
    epochs: int = 1,
    warmup_epochs: float = 0.0,
    min_lr: float = 0.0,
) -> float:
    """Learning rate of one optimiser step (``epoch`` and ``step_in_epoch`` count from 0).

    - ``"halve"``: Time-Series-Library's ``lradj="type1"`` exactly as its loop applies it:
      ``lr * 0.5 ** max(epoch - 1, 0)``, i.e. epochs 1 and 2 (1-based) run at ``lr``, then
      each epoch halves it (TSLib adjusts after epoch e with ``0.5 ** (e - 1)``).
    - ``"cosine"``: per-step cosine decay from ``lr`` to ``min_lr`` over the steps after warm-up.
    - ``"constant"``: ``lr``.

    With ``warmup_epochs > 0`` the first ``round(warmup_epochs * steps_per_epoch)`` steps ramp
    linearly up to the schedule's value.
    """
    step = epoch * steps_per_epoch + step_in_epoch
    warmup = round(warmup_epochs * steps_per_epoch)
    if schedule == "halve":
        lr = base_lr * 0.5 ** max(epoch - 1, 0)
    elif schedule == "cosine":
        total = max(epochs * steps_per_epoch - warmup, 1)
        progress = min(max(step - warmup, 0) / total, 1.0)
        lr = min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
    elif schedule == "constant":
        lr = base_lr
    else:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if step < warmup:
        lr *= (step + 1) / warmup
    return lr


class LRSchedule:
    """A stateless schedule: the LR is a function of (epoch, step), so resuming needs no state."""

    def __init__(self, config: TrainConfig, steps_per_epoch: int):
        self.config = config
        self.steps_per_epoch = steps_per_epoch

    def __call__(self, epoch: int, step_in_epoch: int = 0) -> float:
        c = self.config
        return lr_at(c.schedule, c.lr, epoch, step_in_epoch, self.steps_per_epoch, c.epochs,
                     c.warmup_epochs, c.min_lr)


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """Adam or AdamW; with weight decay, 1-D parameters and ``no_weight_decay()`` names are exempt."""
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()

    def decays(name: str, p: torch.Tensor) -> bool:
        return p.ndim > 1 and name not in skip and name.rsplit(".", 1)[-1] not in skip

    decay = [p for n, p in params if decays(n, p)]
    no_decay = [p for n, p in params if not decays(n, p)]
    groups = [g for g in ({"params": decay, "weight_decay": config.weight_decay},
                          {"params": no_decay, "weight_decay": 0.0}) if g["params"]]
    cls = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    return cls(groups, lr=config.lr)


@dataclass
class TrainState:
    """Everything that changes during a run, in one place (what a resume would restore)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: LRSchedule
    epoch: int = 0  # epochs completed
    step: int = 0  # optimiser steps taken
    best_val: float = math.inf  # best monitored loss so far
    best_epoch: int = 0  # 1-based epoch of best_val; 0 = none yet
    best_weights: dict[str, torch.Tensor] | None = None  # CPU copy of the best model's weights
    bad_epochs: int = 0  # epochs since the last improvement
    history: list[dict[str, Any]] = field(default_factory=list)
    generator: torch.Generator | None = None  # the data loader's shuffling generator

    def state_dict(self) -> dict[str, Any]:
        """The counters, optimiser and RNG states (model weights are saved separately)."""
        return {
            "epoch": self.epoch, "step": self.step, "best_val": self.best_val,
            "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs,
            "history": list(self.history), "optimizer": self.optimizer.state_dict(),
            "rng": rng_state(self.generator),
        }


@dataclass
class TrainResult:
    """What :func:`fit` returns; the model itself ends with its best weights loaded."""

    history: list[dict[str, Any]]
    best_epoch: int
    best_val: float
    epochs_run: int
    train_seconds: float
    stopped_early: bool
    config: dict[str, Any]


def move_to(batch: Any, device: torch.device | str) -> Any:
    """Move a tensor, or a (nested) tuple/list/dict of tensors, to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (tuple, list)):
        return type(batch)(move_to(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: move_to(v, device) for k, v in batch.items()}
    return batch


def _batch_size(batch: Any) -> int:
    first = batch
    while isinstance(first, (tuple, list)):
        first = first[0]
    if isinstance(first, dict):
        first = next(iter(first.values()))
    return int(first.shape[0])


def _monitored(result: float | Mapping[str, float], key: str) -> tuple[float, dict[str, float]]:
    """(monitored value, metrics for the history) from what ``validate`` returned."""
    if isinstance(result, Mapping):
        if key not in result:
            raise KeyError(f"validate() returned {sorted(result)}, which lacks the monitored key {key!r}")
        return float(result[key]), {k: float(v) for k, v in result.items()}
    return float(result), {}


def _restore_best(state: TrainState) -> None:
    if state.best_weights is not None:
        state.model.load_state_dict(state.best_weights)


def fit(
    model: nn.Module,
    train_loader: Iterable,
    loss_fn: Callable[[nn.Module, Any], torch.Tensor],
    config: TrainConfig,
    *,
    validate: Callable[[nn.Module], float | Mapping[str, float]] | None = None,
    on_best: Callable[[TrainState], None] | None = None,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> TrainResult:
    """Train ``model`` in place and leave it holding the weights of its best epoch.

    ``loss_fn(model, batch)`` gets the batch already on ``device`` and returns the batch's
    mean loss; with ``config.bf16`` it runs under bfloat16 autocast. ``validate(model)`` (called
    under ``no_grad`` in eval mode) returns the loss monitored for early stopping and best-epoch
    selection, or a dict of validation metrics that are all added to the epoch's history and whose
    ``config.monitor`` entry is monitored (lower is better); without ``validate`` the training loss
    is monitored. ``on_best(state)`` runs after each new best epoch (e.g. to save a checkpoint).
    A non-finite loss raises ``ValueError`` naming the epoch and step, after restoring the best
    weights (a checkpoint written by ``on_best`` is left untouched).
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(device)
    try:
        steps_per_epoch = len(train_loader)  # type: ignore[arg-type]
    except TypeError:
        steps_per_epoch = 0
    if steps_per_epoch < 1:
        raise ValueError("the training data yields no batches (is the dataset smaller than a batch?)")
    optimizer = build_optimizer(model, config)
    state = TrainState(model, optimizer, LRSchedule(config, steps_per_epoch), generator=generator)
    start = time.perf_counter()
    stopped_early = False

    for epoch in range(state.epoch, config.epochs):
        model.train()
        t0 = time.perf_counter()
        total, count = 0.0, 0
        bar = tqdm(train_loader, desc=f"{config.desc} {epoch + 1}/{config.epochs}", disable=config.quiet,
                   leave=False, dynamic_ncols=True)
        lr = epoch_lr = state.schedule(epoch, 0)
        for i, batch in enumerate(bar):
            lr = state.schedule(epoch, i)
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch = move_to(batch, device)
            with autocast(device, config.bf16):
                loss = loss_fn(model, batch)
            if not torch.isfinite(loss.detach()).all():
                _restore_best(state)
                kept = f"the best weights (epoch {state.best_epoch}) are kept" if state.best_epoch else (
                    "no epoch finished, so there are no best weights")
                raise ValueError(f"training loss is {loss.item()} at epoch {epoch + 1}, step {i + 1} "
                                 f"(optimiser step {state.step + 1}); stopped, {kept}. "
                                 f"Try a lower learning rate or gradient clipping.")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            state.step += 1
            n = _batch_size(batch)
            total += loss.item() * n
            count += n
            if i % 20 == 0 or i == steps_per_epoch - 1:
                bar.set_postfix(loss=f"{total / count:.4f}", lr=f"{lr:.2e}", refresh=False)
        bar.close()
        train_loss = total / max(count, 1)
        train_seconds = time.perf_counter() - t0

        val_loss = None
        val_metrics: dict[str, float] = {}
        if validate is not None:
            model.eval()
            with torch.no_grad():
                val_loss, val_metrics = _monitored(validate(model), config.monitor)
            model.train()
            if not math.isfinite(val_loss):
                _restore_best(state)
                what = "validation loss" if config.monitor == "val_loss" else config.monitor
                raise ValueError(f"{what} is {val_loss} after epoch {epoch + 1}; stopped, "
                                 f"the best weights (epoch {state.best_epoch}) are kept")
        monitored = val_loss if val_loss is not None else train_loss
        state.epoch = epoch + 1
        improved = monitored < state.best_val
        if improved:
            state.best_val, state.best_epoch, state.bad_epochs = monitored, epoch + 1, 0
            state.best_weights = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        else:
            state.bad_epochs += 1
        seconds = time.perf_counter() - t0
        # seconds: the whole epoch, validation included; train_seconds: the training steps only
        # a dict from validate() is stored as it is (its "val_loss", if any, is the history's)
        state.history.append({
            "epoch": epoch + 1, "train_loss": train_loss,
            "val_loss": val_metrics.get("val_loss") if val_metrics else val_loss, **val_metrics,
            "lr": epoch_lr, "seconds": seconds, "train_seconds": train_seconds, "samples": count,
        })
        if not config.quiet:
            val_text = "".join(f"  {k} {v:.4f}" for k, v in val_metrics.items()) if val_metrics else (
                f"  val {val_loss:.4f}" if val_loss is not None else "")
            tqdm.write(f"{config.desc} {epoch + 1}/{config.epochs}  train {train_loss:.4f}{val_text}"
                       f"  lr {epoch_lr:.2e}  {seconds:.1f}s{'  *' if improved else ''}")
        if improved and on_best is not None:
            on_best(state)
        if config.patience is not None and state.bad_epochs >= config.patience:
            stopped_early = epoch + 1 < config.epochs
            if not config.quiet and stopped_early:
                tqdm.write(f"early stopping: no improvement for {config.patience} epochs "
                           f"(best epoch {state.best_epoch})")
            break

    _restore_best(state)
    return TrainResult(
        history=state.history, best_epoch=state.best_epoch, best_val=state.best_val,
        epochs_run=state.epoch, train_seconds=time.perf_counter() - start,
        stopped_early=stopped_early, config=asdict(config),
    )
