"""Label new images with a trained image classifier, preprocessed exactly as its run evaluated.

    c = Classifier.from_run("runs/classify-vim2_femto-flowers")   # a run of `mambamixer classify`
    table = c.predict("new_photos/", top_k=5)   # DataFrame: file, class_1, prob_1, ..., class_5, prob_5
    table = c.predict([Image.open("a.jpg"), x_uint8])   # Pillow images or (C, H, W) uint8 tensors
    probs = c.probabilities([x_uint8, ...])     # (n, num_classes) softmax over every class

An image goes through the run's evaluation path: decoded as its training data were (an ImageFolder
run's ``--img-size`` resize at decode; grey or colour as the model's channels), converted to
[0, 1], resized (bilinear, antialiased, squashed to a square) to the run's ``img_size``,
normalised with the run's mean and std, and scored in the run's precision and evaluation batch
size, single view (docs/predict.md, "Labelling images").
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn

from mambamixer.data.augment import ImageTransform
from mambamixer.data.image_files import list_image_files, pil_image_tensor, read_image, to_channels
from mambamixer.data.image_stream import eval_box, resize_region
from mambamixer.data.image_stream import read_image as read_region
from mambamixer.data.images import dataset_name
from mambamixer.tasks.common import load_run_checkpoint, pick_device
from mambamixer.training.trainer import autocast

RUN_KEYS = ("data", "img_size", "mean", "std", "num_classes", "classes", "in_chans")
DEFAULT_BATCH_SIZE = 512
SHOWN_BAD = 3  # unreadable files named in the error, before the count of the others

ImageInput = str | os.PathLike | Tensor | Any  # a path (file or folder), a tensor, a Pillow image, or a list of them


class Classifier:
    """The model of a finished ``classify`` run, with what its evaluation did to an image."""

    def __init__(self, net: nn.Module, run: dict[str, Any], checkpoint: Path | None = None,
                 device: str | torch.device | None = None) -> None:
        self.device = pick_device(device)
        self.net = net.to(self.device).eval()
        self.run, self.checkpoint = run, checkpoint
        self.transform = ImageTransform(run["mean"], run["std"], img_size=run["img_size"],
                                        crop_pct=run.get("eval_crop_pct"))  # the recipe's in-memory centre crop
        training = run.get("training") or {}
        self.bf16 = bool(training.get("bf16"))
        self.batch_size = int(training.get("eval_batch_size") or DEFAULT_BATCH_SIZE)
        # a streamed run evaluated on a shorter-side resize and centre crop made while decoding
        self.eval_crop = run.get("eval_crop") if run.get("data_mode", "memory") == "stream" else None
        # an ImageFolder run decodes its files at --img-size; a built-in dataset is stored at its own size
        self.decode_size = run.get("decode_size") if dataset_name(run["data"]) is None else None

    @classmethod
    def from_run(cls, run_dir: str | os.PathLike, device: str | torch.device | None = None) -> Classifier:
        """The classifier a ``classify`` run saved (``run_dir``: its folder or its checkpoint folder)."""
        ckpt, net, run = load_run_checkpoint(run_dir, "classify", "an image-classification run", RUN_KEYS)
        return cls(net, run, ckpt, device)

    @property
    def classes(self) -> list[str]:
        return list(self.run["classes"])

    @property
    def num_classes(self) -> int:
        return int(self.run["num_classes"])

    @property
    def in_chans(self) -> int:
        return int(self.run["in_chans"])

    def read(self, path: Path) -> Tensor:
        """One image file -> (in_chans, H, W) uint8, decoded as the run's training data."""
        if self.eval_crop is not None:
            size, crop = int(self.run["img_size"]), float(self.eval_crop)
            region = read_region(path, size, self.in_chans == 1, lambda w, h: eval_box(w, h, size, crop))
            return to_channels(region, self.in_chans)
        return read_image(path, self.in_chans, self.decode_size)

    def image(self, x: Any) -> Tensor:
        """A Pillow image, or a (C, H, W) tensor (uint8, or float in [0, 1]) -> (in_chans, H, W) uint8 or float."""
        if isinstance(x, Tensor):
            if x.dim() != 3 or x.shape[0] != self.in_chans:
                raise ValueError(f"expected images ({self.in_chans}, height, width), got a tensor of shape "
                                 f"{tuple(x.shape)}")
            if x.dtype == torch.uint8:
                return x
            if not torch.is_floating_point(x) or x.min() < 0 or x.max() > 1:
                raise ValueError(f"expected uint8 images or floats in [0, 1], got {x.dtype} values in "
                                 f"[{x.min().item()}, {x.max().item()}]")
            return x.float() * 255.0  # the transform divides by 255, as for uint8
        if hasattr(x, "convert") and hasattr(x, "mode"):
            if self.eval_crop is not None:
                size = int(self.run["img_size"])
                box = eval_box(x.size[0], x.size[1], size, float(self.eval_crop))
                return to_channels(resize_region(x, size, "L" if self.in_chans == 1 else "RGB", box), self.in_chans)
            return pil_image_tensor(x, self.in_chans, self.decode_size)
        raise ValueError(f"expected an image path, a Pillow image or a tensor, got {type(x).__name__}")

    @torch.no_grad()
    def probabilities(self, images: Sequence[Tensor]) -> Tensor:
        """(n, num_classes) float32 softmax over every class of ``images`` (each (in_chans, H, W) from
        :meth:`read` or :meth:`image`), in order; images of one size go through the model together."""
        out = torch.empty(len(images), self.num_classes)
        groups: dict[tuple[Any, ...], list[int]] = {}
        for i, im in enumerate(images):
            groups.setdefault((tuple(im.shape), im.dtype), []).append(i)
        for index in groups.values():
            for start in range(0, len(index), self.batch_size):
                chunk = index[start:start + self.batch_size]
                x = self.transform(torch.stack([images[i] for i in chunk]).to(self.device))
                with autocast(self.device, self.bf16):
                    logits = self.net(x).float()
                out[chunk] = logits.softmax(dim=1).cpu()
        return out

    def top_k(self, probs: Tensor, top_k: int = 5) -> pd.DataFrame:
        """class_1, prob_1, ..., class_k, prob_k of each row of ``probs``; ``top_k`` is clipped to the classes."""
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
        p, idx = probs.topk(min(top_k, self.num_classes), dim=1)
        classes = self.classes
        columns: dict[str, Any] = {}
        for j in range(p.shape[1]):
            columns[f"class_{j + 1}"] = [classes[c] for c in idx[:, j].tolist()]
            columns[f"prob_{j + 1}"] = p[:, j].tolist()
        return pd.DataFrame(columns)

    def label_files(self, files: Sequence[tuple[Path, str]], top_k: int = 5, skip_bad: bool = False) -> pd.DataFrame:
        """One row per readable file of ``(path, name)``: its name (column ``file``) and its top-k classes.

        Files are read a batch at a time (memory does not grow with their number). An unreadable file
        raises one ``ValueError`` naming the first few and counting all (the rest are only read, not
        scored, once one is found); with ``skip_bad`` the others are labelled and
        ``frame.attrs["skipped"]`` lists ``(name, reason)`` of each unreadable one.
        """
        names, probs, bad = [], [], []
        for start in range(0, len(files), self.batch_size):
            images = []
            for path, name in files[start:start + self.batch_size]:
                try:
                    images.append(self.read(path))
                    names.append(name)
                except ValueError as err:
                    bad.append((name, str(err.__cause__ or err)))
            if images and (skip_bad or not bad):
                probs.append(self.probabilities(images))
        if bad and not skip_bad:
            raise ValueError(unreadable_message(bad, len(files)))
        if not names:
            raise ValueError(f"none of the {len(files)} files could be read as an image")
        frame = self.top_k(torch.cat(probs), top_k)
        frame.insert(0, "file", names)
        frame.attrs["skipped"] = bad
        return frame

    def predict(self, images: ImageInput | Sequence[ImageInput], top_k: int = 5,
                skip_bad: bool = False) -> pd.DataFrame:
        """The top-k classes and probabilities of each image: a path (an image file, or a folder walked as
        ``mambamixer predict`` walks it), a list of paths, or Pillow images / tensors (one (C, H, W) or a
        batch (n, C, H, W), or a list). Paths give a ``file`` column; in-memory images keep their order."""
        if isinstance(images, (str, os.PathLike)):
            return self.label_files(list_image_files(images), top_k, skip_bad)
        if isinstance(images, Tensor):
            images = list(images) if images.dim() == 4 else [images]
        elif not isinstance(images, (list, tuple)):
            images = [images]
        if images and all(isinstance(x, (str, os.PathLike)) for x in images):
            files = [(Path(x).expanduser(), os.fspath(x)) for x in images]
            return self.label_files(files, top_k, skip_bad)
        return self.top_k(self.probabilities([self.image(x) for x in images]), top_k)


def unreadable_message(bad: Sequence[tuple[str, str]], total: int) -> str:
    """One line naming the first few unreadable files (with why) and counting the others."""
    shown = "; ".join(f"{name} ({reason})" for name, reason in bad[:SHOWN_BAD])
    more = f"; and {len(bad) - SHOWN_BAD} more" if len(bad) > SHOWN_BAD else ""
    return (f"{len(bad)} of {total} files cannot be read as images: {shown}{more}; expected image files that "
            f"Pillow decodes (--skip-bad labels the others)")


__all__ = ["Classifier", "unreadable_message"]
