"""What a classifier's evaluation reports: loss, top-1 / top-5, the confusion matrix (and its CSV)."""

from __future__ import annotations

import csv
import io
import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mambamixer.data.augment import ImageTransform, tta_views
from mambamixer.data.image_stream import FileSplit, eval_batches
from mambamixer.data.images import ImageSplit
from mambamixer.io import atomic_write_bytes
from mambamixer.training import distributed
from mambamixer.training.distributed import Context
from mambamixer.training.trainer import autocast

DEFAULT_EVAL_BATCH_SIZE = 512


class _Tally:
    """Running top-1 / top-k hits, summed cross-entropy and confusion counts of scored batches."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes, self.k = num_classes, min(5, num_classes)
        self.correct1 = self.correct5 = 0
        self.loss_sum = 0.0
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def add(self, logits: Tensor, labels: Tensor) -> None:
        """logits (batch, classes) float32 (or log-probabilities), labels (batch,)."""
        self.loss_sum += F.cross_entropy(logits, labels, reduction="sum").double().item()
        top = logits.topk(self.k, dim=1).indices  # (batch, k)
        hits = top == labels[:, None]
        self.correct1 += hits[:, 0].sum().item()
        self.correct5 += hits.any(dim=1).sum().item()
        c = self.num_classes
        self.confusion += torch.bincount((labels * c + top[:, 0]).cpu(), minlength=c * c).view(c, c)

    def result(self, n: int, ctx: Context) -> dict[str, Any]:
        """The figures over all ``n`` images (the sums all-reduced over the processes)."""
        correct1, correct5, loss_sum = distributed.all_reduce_sum([self.correct1, self.correct5, self.loss_sum], ctx)
        return {"top1": correct1 / n, "top5": correct5 / n, "loss": loss_sum / n,
                "confusion": distributed.all_reduce_tensor(self.confusion, ctx)}


@torch.no_grad()
def classification_metrics(model: nn.Module, split: ImageSplit | FileSplit, transform: ImageTransform, num_classes: int,
                           batch_size: int = DEFAULT_EVAL_BATCH_SIZE, device: torch.device | str | None = None,
                           bf16: bool = False, ctx: Context | None = None, tta: str | None = None) -> dict[str, Any]:
    """Top-1, top-k (k = min(5, classes)), mean cross-entropy (no smoothing) and the confusion matrix
    over every image of ``split`` (no image dropped; sums in float64). Distributed (``ctx``), each
    rank takes a contiguous share of the images and the sums are all-reduced.

    Returns ``{"top1", "top5", "loss", "images", "confusion" (classes, classes) int64 tensor
    (rows true, columns predicted), "seconds" (this process's forward passes)}``. With
    ``tta="flip"`` it also returns ``"tta"``: top1, top5, loss and confusion of the mean of the
    softmax over each image and its mirror (its log taken as the logits), from the same pass: the
    plain figures come from the first view.
    """
    ctx = ctx or Context()
    n = len(split)
    if n == 0:
        raise ValueError("the evaluation split has no images")
    if ctx.distributed:
        split = split.subset(torch.tensor(distributed.shard_range(n, ctx), dtype=torch.long))
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    plain, averaged = _Tally(num_classes), _Tally(num_classes) if tta else None
    seconds = 0.0
    for images, labels in eval_batches(split, batch_size):
        images, labels = images.to(device), labels.to(device)
        x = transform(images)
        t0 = time.perf_counter()
        with autocast(device, bf16):
            views = [model(v).float() for v in tta_views(x, tta)]  # views[0] is x itself
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds += time.perf_counter() - t0
        plain.add(views[0], labels)
        if averaged is not None:  # log of the mean probability over the views
            log_probs = torch.stack([F.log_softmax(v, dim=1) for v in views])
            averaged.add(log_probs.logsumexp(dim=0) - math.log(len(views)), labels)
    model.train(was_training)
    result = {**plain.result(n, ctx), "images": n, "seconds": seconds}
    if averaged is not None:
        result["tta"] = averaged.result(n, ctx)
    return result


def test_figures(test: dict[str, Any]) -> dict[str, Any]:
    """``classification_metrics`` of the test set -> metrics.json's test_* (and test_tta_*) keys."""
    figures = {"test_top1": test["top1"], "test_top5": test["top5"], "test_loss": test["loss"]}
    if "tta" in test:
        figures.update({f"test_tta_{key}": test["tta"][key] for key in ("top1", "top5", "loss")})
    return figures


def write_confusion_csv(path: Path, confusion: Tensor, classes: list[str]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["true \\ predicted", *classes])
    for name, row in zip(classes, confusion.tolist(), strict=True):
        writer.writerow([name, *row])
    atomic_write_bytes(path, buf.getvalue().encode())
