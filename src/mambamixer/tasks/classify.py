"""Image classification: train a registered vision model, pick the best epoch on validation top-1,
report test top-1/top-5 over the whole test set, and write a self-describing run folder.

    metrics = run_classify("resnet_small", "fashion-mnist", epochs=10)
    evaluate_classify("runs/classify-resnet_small-fashion-mnist")   # recomputes the test metrics

Arguments left as None take the recipe in :data:`RECIPE` (docs/vision_data.md), the same for
every model unless :data:`TRAINING_DEFAULTS` says otherwise. Under ``torchrun`` the run trains
with DistributedDataParallel (docs/training.md).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mambamixer.data.augment import (
    AlternatingFlips,
    AugmentConfig,
    ImageTransform,
    check_tta,
    describe_augment,
    parse_augment,
)
from mambamixer.data.image_stream import (
    CROP_SCALE,
    EVAL_CROP,
    FileSplit,
    StreamSampler,
    as_image_split,
    load_images,
    train_loader,
)
from mambamixer.data.images import VAL_FRACTION, BatchLoader, ImageData, ImageSplit, check_data_argument, dataset_name
from mambamixer.data.mixup import Mixup, MixupConfig
from mambamixer.io import atomic_write_json
from mambamixer.models.registry import create_model, model_task
from mambamixer.tasks.classify_metrics import (
    DEFAULT_EVAL_BATCH_SIZE,
    classification_metrics,
    test_figures,
    write_confusion_csv,
)
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
from mambamixer.tasks.finetune import load_init
from mambamixer.tasks.vision_recipes import describe_recipe, get_recipe
from mambamixer.training import distributed
from mambamixer.training.checkpoint import STATE_NAME, save_checkpoint
from mambamixer.training.distributed import EpochSampler
from mambamixer.training.plots import plot_confusion_matrix, plot_image_grid, plot_training_curves
from mambamixer.training.seed import seed_everything
from mambamixer.training.trainer import TrainConfig, TrainState, autocast, fit

RESERVED_OVERRIDES = ("num_classes", "in_chans", "img_size")  # set from the data
GRID_IMAGES = 32  # test images shown in predictions.png

# The one recipe of the vision benchmark (every model, every dataset): AdamW with decoupled weight
# decay 0.05, peak LR 1e-3 after a one-epoch linear warm-up, cosine decay to 0 per step, label
# smoothing 0.1, batch 128, 10 epochs, no early stopping (the best epoch on validation top-1 is kept).
RECIPE: dict[str, Any] = {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.05, "schedule": "cosine",
                          "warmup_epochs": 1.0, "epochs": 10, "batch_size": 128, "label_smoothing": 0.1,
                          "grad_clip": None, "patience": None, "ema_decay": None,
                          "min_lr": 0.0}
# Per-model departures from RECIPE; a family's entry ("vim2") applies to its sizes ("vim2_small").
TRAINING_DEFAULTS: dict[str, dict[str, Any]] = {}


def training_defaults(model: str) -> dict[str, Any]:
    """The training hyper-parameters used when an argument is left as None."""
    entry = TRAINING_DEFAULTS.get(model)
    if entry is None:
        family = [k for k in TRAINING_DEFAULTS if model.startswith(k + "_")]
        entry = TRAINING_DEFAULTS[max(family, key=len)] if family else {}
    return {**RECIPE, **entry}


def default_out(model: str, data: str) -> Path:
    return Path("runs") / f"classify-{model}-{data_label(data)}"


def build_vision_model(name: str, num_classes: int, in_chans: int, img_size: int,
                       overrides: dict[str, Any] | None = None) -> nn.Module:
    """``create_model`` with the data's shape; a family whose builder takes no ``img_size`` (pure
    convolutions work at any size) is built without it. A bad override raises ``ValueError``."""
    overrides = dict(overrides or {})
    try:
        try:
            return create_model(name, num_classes=num_classes, in_chans=in_chans, img_size=img_size, **overrides)
        except TypeError as err:
            if "img_size" not in str(err):
                raise
            return create_model(name, num_classes=num_classes, in_chans=in_chans, **overrides)
    except TypeError as err:
        raise ValueError(f"bad model override for {name!r}: {err}") from err


def aux_loss(model: nn.Module) -> Tensor | None:
    """The model's auxiliary training loss of its last forward (e.g. the Switch-of-Scans router's load
    balancing, already weighted by the model), or None. Found as a ``model.aux_loss()`` method (of the
    model inside a DDP wrapper)."""
    fn = getattr(distributed.unwrap(model), "aux_loss", None)
    return fn() if callable(fn) else None


def classification_loss(model: nn.Module, images: Tensor, labels: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Cross-entropy (with label smoothing) of ``model(images)`` plus the model's auxiliary loss.

    ``images``: normalised (batch, C, H, W); ``labels``: (batch,) int64, or soft targets (batch, classes)
    float (Mixup / CutMix, already smoothed: ``label_smoothing`` is then not applied again).
    """
    smoothing = 0.0 if labels.is_floating_point() else label_smoothing
    loss = F.cross_entropy(model(images).float(), labels, label_smoothing=smoothing)
    extra = aux_loss(model)
    return loss if extra is None else loss + extra.float()


