"""A streamed ImageFolder: files decoded batch by batch in DataLoader worker processes.

    data, mode = load_images("/data/imagenet", "auto", img_size=224)    # "memory" below MEMORY_LIMIT_BYTES
    loader = train_loader(data.train, batch_size=128, sampler=StreamSampler(len(data.train), seed, ctx, 128),
                          seed=seed)
    for images, labels, indices in loader: ...   # images (batch, C, 224, 224) uint8, as the in-memory path's

Training images get the random-resized crop (area ``crop_scale`` of the image, aspect ratio
``CROP_RATIO``, seeded by (seed, epoch, index), so the crops do not depend on the number of
workers or processes and a resumed epoch redraws the same ones) at decode time: a JPEG is
decoded at the smallest power-of-two reduction (``Image.draft``, DCT-domain scaling) that still
covers the crop at the target size, then only the crop box is resized, so a large photo costs
about what a small one does. Evaluation resizes the shorter side to ``img_size / eval_crop``
(256 for 224) and takes the centre ``img_size`` square. The normalisation, flips and erasing
stay on the device (``data/augment.py``'s ``ImageTransform``). Choices: docs/vision_data.md.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from mambamixer.data.image_folder import GREY_MODES, FolderListing, list_image_folder
from mambamixer.data.images import (
    VAL_FRACTION,
    BatchLoader,
    ImageData,
    ImageSplit,
    channel_stats,
    check_split_arguments,
    dataset_name,
    form_splits,
    load_image_data,
)
from mambamixer.training.distributed import EpochSampler

__all__ = ["CROP_RATIO", "CROP_SCALE", "DATA_MODES", "EVAL_CROP", "MEMORY_LIMIT_BYTES", "FileReader", "FileSplit",
           "StreamLoader", "StreamSampler", "as_image_split", "default_workers", "eval_batches", "eval_box",
           "in_memory_bytes", "load_images", "random_resized_box", "read_image", "train_loader"]

DATA_MODES = ("auto", "memory", "stream")
MEMORY_LIMIT_BYTES = 2 * 1024**3  # auto: in memory while files x channels x height x width (uint8) fit in 2 GiB
CROP_SCALE = (0.08, 1.0)  # the random-resized crop's area fraction (the ImageNet/DeiT convention)
CROP_RATIO = (3 / 4, 4 / 3)  # and its width / height, log-uniform
EVAL_CROP = 0.875  # evaluation: resize the shorter side to img_size / 0.875 (256 for 224), centre crop img_size
HEADER_SAMPLE = 256  # files whose headers decide colour (and, for auto, the size) of a tree
STATS_IMAGES = 512  # training images the normalisation statistics of a streamed tree are measured on
SAMPLE_SEED = 0


def default_workers() -> int:
    """DataLoader workers per process: min(8, the CPU cores of this process's share of the machine)."""
    local_processes = max(int(os.environ.get("LOCAL_WORLD_SIZE", "1")), 1)
    return max(min(8, (os.cpu_count() or 1) // local_processes), 1)


# ------------------------------------------------------------------------------------ crop boxes

Box = tuple[float, float, float, float]  # (left, top, right, bottom) in the source image's pixels


def random_resized_box(width: int, height: int, rng: np.random.Generator, scale: Sequence[float] = CROP_SCALE,
                       ratio: Sequence[float] = CROP_RATIO) -> Box:
    """A random crop of ``scale`` (uniform) of the image's area with aspect ratio ``ratio`` (log-uniform).

    Ten draws at most; when none fits inside the image, the centre crop of the whole image clamped to
    ``ratio`` (the usual RandomResizedCrop rule; with ``scale=(1, 1)`` that is the whole image).
    """
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            left, top = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
            return left, top, left + w, top + h
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        w, h = round(height * ratio[1]), height
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def eval_box(width: int, height: int, img_size: int, eval_crop: float = EVAL_CROP) -> Box:
    """The source region that resizing the shorter side to ``round(img_size / eval_crop)`` and cropping the
    centre ``img_size`` square keeps (``eval_crop=1``: the whole image when it is square)."""
    short = max(round(img_size / eval_crop), img_size)
    if width <= height:
        new_w, new_h = short, int(short * height / width)
    else:
        new_w, new_h = int(short * width / height), short
    left, top = round((new_w - img_size) / 2), round((new_h - img_size) / 2)
    sx, sy = width / new_w, height / new_h
    return left * sx, top * sy, (left + img_size) * sx, (top + img_size) * sy


def resize_region(img: Any, img_size: int, mode: str, box: Sequence[float]) -> np.ndarray:
    """The region ``box`` (left, top, right, bottom) of a Pillow image in ``mode`` ("L" or "RGB"), resized
    (bilinear) to img_size x img_size: (S, S) or (S, S, 3) uint8, a writable copy."""
    from PIL import Image

    img = img.convert(mode) if img.mode != mode else img
    return np.array(img.resize((img_size, img_size), Image.Resampling.BILINEAR, box=tuple(box)), dtype=np.uint8)


def read_image(path: Path, img_size: int, grey: bool, box_of: Any, draft: bool = True) -> np.ndarray:
    """Decode the region ``box_of(width, height)`` of an image, resized (bilinear, antialiased) to img_size
    x img_size: (S, S) uint8 when ``grey``, else (S, S, 3). A JPEG is decoded at the smallest reduction that
    keeps the region at least img_size pixels on each side (``draft=False``: at full size, for comparison).
    Bad files raise ``ValueError`` naming them."""
    from PIL import Image, UnidentifiedImageError

    mode = "L" if grey else "RGB"
    try:
        with Image.open(path) as img:
            width, height = img.size
            left, top, right, bottom = box_of(width, height)
            need = (math.ceil(width * img_size / (right - left)), math.ceil(height * img_size / (bottom - top)))
            if draft:
                img.draft(mode, need)  # JPEG: DCT-domain downscaling by 1/2, 1/4 or 1/8; other formats: no-op
            fx, fy = img.size[0] / width, img.size[1] / height
            return resize_region(img, img_size, mode, (left * fx, top * fy, right * fx, bottom * fy))
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, ZeroDivisionError) as err:
        raise ValueError(f"cannot read image {path}: {err}") from err


# ---------------------------------------------------------------------------------------- splits


@dataclass(frozen=True)
class FileReader:
    """How a streamed tree's files become tensors: size, channels, evaluation crop, DataLoader workers."""

    img_size: int
    in_chans: int
    eval_crop: float = EVAL_CROP
    workers: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.eval_crop <= 1.0:
            raise ValueError(f"eval_crop must be in (0, 1], got {self.eval_crop!r}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers!r}")


@dataclass
class FileSplit:
    """Image files and their labels (n,) int64, read by ``reader``: the streamed counterpart of ``ImageSplit``.

    The paths are kept as one NumPy array of bytes, not a list of Python objects: worker processes
    then share it with the training process (a list's reference counts, touched on every read, would
    copy its pages into each worker: 0.5 GB a worker for ImageNet's 1.28M paths).
    """

    files: np.ndarray  # (n,) bytes paths; a sequence of paths is converted
    labels: Tensor
    reader: FileReader = field(repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.files, np.ndarray):
            self.files = np.array([os.fsencode(f) for f in self.files], dtype=np.bytes_)
        if self.labels.shape != (len(self.files),):
            raise ValueError(f"{len(self.files)} files but labels of shape {tuple(self.labels.shape)}")
        self.labels = self.labels.long()

    def path(self, index: int) -> Path:
        return Path(os.fsdecode(self.files[index]))

    def __len__(self) -> int:
        return len(self.files)

    @property
    def in_chans(self) -> int:
        return self.reader.in_chans

    @property
    def image_size(self) -> tuple[int, int]:
        return self.reader.img_size, self.reader.img_size

    def subset(self, index: Tensor) -> FileSplit:
        return FileSplit(self.files[index.numpy()], self.labels[index], self.reader)


class _FileDataset(Dataset):
    """Items ``(image (C, S, S) uint8 array, label, index, error "")``: the random-resized crop of area ``crop_scale``
    seeded by (seed, epoch, index), or (``crop_scale=None``) the evaluation crop. A file that cannot be read
    gives zeros and its error (raised by :class:`StreamLoader` in the main process, as one line)."""

    def __init__(self, split: FileSplit, seed: int = 0, crop_scale: Sequence[float] | None = None) -> None:
        self.split, self.seed = split, seed
        self.crop_scale = tuple(crop_scale) if crop_scale is not None else None

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[np.ndarray, int, int, str]:
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        r = self.split.reader
        if self.crop_scale is None:
            def box_of(w: int, h: int) -> Box:
                return eval_box(w, h, r.img_size, r.eval_crop)
        else:
            rng = np.random.default_rng((self.seed, epoch, index))
            scale = self.crop_scale

            def box_of(w: int, h: int) -> Box:
                return random_resized_box(w, h, rng, scale)
        error = ""
        try:
            pixels = read_image(self.split.path(index), r.img_size, r.in_chans == 1, box_of)
        except ValueError as err:
            pixels, error = np.zeros((r.img_size, r.img_size, r.in_chans), dtype=np.uint8), str(err)
        image = np.ascontiguousarray(pixels.reshape(r.img_size, r.img_size, -1).transpose(2, 0, 1))
        return image, int(self.split.labels[index]), index, error


def _collate(items: list[tuple[np.ndarray, int, int, str]]) -> tuple[Tensor, Tensor, Tensor, list[str]]:
    """Stack in NumPy: torch's intra-op threads would fight the training step for the cores over a memcpy."""
    images, labels, indices, errors = zip(*items, strict=True)
    return (torch.from_numpy(np.stack(images)), torch.tensor(labels, dtype=torch.long),
            torch.tensor(indices, dtype=torch.long), list(errors))


class StreamSampler(EpochSampler):
    """:class:`EpochSampler`'s order (sharded by rank, resumable), each index paired with the epoch,
    ``(index, epoch)``, which seeds the image's random crop."""

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        return ((i, self.epoch) for i in self.indices())


class StreamLoader:
    """Batches ``(images uint8 (b, C, S, S), labels (b,), indices (b,))`` of a :class:`FileSplit`, decoded by
    ``workers`` DataLoader processes (0: in this process). Exposes ``sampler`` and ``batch_size`` as the
    training loop expects (an :class:`EpochSampler` skips a resumed epoch's first batches by index).

    Memory: ``workers x prefetch`` batches in flight, whatever the number of files. The DataLoader's
    own seed draws come from a private generator, so the global RNG (flips, erasing, dropout, which a
    resumed run restores) does not depend on the number of workers or of loaders made.
    """

    PREFETCH = 2  # batches each worker keeps ready

    def __init__(self, split: FileSplit, batch_size: int, sampler: Any = None, seed: int = 0,
                 crop_scale: Sequence[float] | None = None, pin_memory: bool = False) -> None:
        workers = split.reader.workers
        self.sampler, self.batch_size = sampler, batch_size
        self.loader = DataLoader(_FileDataset(split, seed, crop_scale), batch_size=batch_size, sampler=sampler,
                                 collate_fn=_collate, num_workers=workers,
                                 persistent_workers=workers > 0 and sampler is not None,
                                 prefetch_factor=self.PREFETCH if workers else None, pin_memory=pin_memory,
                                 generator=torch.Generator().manual_seed(0))  # leaves the global RNG alone

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        for images, labels, indices, errors in self.loader:
            bad = next((e for e in errors if e), None)
            if bad is not None:
                raise ValueError(bad)
            yield images, labels, indices


def train_loader(split: FileSplit, batch_size: int, sampler: StreamSampler, seed: int,
                 crop_scale: Sequence[float] | None = CROP_SCALE, pin_memory: bool = False) -> StreamLoader:
    """The training batches of ``split`` in ``sampler``'s order: random-resized crops of area ``crop_scale``
    seeded by ``seed``, or (None) the evaluation crop."""
    if crop_scale is not None and not 0.0 < crop_scale[0] <= crop_scale[1] <= 1.0:
        raise ValueError(f"the crop scale must satisfy 0 < low <= high <= 1, got {tuple(crop_scale)}")
    return StreamLoader(split, batch_size, sampler, seed, crop_scale, pin_memory)


def eval_batches(split: ImageSplit | FileSplit, batch_size: int) -> Any:
    """``(images uint8, labels)`` batches of a split in order: in memory, or decoded with the evaluation crop."""
    if isinstance(split, FileSplit):
        return ((images, labels) for images, labels, _ in StreamLoader(split, batch_size))
    return BatchLoader(split, batch_size)


def as_image_split(split: ImageSplit | FileSplit, index: Tensor) -> ImageSplit:
    """The images ``index`` of a split in memory (a streamed split's decoded with the evaluation crop)."""
    part = split.subset(index)
    if isinstance(part, ImageSplit):
        return part
    batches = list(StreamLoader(part, max(len(part), 1)))
    return ImageSplit(torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches]))


