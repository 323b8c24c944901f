"""The training loop, written once for every task: optimiser, LR schedule, early stopping.

A task supplies a ``loss_fn(model, batch) -> scalar`` (the mean loss of one batch) and,
optionally, a ``validate(model) -> float | dict``; :func:`fit` does the rest:

    result = fit(model, train_loader, loss_fn, TrainConfig(epochs=10, lr=1e-3),
                 validate=lambda m: val_mse(m), on_best=lambda state: save(state.model))

Everything a run needs to resume lives in one :class:`TrainState` (model, optimiser, schedule,
epoch and step, best, history, RNG). With ``state_path`` it is saved at the end of every epoch
and when SIGINT/SIGTERM arrives; ``resume=load_train_state(path)`` continues a run exactly where
it stopped, mid-epoch included. With a distributed ``ctx`` (``training.distributed``) the model
is trained in DistributedDataParallel and ranks agree on every stop.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from mambamixer.training import distributed
from mambamixer.training.checkpoint import STATE_FORMAT, plain, save_train_state
from mambamixer.training.distributed import Context, EpochSampler
from mambamixer.training.ema import ModelEMA, check_ema_decay
from mambamixer.training.seed import rng_state, set_rng_state

# Testing aid: act as if SIGINT arrived once this many optimiser steps are done (CLI included).
STOP_AFTER_ENV = "MAMBAMIXER_STOP_AFTER_STEPS"

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
    # the epoch line's names for the training loss and a float validation figure, e.g. "train mae"
    # and "val mse" when a forecaster trains on one error and is chosen on another
    train_label: str = "train"
    val_label: str = "val"
    bf16: bool = False  # run loss_fn (forward and loss) under bfloat16 autocast; weights stay float32
    monitor: str = "val_loss"  # key of validate()'s dict that picks the best epoch (lower is better)
    ema_decay: float | None = None  # keep an EMA of the weights (training/ema.py); it is validated and kept
    stop_epoch: int | None = None  # stop after this many epochs; the schedule still spans `epochs` (refits)
    keep: str = "best"  # the weights kept: "best" (the best epoch's) or "last" (the last epoch's, e.g. a refit)

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
        if self.ema_decay is not None:
            check_ema_decay(self.ema_decay)
        if self.stop_epoch is not None and (not isinstance(self.stop_epoch, int)
                                            or not 1 <= self.stop_epoch <= self.epochs):
            raise ValueError(f"stop_epoch must be an integer in [1, epochs={self.epochs}], got {self.stop_epoch!r}")
        if self.keep not in ("best", "last"):
            raise ValueError(f"keep must be 'best' or 'last', got {self.keep!r}")

    @property
    def last_epoch(self) -> int:
        """The number of epochs that run (``stop_epoch`` when set, else ``epochs``)."""
        return self.stop_epoch or self.epochs


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
    # the fused kernel updates every parameter in one pass (on the CPU the default is a loop over
    # the parameters): 3.5-6% more training images/s for vim2_femto (benchmarks/train_step.py);
    # it needs floating-point CPU or CUDA tensors
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for _, p in params)
    return cls(groups, lr=config.lr, fused=fused or None)


@dataclass
class TrainState:
    """Everything that changes during a run, in one place (what a resume restores)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: LRSchedule
    epoch: int = 0  # epochs completed
    step: int = 0  # optimiser steps taken
    step_in_epoch: int = 0  # optimiser steps of the current, unfinished epoch (resume mid-epoch)
    best_val: float = math.inf  # best monitored loss so far
    best_epoch: int = 0  # 1-based epoch of best_val; 0 = none yet
    best_weights: dict[str, torch.Tensor] | None = None  # CPU copy of the best model's weights
    bad_epochs: int = 0  # epochs since the last improvement
    history: list[dict[str, Any]] = field(default_factory=list)
    generator: torch.Generator | None = None  # the data loader's shuffling generator
    finished: bool = False  # every epoch run, or stopped early
    stopped_early: bool = False
    epoch_rng: dict[str, Any] | None = None  # RNG states at the start of the current epoch
    seconds: float = 0.0  # wall time of fit before this process (resumed runs)
    ema: ModelEMA | None = None  # the weight average, when TrainConfig.ema_decay is set

    @property
    def eval_model(self) -> nn.Module:
        """The model that is validated and whose weights are kept: the EMA copy when there is one."""
        return self.ema.module if self.ema is not None else self.model

    def state_dict(self, rng: list[dict[str, Any]], epoch_loss: tuple[float, float] = (0.0, 0.0),
                   meta: dict[str, Any] | None = None) -> dict[str, Any]:
        """What ``train_state.pt`` holds; ``rng``: every rank's RNG states (``{"now", "epoch_start"}``),
        ``epoch_loss``: the (loss sum, samples) of the unfinished epoch over all ranks."""
        return {
            "format": STATE_FORMAT,
            "model": {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()},
            "best_weights": self.best_weights, "optimizer": self.optimizer.state_dict(),
            "epoch": self.epoch, "step": self.step, "step_in_epoch": self.step_in_epoch,
            "best_val": self.best_val, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs,
            "history": list(self.history), "finished": self.finished, "stopped_early": self.stopped_early,
            "epoch_loss_sum": float(epoch_loss[0]), "epoch_samples": float(epoch_loss[1]),
            "seconds": self.seconds, "rng": rng, "meta": plain(meta or {}),
            "ema": self.ema.state_dict() if self.ema is not None else None,
        }

    def load_state_dict(self, blob: dict[str, Any]) -> None:
        """Restore weights, optimiser and counters (RNG states are restored by :func:`fit` when it
        reaches the saved step). A state of another model raises ``ValueError``."""
        try:
            self.model.load_state_dict(blob["model"], strict=True)
        except RuntimeError as err:
            raise ValueError(f"the training state does not fit this model: {err}") from err
        saved = blob["optimizer"]
        if len(saved.get("param_groups", ())) == len(self.optimizer.param_groups):
            # the kernel choice (fused, foreach) is this run's, not the saved run's: a state saved
            # before the fused update would otherwise turn it off again
            kernel = [{k: g[k] for k in ("fused", "foreach") if k in g} for g in self.optimizer.param_groups]
            saved = {**saved, "param_groups": [{**g, **k} for g, k in zip(saved["param_groups"], kernel, strict=True)]}
        try:
            self.optimizer.load_state_dict(saved)
        except (ValueError, KeyError, RuntimeError) as err:
            raise ValueError(f"the optimiser state does not fit this model: {err}") from err
        for key in ("epoch", "step", "step_in_epoch", "best_epoch", "bad_epochs"):
            setattr(self, key, int(blob[key]))
        self.best_val = float(blob["best_val"])
        self.best_weights = blob.get("best_weights")
        self.history = list(blob["history"])
        self.finished, self.stopped_early = bool(blob["finished"]), bool(blob.get("stopped_early", False))
        self.seconds = float(blob.get("seconds", 0.0))
        if (self.ema is None) != (blob.get("ema") is None):
            have = "has an" if blob.get("ema") is not None else "has no"
            raise ValueError(f"the training state {have} EMA of the weights; resume with the same --ema-decay")
        if self.ema is not None:
            self.ema.load_state_dict(blob["ema"])


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


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped :func:`fit` after an optimiser step; the state is saved (when
    :func:`fit` had a ``state_path``) and ``exit_code`` is the shell's 128 + signal number."""

    def __init__(self, message: str, signum: int, state_path: Path | None) -> None:
        super().__init__(message)
        self.signum, self.state_path = signum, state_path

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class _StopRequest:
    """SIGINT/SIGTERM become a flag that :func:`fit` checks after each optimiser step (a second
    Ctrl-C stops at once, without saving)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, announce: bool) -> None:
        self.signum: int | None = None
        self.announce = announce

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = self.signum or signum
        if self.announce:
            sys.stderr.write(f"\n{signal.Signals(signum).name}: stopping after this step and saving the training "
                             f"state (Ctrl-C again to stop at once)\n")

    @contextlib.contextmanager
    def installed(self) -> Iterator[_StopRequest]:
        if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
            yield self
            return
        previous = {s: signal.getsignal(s) for s in self.SIGNALS}
        for s in self.SIGNALS:
            signal.signal(s, self._handle)
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler if handler is not None else signal.SIG_DFL)


def _stop_after_steps() -> int | None:
    value = os.environ.get(STOP_AFTER_ENV)
    return int(value) if value else None


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


def _epoch_sampler(loader: Iterable) -> EpochSampler | None:
    """The loader's :class:`EpochSampler`, which can skip a resumed epoch's first batches cheaply."""
    sampler = getattr(loader, "sampler", None)
    return sampler if isinstance(sampler, EpochSampler) and getattr(loader, "batch_size", None) else None


def _epoch_batches(loader: Iterable, epoch: int, skip: int) -> Iterator:
    """An iterator over epoch ``epoch``'s batches after the first ``skip``.

    An :class:`EpochSampler` skips by index; any other loader is iterated and the skipped batches
    dropped (exact when its shuffling draws from the RNG states :func:`fit` restores first).
    """
    sampler = _epoch_sampler(loader)
    if sampler is not None:
        sampler.set_epoch(epoch, skip * loader.batch_size)  # type: ignore[attr-defined]
        return iter(loader)
    inner = getattr(loader, "sampler", None)
    if hasattr(inner, "set_epoch"):  # e.g. torch's DistributedSampler
        inner.set_epoch(epoch)
    batches = iter(loader)
    for _ in range(skip):
        next(batches)
    return batches


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
    ctx: Context | None = None,
    state_path: str | os.PathLike | None = None,
    resume: dict[str, Any] | None = None,
    state_meta: dict[str, Any] | None = None,
) -> TrainResult:
    """Train ``model`` in place and leave it holding the weights of its best epoch.

    ``loss_fn(model, batch)`` gets the batch already on ``device`` and returns the batch's
    mean loss; with ``config.bf16`` it runs under bfloat16 autocast. ``validate(model)`` (called
    under ``no_grad`` in eval mode) returns the loss monitored for early stopping and best-epoch
    selection, or a dict of validation metrics that are all added to the epoch's history and whose
    ``config.monitor`` entry is monitored (lower is better); without ``validate`` the training loss
    is monitored. ``on_best(state)`` runs on rank 0 after each new best epoch (e.g. to save a
    checkpoint of ``state.eval_model``). With ``config.ema_decay`` an exponential moving average of
    the weights is kept (training/ema.py): it is what ``validate`` sees, what the best epoch keeps
    and what ``model`` ends with. A non-finite loss raises ``ValueError`` naming the epoch and step,
    after restoring the best weights (files written before are left untouched).

    Distributed (``ctx.distributed``): ``loss_fn`` gets the model wrapped in DDP (use
    ``distributed.unwrap`` for its attributes), the loader must shard the data (an
    :class:`EpochSampler`), ``validate`` gets the bare model and must return the metrics of the
    whole split on every rank.

    Resume: with ``state_path``, rank 0 saves the training state there at the end of each epoch
    and after SIGINT/SIGTERM (then :class:`TrainingInterrupted` is raised on every rank);
    ``resume`` (a :func:`~mambamixer.training.checkpoint.load_train_state` dict) continues from it.
    ``state_meta`` is stored with the state (the task's settings, checked on resume).
    """
    ctx = ctx or Context()
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(device)
    sampler = _epoch_sampler(train_loader)
    if sampler is not None:
        sampler.set_epoch(0)
    try:
        steps_per_epoch = len(train_loader)  # type: ignore[arg-type]
    except TypeError:
        steps_per_epoch = 0
    if steps_per_epoch < 1:
        raise ValueError("the training data yields no batches (is the dataset smaller than a batch?)")
    optimizer = build_optimizer(model, config)
    state = TrainState(model, optimizer, LRSchedule(config, steps_per_epoch), generator=generator,
                       ema=ModelEMA(model, config.ema_decay) if config.ema_decay is not None else None)
    saved_path = Path(state_path) if state_path is not None else None
    rng_now: dict[str, Any] | None = None
    epoch_loss = (0.0, 0.0)
    if resume is not None:
        state.load_state_dict(resume)
        rngs = resume["rng"]
        mine = rngs[ctx.rank] if len(rngs) == ctx.world_size else rngs[0] if ctx.is_main else None
        if mine is not None:
            rng_now, state.epoch_rng = mine["now"], mine.get("epoch_start")
        if ctx.is_main:  # every rank's share of the unfinished epoch's loss, already summed
            epoch_loss = (float(resume.get("epoch_loss_sum", 0.0)), float(resume.get("epoch_samples", 0.0)))
    net = distributed.wrap(model, ctx)
    main = ctx.is_main
    quiet = config.quiet or not main
    stop_after = _stop_after_steps()
    start = time.perf_counter()

    def save(partial: tuple[float, float]) -> None:
        # every rank sends its RNG states (its dropout and augmentation streams); rank 0 writes
        rng = distributed.all_gather_object({"now": rng_state(generator), "epoch_start": state.epoch_rng}, ctx)
        if main:
            state.seconds = seconds_before + time.perf_counter() - start
            save_train_state(saved_path, state.state_dict(rng, partial, state_meta))  # type: ignore[arg-type]

    def interrupt(signum: int, where: str, saved: bool = False) -> None:
        if saved_path is not None:
            if not saved:
                save(distributed.all_reduce_sum(epoch_loss_now, ctx))
            distributed.barrier(ctx)  # no rank exits before the state is on disk
        _restore_best(state)
        name = signal.Signals(signum).name
        how = (f"training state saved to {saved_path}; run the same command with --resume to continue"
               if saved_path is not None else "no training state saved (fit had no state_path)")
        raise TrainingInterrupted(f"{name}: stopped {where} (optimiser step {state.step}); {how}", signum, saved_path)

    seconds_before = state.seconds
    epoch_loss_now = [0.0, 0.0]
    with _StopRequest(announce=main).installed() as stop:
        for epoch in range(state.epoch, config.last_epoch):
            if state.finished:
                break
            model.train()
            t0 = time.perf_counter()
            skip = state.step_in_epoch
            if skip == 0:
                if rng_now is not None:  # resuming at an epoch boundary
                    set_rng_state(rng_now, generator)
                    rng_now = None
                state.epoch_rng = rng_state(generator) if saved_path is not None else None
                total, count = 0.0, 0.0
            else:  # resuming mid-epoch: replay the epoch's start, skip what was done, then continue
                if state.epoch_rng is not None:
                    set_rng_state(state.epoch_rng, generator)
                total, count = epoch_loss
            batches = _epoch_batches(train_loader, epoch, skip)
            if skip and rng_now is not None:
                set_rng_state(rng_now, generator)
                rng_now = None
            bar = tqdm(batches, desc=f"{config.desc} {epoch + 1}/{config.epochs}", total=steps_per_epoch,
                       initial=skip, disable=quiet, leave=False, dynamic_ncols=True)
            lr = epoch_lr = state.schedule(epoch, 0)
            for i, batch in enumerate(bar, start=skip):
                lr = state.schedule(epoch, i)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                batch = move_to(batch, device)
                with autocast(device, config.bf16):
                    loss = loss_fn(net, batch)
                finite = bool(torch.isfinite(loss.detach()).all())
                stop_now = stop.signum is not None or (stop_after is not None and state.step + 1 >= stop_after)
                bad, stop_now = distributed.any_rank([not finite, stop_now], ctx)  # every rank acts alike
                if bad:
                    _restore_best(state)
                    kept = f"the best weights (epoch {state.best_epoch}) are kept" if state.best_epoch else (
                        "no epoch finished, so there are no best weights")
                    value = loss.item() if not finite else "non-finite on another process"
                    raise ValueError(f"training loss is {value} at epoch {epoch + 1}, step {i + 1} "
                                     f"(optimiser step {state.step + 1}); stopped, {kept}, and files written "
                                     f"before (checkpoint, training state) are left as they were. "
                                     f"Try a lower learning rate or gradient clipping (--grad-clip).")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if config.grad_clip is not None:
                    nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                optimizer.step()
                if state.ema is not None:
                    state.ema.update(model)
                state.step += 1
                state.step_in_epoch = i + 1
                n = _batch_size(batch)
                total += loss.item() * n
                count += n
                if i % 20 == 0 or i == steps_per_epoch - 1:
                    bar.set_postfix(loss=f"{total / max(count, 1):.4f}", lr=f"{lr:.2e}", refresh=False)
                if stop_now:
                    bar.close()
                    epoch_loss_now = [total, count]
                    interrupt(stop.signum or signal.SIGINT, f"at epoch {epoch + 1}, step {i + 1} of {steps_per_epoch}")
            bar.close()
            total, count = distributed.all_reduce_sum([total, count], ctx)
            train_loss = total / max(count, 1)
            train_seconds = time.perf_counter() - t0

            val_loss = None
            val_metrics: dict[str, float] = {}
            if validate is not None:
                model.eval()
                with torch.no_grad():
                    val_loss, val_metrics = _monitored(validate(state.eval_model), config.monitor)
                model.train()
                if not math.isfinite(val_loss):
                    _restore_best(state)
                    what = "validation loss" if config.monitor == "val_loss" else config.monitor
                    raise ValueError(f"{what} is {val_loss} after epoch {epoch + 1}; stopped, "
                                     f"the best weights (epoch {state.best_epoch}) are kept")
            monitored = val_loss if val_loss is not None else train_loss
            state.epoch, state.step_in_epoch = epoch + 1, 0
            improved = monitored < state.best_val or config.keep == "last"
            if improved:
                state.best_val, state.best_epoch, state.bad_epochs = monitored, epoch + 1, 0
                state.best_weights = {k: v.detach().to("cpu", copy=True)
                                      for k, v in state.eval_model.state_dict().items()}
            else:
                state.bad_epochs += 1
            seconds = time.perf_counter() - t0
            # seconds: the whole epoch, validation included; train_seconds: the training steps only
            # a dict from validate() is stored as it is (its "val_loss", if any, is the history's)
            state.history.append({
                "epoch": epoch + 1, "train_loss": train_loss,
                "val_loss": val_metrics.get("val_loss") if val_metrics else val_loss, **val_metrics,
                "lr": epoch_lr, "seconds": seconds, "train_seconds": train_seconds, "samples": int(count),
            })
            if not quiet:
                val_text = "".join(f"  {k} {v:.4f}" for k, v in val_metrics.items()) if val_metrics else (
                    f"  {config.val_label} {val_loss:.4f}" if val_loss is not None else "")
                tqdm.write(f"{config.desc} {epoch + 1}/{config.epochs}  {config.train_label} {train_loss:.4f}{val_text}"
                           f"  lr {epoch_lr:.2e}  {seconds:.1f}s{'  *' if improved else ''}")
            if improved and on_best is not None and main:
                on_best(state)
            if config.patience is not None and state.bad_epochs >= config.patience:
                state.stopped_early = epoch + 1 < config.epochs
                state.finished = True
                if not quiet and state.stopped_early:
                    tqdm.write(f"early stopping: no improvement for {config.patience} epochs "
                               f"(best epoch {state.best_epoch})")
            state.finished = state.finished or epoch + 1 == config.last_epoch
            if saved_path is not None:
                save((0.0, 0.0))
            if distributed.any_rank([stop.signum is not None], ctx)[0]:  # a signal during validation
                interrupt(stop.signum or signal.SIGTERM, f"after epoch {epoch + 1}", saved=True)

    _restore_best(state)
    return TrainResult(
        history=state.history, best_epoch=state.best_epoch, best_val=state.best_val,
        epochs_run=state.epoch, train_seconds=seconds_before + time.perf_counter() - start,
        stopped_early=state.stopped_early, config=asdict(config),
    )