def measure_throughput(model: nn.Module, images: Tensor, labels: Tensor, transform: ImageTransform,
                       train_batch: int, eval_batch: int, device: torch.device, bf16: bool = False,
                       steps: int = 3) -> dict[str, float]:
    """Steady-state images per second of forward+backward (train mode, batch ``train_batch``) and of
    the forward alone (eval mode, no_grad, batch ``eval_batch``), after one warm-up step each.

    ``images`` uint8 (n, C, H, W) and ``labels`` (n,) are repeated to fill a batch. The model's
    weights, buffers (BatchNorm statistics) and gradients are left as they were.
    """
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    was_training = model.training

    def batch(size: int) -> tuple[Tensor, Tensor]:
        idx = torch.arange(size) % len(images)
        return transform(images[idx].to(device)), labels[idx].to(device)

    def timed(size: int, step) -> float:
        x, y = batch(size)
        step(x, y)  # warm-up: kernel compilation, allocator growth
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            step(x, y)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return steps * size / (time.perf_counter() - t0)

    def train_step(x: Tensor, y: Tensor) -> None:
        with autocast(device, bf16):
            loss = classification_loss(model, x, y)
        loss.backward()
        model.zero_grad(set_to_none=True)

    def eval_step(x: Tensor, y: Tensor) -> None:
        with torch.no_grad(), autocast(device, bf16):
            model(x)

    try:
        model.train()
        train_ips = timed(train_batch, train_step)
        model.eval()
        eval_ips = timed(eval_batch, eval_step)
    finally:
        model.load_state_dict(saved)
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return {"train_images_per_second": train_ips, "inference_images_per_second": eval_ips}


def _shape_check(net: nn.Module, model: str, data: ImageData, transform: ImageTransform,
                 device: torch.device, bf16: bool) -> None:
    """One forward of two test images (in the run's precision), so a model that cannot take the data
    fails before anything is written."""
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad(), autocast(device, bf16):
            out = net(transform(as_image_split(data.test, torch.arange(min(2, len(data.test)))).images.to(device)))
    except (ValueError, RuntimeError) as err:
        c, (h, w) = data.in_chans, data.image_size
        size = transform.img_size or h
        raise ValueError(f"model {model!r} cannot take the {data.name} images ({c} channels, resized to "
                         f"{size}x{size} from {h}x{w}): {err}") from err
    finally:
        net.train(was_training)
    if out.dim() != 2 or out.shape[1] != data.num_classes:
        raise ValueError(f"model {model!r} returned {tuple(out.shape)} for a batch of 2, expected (2, "
                         f"{data.num_classes}) logits")