# ---------------------------------------------------------------------------------- the tree


def _header_sample(listing: FolderListing) -> list[tuple[str, tuple[int, int]]]:
    """(Pillow mode, (width, height)) of a seeded sample of the tree's files, read from their headers."""
    from PIL import Image, UnidentifiedImageError

    files = [f for files, _ in listing.parts.values() for f in files]
    pick = torch.randperm(len(files), generator=torch.Generator().manual_seed(SAMPLE_SEED))[:HEADER_SAMPLE]
    out = []
    for i in pick.tolist():
        try:
            with Image.open(files[i]) as img:
                out.append((img.mode, img.size))
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
            raise ValueError(f"cannot read image {files[i]}: {err}") from err
    return out


def _channels(sample: list[tuple[str, tuple[int, int]]]) -> int:
    return 1 if all(mode in GREY_MODES for mode, _ in sample) else 3


def in_memory_bytes(listing: FolderListing, img_size: int | None) -> int:
    """The estimated bytes of a tree decoded into uint8 tensors: files x channels x img_size^2 (or the
    largest sampled width x height when no size is given), channels from a sample of headers."""
    sample = _header_sample(listing)
    pixels = img_size * img_size if img_size is not None else max(w * h for _, (w, h) in sample)
    return listing.n_files * _channels(sample) * pixels