def _grid_images(split: ImageSplit | FileSplit, n: int) -> tuple[ImageSplit, Any]:
    """A fixed sample of ``n`` test images: them in memory and as (n, H, W[, 3]) floats in [0, 1]."""
    idx = torch.randperm(len(split), generator=torch.Generator().manual_seed(0))[:n].sort().values
    sample = as_image_split(split, idx)
    imgs = sample.images.float() / 255.0
    imgs = imgs[:, 0] if imgs.shape[1] == 1 else imgs.permute(0, 2, 3, 1)
    return sample, imgs.numpy()


def _image_size(data: ImageData, img_size: int | None) -> int:
    if img_size is not None:
        return check_positive_int("img_size", img_size)
    h, w = data.image_size
    if h != w:
        raise ValueError(f"the {data.name} images are {h}x{w}, not square: give an image size (--img-size N)")
    return h


def run_classify(
    model: str | None,
    data: str = "digits",
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    seed: int = 0,
    data_dir: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    img_size: int | None = None,
    quiet: bool = False,
    model_overrides: dict[str, Any] | None = None,
    weight_decay: float | None = None,
    warmup_epochs: float | None = None,
    label_smoothing: float | None = None,
    grad_clip: float | None = None,
    patience: int | None = None,
    ema_decay: float | None = None,
    bf16: bool = False,
    augment: bool | str | AugmentConfig = True,
    val_fraction: float = VAL_FRACTION,
    limit_train: int | None = None,
    limit_eval: int | None = None,
    eval_batch_size: int | None = None,
    device: str | torch.device | None = None,
    resume: bool = False,
    tta: str | None = None,
    init: str | os.PathLike | None = None,
    freeze_backbone: bool = False,
    data_mode: str = "auto",
    workers: int | None = None,
    crop_scale: float = CROP_SCALE[0],
    eval_crop: float = EVAL_CROP,
    recipe: str | None = None,
    mixup: float | None = None,
    cutmix: float | None = None,
) -> dict[str, Any]:
    """Train vision model ``model`` on ``data`` and write the run folder; returns the metrics dict.

    ``data``: digits, mnist, fashion-mnist, cifar10, cifar100, or an ImageFolder path.
    ``img_size`` resizes the images (default: their own size). ``augment``: True for the
    dataset's default (``default_augment``), False for none, an ``AugmentConfig``, or a spec string
    of ``parse_augment`` ("flip,crop=2").
    ``patience=0`` or None runs every epoch. ``limit_train`` / ``limit_eval`` keep seeded subsets
    of the training / the validation and test images (quick checks). ``tta="flip"`` also reports the
    test metrics of flip test-time augmentation (``test_tta_*``; ``test_*`` stay single-view).
    ``batch_size`` is the global batch of one optimiser step (split over the processes under
    ``torchrun``). ``resume=True`` continues the
    interrupted run in ``out`` (same arguments) from its ``train_state.pt``. Writes into ``out``:
    ``metrics.json``, ``checkpoint/``, ``train_state.pt``, ``confusion_matrix.png`` and ``.csv``,
    ``predictions.png``, ``training_curves.png``. ``init``: start from the weights of a run, checkpoint or
    saved model (``model`` None takes its model; a new head for another class count), ``freeze_backbone``
    trains only the classifier (tasks/finetune.py).
    ``data_mode`` "auto" streams an ImageFolder larger than 2 GiB decoded, "stream" / "memory" force it
    (data/image_stream.py): streamed, ``workers`` DataLoader processes decode each batch, training
    images get a random-resized crop of area (``crop_scale``, 1) in place of ``augment``'s padded crop
    (1: no such crop, training images are decoded as evaluation ones, a centre crop of ``eval_crop`` of
    the shorter side).
    ``recipe="deit"``: the defaults of
    ``tasks/vision_recipes.py`` (RandAugment, Mixup/CutMix, EMA, LR 5e-4 x batch / 512, ...);
    ``mixup`` / ``cutmix``: the Beta alphas of Mixup / CutMix (default: the recipe's, else off).
    """
    started = time.perf_counter()
    # 1. check every argument before anything is read or written
    init_source = load_init(init, model) if init is not None else None
    model = init_source.model_name if init_source is not None else model
    if model is None:
        raise ValueError("no model: give one (--model NAME), or --init a trained run to take it from")
    if freeze_backbone and init_source is None:
        raise ValueError("--freeze-backbone needs --init: the trained backbone to keep")
    if model_task(model) != "vision":  # unknown names raise ValueError with suggestions
        raise ValueError(f"model {model!r} is a {model_task(model)} model, not an image classifier")
    check_data_argument(data)
    tta = check_tta(tta, dataset_name(data) or "folder")
    overrides = dict(model_overrides or {})
    reserved = sorted(set(overrides) & set(RESERVED_OVERRIDES))
    if reserved:
        raise ValueError(f"model overrides cannot set {reserved}: they come from the data (use --img-size for "
                         f"the image size)")
    given = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay,
             "warmup_epochs": warmup_epochs, "label_smoothing": label_smoothing, "grad_clip": grad_clip,
             "patience": patience, "ema_decay": ema_decay}
    named = get_recipe(recipe)
    hp = {**training_defaults(model), **(named.training if named else {}),
          **{k: v for k, v in given.items() if v is not None}}
    hp["batch_size"] = check_positive_int("batch_size", hp["batch_size"])
    if named is not None and lr is None:
        hp["lr"] = named.lr_for(hp["batch_size"])
    eval_batch_size = check_positive_int(
        "eval_batch_size", DEFAULT_EVAL_BATCH_SIZE if eval_batch_size is None else eval_batch_size)
    if not 0.0 <= hp["label_smoothing"] < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {hp['label_smoothing']!r}")
    if hp["patience"] == 0:
        hp["patience"] = None
    if img_size is not None:
        check_positive_int("img_size", img_size)
    for name, limit in (("limit_train", limit_train), ("limit_eval", limit_eval)):
        if limit is not None:
            check_positive_int(name, limit)
    train_config = TrainConfig(
        epochs=hp["epochs"], lr=hp["lr"], optimizer=hp["optimizer"], weight_decay=hp["weight_decay"],
        schedule=hp["schedule"], warmup_epochs=hp["warmup_epochs"], grad_clip=hp["grad_clip"],
        patience=hp["patience"], quiet=quiet, desc=f"{model} epoch", bf16=bf16, monitor="val_error",
        ema_decay=hp["ema_decay"], min_lr=hp["min_lr"],
    )  # validates the values
    mix = (named.mixup(hp["label_smoothing"], mixup, cutmix) if named else
           MixupConfig(mixup or 0.0, cutmix or 0.0, label_smoothing=hp["label_smoothing"]))
    out = Path(out) if out is not None else default_out(model, data)
    check_out_possible(out)
    if resume:
        check_resumable(out)
    ctx, dev = distributed.setup(pick_device(device))
    local_batch = distributed.local_batch_size(hp["batch_size"], ctx)

    # 2. data, model, one trial forward; only then the output folder
    if not 0.0 < crop_scale <= 1.0:
        raise ValueError(f"crop_scale must be in (0, 1], got {crop_scale!r}")
    ds, _ = load_images(data, data_mode, data_dir, img_size, val_fraction, limit_train, limit_eval, workers,
                        eval_crop)
    streamed = isinstance(ds.train, FileSplit)
    size = _image_size(ds, img_size)
    if augment is True and named is not None:
        aug = named.augment(dataset_name(data) or "folder", size)
    elif augment is True or isinstance(augment, str):
        aug = parse_augment("default" if augment is True else augment, dataset_name(data) or "folder", size)
    else:
        aug = augment or None
    resized_crop = streamed and aug is not None and crop_scale < 1.0  # it replaces the padded crop
    if resized_crop:
        aug = dataclasses.replace(aug, crop_padding=0)
    if ctx.is_main and not quiet:
        reading = f"streamed by {ds.train.reader.workers} workers a process" if streamed else "in memory"
        decode_crop = f"random-resized crop (area {crop_scale:g}-1) at decode, " if resized_crop else ""
        print(f"data: {ds.describe()}, {reading}\naugment: {decode_crop}{describe_augment(aug)}")
    # a streamed run's evaluation crop is made while decoding (eval_crop); in memory, the recipe's on the batch
    transform = ImageTransform(ds.mean, ds.std, img_size=size, augment=aug,
                               crop_pct=named.eval_crop_pct if named and not streamed else None)
    seed_everything(seed)
    overrides = {**(named.model_overrides(model) if named else {}), **overrides}
    if init_source is None:
        net, init_record = build_vision_model(model, ds.num_classes, ds.in_chans, size, overrides), None
    else:
        net, init_record = init_source.start(ds.num_classes, ds.in_chans, size, overrides, freeze_backbone,
                                             announce=ctx.is_main)
    distributed.seed_rank(seed, ctx)  # same initial weights everywhere, own augmentation and dropout per rank
    net.to(dev)
    _shape_check(net, model, ds, transform, dev, bf16)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    n_params = sum(p.numel() for p in net.parameters())

    data_path = Path(data).expanduser()
    run = {
        "task": "classify", "model_name": model,
        "data": str(data_path.resolve()) if dataset_name(data) is None else dataset_name(data),  # what to reload
        "dataset": ds.name, "data_source": ds.source,
        "data_dir": str(Path(data_dir).resolve()) if data_dir is not None else None,
        "img_size": size, "decode_size": img_size, "in_chans": ds.in_chans, "num_classes": ds.num_classes,
        "classes": ds.classes, "mean": ds.mean, "std": ds.std, "split": ds.split, "val_fraction": val_fraction,
        "limit_train": limit_train, "limit_eval": limit_eval,
        "augment": dataclasses.asdict(aug) if aug is not None else None, "tta": tta, "seed": seed,
        "recipe": named.name if named else "default", "mixup": dataclasses.asdict(mix) if mix.active else None,
        "eval_crop_pct": transform.crop_pct,
        "model_overrides": overrides, "init": init_record,
        "training": {**{k: hp[k] for k in ("epochs", "batch_size", "lr", "optimizer", "schedule", "weight_decay",
                                           "warmup_epochs", "label_smoothing", "grad_clip", "patience",
                                           "ema_decay", "min_lr")},
                     "bf16": bf16, "eval_batch_size": eval_batch_size, "loss": "cross_entropy",
                     "best_epoch_by": "validation top-1" if len(ds.val) else "training loss (no validation split)",
                     "drop_last_train": len(ds.train) > hp["batch_size"]},
        "device": str(dev), "processes": ctx.world_size, "torch_version": torch.__version__,
        **({"data_mode": "stream", "crop_scale": crop_scale if resized_crop else None, "eval_crop": eval_crop}
           if streamed else {}),
    }
    state = resume_state(out, run) if resume else None  # checked before anything is written
    prepare_out(out, note=ctx.is_main and not (quiet or resume))
    if ctx.is_main:
        print(describe_recipe(run, net))
    ckpt_dir = out / "checkpoint"

    # 3. train; the best epoch on validation top-1 is checkpointed as it appears. The sampler shuffles
    # by (seed, epoch) and shards by rank.
    alternate = aug is not None and aug.hflip and aug.flip_schedule == "alternate"
    flips = AlternatingFlips(len(ds.train), seed) if alternate else None
    if streamed:
        sampler: EpochSampler = StreamSampler(len(ds.train), seed, ctx, local_batch)
        batches = train_loader(ds.train, local_batch, sampler, seed, (crop_scale, 1.0) if resized_crop else None,
                               pin_memory=dev.type == "cuda")
    else:
        sampler = EpochSampler(len(ds.train), seed, ctx, local_batch)
        batches = BatchLoader(ds.train, local_batch, sampler=sampler, with_indices=alternate)
    smoothing = hp["label_smoothing"]
    mixer = Mixup(mix, ds.num_classes) if mix.active else None

    def loss_fn(m: nn.Module, batch: tuple[Tensor, ...]) -> Tensor:
        images, labels = batch[:2]
        flip = flips(batch[2], sampler.epoch) if flips is not None else None
        x = transform(images, train=True, flip=flip)
        if mixer is not None:
            x, labels = mixer(x, labels)
        return classification_loss(m, x, labels, smoothing)

    def validate(m: nn.Module) -> dict[str, float]:
        r = classification_metrics(m, ds.val, transform, ds.num_classes, eval_batch_size, dev, bf16, ctx)
        return {"val_loss": r["loss"], "val_top1": r["top1"], "val_error": 1.0 - r["top1"]}

    def on_best(state: TrainState) -> None:
        best = state.history[-1]
        save_checkpoint(ckpt_dir, state.eval_model, {**run, "best_epoch": state.best_epoch,
                                                "best_val_top1": best.get("val_top1")})

    result = fit(net, batches, loss_fn, train_config, validate=validate if len(ds.val) else None,
                 on_best=on_best, device=dev, ctx=ctx, state_path=out / STATE_NAME, resume=state,
                 state_meta={"run": run})

    # 4. evaluate the best weights on every validation and test image (shared out over the processes)
    test = classification_metrics(net, ds.test, transform, ds.num_classes, eval_batch_size, dev, bf16, ctx, tta)
    val = classification_metrics(net, ds.val, transform, ds.num_classes, eval_batch_size, dev, bf16, ctx) if len(
        ds.val) else None
    # one process's speed (rank 0, while the others wait): per-process figures
    if ctx.is_main:
        few = as_image_split(ds.test, torch.arange(min(local_batch, len(ds.test))))
        speed = measure_throughput(net, few.images, few.labels, transform, local_batch, eval_batch_size, dev, bf16)
    else:
        speed = {}
    history = result.history
    loop_seconds = sum(h["train_seconds"] for h in history)
    confusion = test["confusion"]
    per_class = (confusion.diagonal().double() / confusion.sum(dim=1).clamp_min(1).double()).tolist()
    metrics: dict[str, Any] = {
        **test_figures(test), "top5_k": min(5, ds.num_classes), "tta": tta,
        "val_top1": val["top1"] if val else None, "val_loss": val["loss"] if val else None,
        "test_images": test["images"], "val_images": len(ds.val), "train_images": len(ds.train),
        "n_params": n_params, **speed,
        "epoch_images_per_second": sum(h["samples"] for h in history) / max(loop_seconds, 1e-9),
        "train_seconds": result.train_seconds,
        "seconds_per_epoch": sum(h["seconds"] for h in history) / max(result.epochs_run, 1),
        "epochs_run": result.epochs_run, "best_epoch": result.best_epoch, "stopped_early": result.stopped_early,
        "peak_memory_mb": peak_memory_mb(dev),
        "per_class_accuracy": dict(zip(ds.classes, per_class, strict=True)),
        "config": dataclasses.asdict(net.config) if dataclasses.is_dataclass(getattr(net, "config", None)) else {},
        "run": run, "history": history,
    }
    if not all(math.isfinite(metrics[k]) for k in ("test_top1", "test_loss")):
        raise ValueError(f"non-finite evaluation metrics: test loss {test['loss']}")

    # 5. figures, then metrics.json last (its presence marks a finished run), on rank 0
    if ctx.is_main:
        title = f"{model} on {ds.name}"
        plot_training_curves(history, out / "training_curves.png", result.best_epoch, title,
                             metrics=("val_top1",) if len(ds.val) else ())
        plot_confusion_matrix(confusion.numpy(), ds.classes, out / "confusion_matrix.png",
                              f"{title}: test top-1 {test['top1']:.2%}")
        write_confusion_csv(out / "confusion_matrix.csv", confusion, ds.classes)
        sample, grid = _grid_images(ds.test, GRID_IMAGES)
        net.eval()
        with torch.no_grad(), autocast(dev, bf16):
            pred = net(transform(sample.images.to(dev))).float().argmax(dim=1).cpu()
        plot_image_grid(grid, sample.labels.tolist(), pred.tolist(), ds.classes, out / "predictions.png",
                        f"{title}: test images, predicted and true labels")
        metrics["seconds"] = time.perf_counter() - started
        atomic_write_json(out / "metrics.json", metrics)
        print(f"{model} {ds.name}: test top-1 {test['top1']:.4f}  top-{metrics['top5_k']} {test['top5']:.4f}  "
              f"loss {test['loss']:.4f}  (best epoch {result.best_epoch}/{result.epochs_run}, {n_params:,} parameters, "
              f"{metrics['seconds']:.0f} s)")
        if tta:
            print(f"  with {tta} test-time augmentation: top-1 {metrics['test_tta_top1']:.4f}  "
                  f"top-{metrics['top5_k']} {metrics['test_tta_top5']:.4f}  loss {metrics['test_tta_loss']:.4f}")
        if not quiet:
            print(f"wrote {out}")
    return distributed.broadcast_object(metrics, ctx)  # rank 0's figures (speed, memory) on every rank


def evaluate_classify(
    run_dir: str | os.PathLike,
    data_dir: str | os.PathLike | None = None,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    tta: str | None = None,
) -> dict[str, Any]:
    """Reload a run's checkpoint and recompute its test top-1/top-5/loss over every test image.

    ``run_dir`` is a run folder (holding ``checkpoint/``) or a checkpoint folder itself;
    ``data_dir`` defaults to the one the run used. The run's normalisation statistics,
    image size and precision are reused, so the figures equal ``metrics.json``'s. ``tta``
    (default: the run's) adds the test-time-augmented figures as ``test_tta_*``.
    """
    ckpt, net, run = load_run_checkpoint(run_dir, "classify", "an image-classification run",
                                         ("data", "img_size", "mean", "std", "num_classes"))
    tta = check_tta(tta or run.get("tta"), dataset_name(run["data"]) or "folder")  # before any data is read
    dev = pick_device(device)
    net.to(dev)
    ds, _ = load_images(run["data"], run.get("data_mode", "memory"),
                        data_dir=data_dir if data_dir is not None else run.get("data_dir"),
                        img_size=run.get("decode_size"), val_fraction=run.get("val_fraction", VAL_FRACTION),
                        limit_train=run.get("limit_train"), limit_eval=run.get("limit_eval"),
                        eval_crop=run.get("eval_crop", EVAL_CROP), stats=(run["mean"], run["std"]))
    if ds.num_classes != run["num_classes"] or ds.in_chans != run.get("in_chans", ds.in_chans):
        raise ValueError(f"the data has {ds.num_classes} classes and {ds.in_chans} channels, the checkpoint expects "
                         f"{run['num_classes']} and {run.get('in_chans')}")
    transform = ImageTransform(run["mean"], run["std"], img_size=run["img_size"], crop_pct=run.get("eval_crop_pct"))
    training = run.get("training", {})
    bs = batch_size or training.get("eval_batch_size", DEFAULT_EVAL_BATCH_SIZE)
    test = classification_metrics(net, ds.test, transform, ds.num_classes, bs, dev, bool(training.get("bf16")), tta=tta)
    result: dict[str, Any] = {
        **test_figures(test), "test_images": test["images"], "model": run["model_name"], "data": ds.name,
        "checkpoint": str(ckpt), "tta": tta,
    }
    metrics_path = ckpt.parent / "metrics.json" if ckpt.name == "checkpoint" else None
    if metrics_path is not None and metrics_path.is_file():
        try:
            stored = json.loads(metrics_path.read_text())
            for key in ("test_top1", "test_top5", "test_loss", "test_tta_top1", "test_tta_top5", "test_tta_loss"):
                result[f"stored_{key}"] = stored.get(key)
        except (OSError, json.JSONDecodeError):
            pass
    return result


__all__ = ["RECIPE", "TRAINING_DEFAULTS", "build_vision_model", "classification_loss", "classification_metrics",
           "evaluate_classify", "measure_throughput", "run_classify", "training_defaults"]