def _stream_stats(train: FileSplit) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of a seeded sample of ``STATS_IMAGES`` training images (evaluation crop)."""
    pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(SAMPLE_SEED))[:STATS_IMAGES]
    return channel_stats(as_image_split(train, pick.sort().values).images, chunk=32)


def load_images(data: str, mode: str = "auto", data_dir: str | os.PathLike | None = None, img_size: int | None = None,
                val_fraction: float = VAL_FRACTION, limit_train: int | None = None, limit_eval: int | None = None,
                workers: int | None = None, eval_crop: float = EVAL_CROP, memory_limit: int = MEMORY_LIMIT_BYTES,
                stats: tuple[list[float], list[float]] | None = None) -> tuple[ImageData, str]:
    """(the dataset, "memory" or "stream"): ``mode="auto"`` streams an ImageFolder tree whose decoded size
    (:func:`in_memory_bytes`) exceeds ``memory_limit``; built-in datasets are always in memory.

    The streamed splits are the in-memory path's (the same files, order, validation and test
    split, limits); their statistics come from ``STATS_IMAGES`` training images, or are ``stats``
    (mean, std) when known (a run's, when it is evaluated again: no images decoded for them).
    Streaming needs ``img_size``; ``workers`` defaults to :func:`default_workers`.
    """
    if mode not in DATA_MODES:
        raise ValueError(f"data mode must be one of {', '.join(DATA_MODES)}, got {mode!r}")
    check_split_arguments(data, val_fraction, limit_train, limit_eval)
    if dataset_name(data) is not None:
        if mode == "stream":
            raise ValueError(f"streaming reads ImageFolder trees; {data} is a built-in dataset, held in memory "
                             f"(use --data-mode auto or memory)")
        mode = "memory"
    else:
        listing = list_image_folder(Path(data).expanduser())
        if mode == "auto":
            mode = "stream" if in_memory_bytes(listing, img_size) > memory_limit else "memory"
    if mode == "memory":
        return load_image_data(data, data_dir, img_size, val_fraction, limit_train, limit_eval), mode
    if img_size is None:
        raise ValueError(f"a streamed ImageFolder needs an image size: give --img-size N (e.g. 224); {data} is "
                         f"streamed because it is larger than {memory_limit / 1024**3:.0f} GiB decoded, or by "
                         f"--data-mode stream")
    reader = FileReader(img_size, _channels(_header_sample(listing)), eval_crop,
                        default_workers() if workers is None else workers)
    roles = {role: FileSplit(files, torch.tensor(labels, dtype=torch.long), reader)
             for role, (files, labels) in listing.roles().items()}
    root = listing.root.resolve()
    train, val, test, split = form_splits(root.name, listing.classes, roles["train"], roles.get("val"),
                                          roles.get("test"), listing.note(), val_fraction, limit_train, limit_eval)
    if stats is None:
        mean, std = _stream_stats(train)
        split += f"; streamed, statistics of {min(STATS_IMAGES, len(train))} training images"
    else:
        mean, std = stats
        split += "; streamed, statistics given"
    return ImageData(name=root.name, classes=listing.classes, train=train, val=val, test=test, mean=mean, std=std,
                     source=str(root), split=split), mode
