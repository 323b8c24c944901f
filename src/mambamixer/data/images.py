"""Image-classification data: the built-in datasets and any ImageFolder tree, held in memory.

    data = load_image_data("fashion-mnist")                # data_dir/fashion-mnist/, downloaded if missing
    data = load_image_data("digits")                       # scikit-learn's bundled 8x8 digits, offline
    data = load_image_data("/data/flowers", img_size=64)   # class sub-folders, decoded with Pillow
    x, y = data.train.images, data.train.labels            # (n, channels, height, width) uint8, (n,) int64

Every split is a pair of tensors (uint8 images, int64 labels); the task converts, resizes,
augments and normalises whole batches on the device. ``val`` is a seeded, stratified part
of the training images held out for best-epoch selection; ``test`` is the official test set
(digits and ImageFolder trees without one get a seeded, stratified split). The choices and
checksums are in docs/vision_data.md.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import os
import pickle
import tarfile
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Self

import numpy as np
import torch
from torch import Tensor

from mambamixer.data.download import fetch, resolve_data_dir
from mambamixer.data.image_folder import load_image_folder

__all__ = ["DATASETS", "BatchLoader", "ImageData", "ImageSplit", "Split", "check_split_arguments", "form_splits",
           "load_image_data", "parse_idx", "read_cifar_batch", "read_idx", "stratified_split"]

VAL_FRACTION = 0.1  # part of the training images held out for best-epoch selection
TEST_FRACTION = 0.2  # digits / ImageFolder trees without a test folder
SPLIT_SEED = 0  # fixed, not the training seed: every run of a dataset sees the same splits


# ----------------------------------------------------------------------------------- containers


@dataclass
class ImageSplit:
    """Images (n, channels, height, width) uint8 and labels (n,) int64."""

    images: Tensor
    labels: Tensor

    def __post_init__(self) -> None:
        if self.images.dim() != 4 or self.images.dtype != torch.uint8:
            raise ValueError(f"images must be (n, channels, height, width) uint8, got {tuple(self.images.shape)} "
                             f"{self.images.dtype}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"{self.images.shape[0]} images but labels of shape {tuple(self.labels.shape)}")
        self.labels = self.labels.long()

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def in_chans(self) -> int:
        return int(self.images.shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.images.shape[2]), int(self.images.shape[3])

    def subset(self, index: Tensor) -> ImageSplit:
        return ImageSplit(self.images[index], self.labels[index])


class Split(Protocol):
    """What :func:`form_splits` needs of a split: in memory (:class:`ImageSplit`) or streamed from files."""

    labels: Tensor

    def __len__(self) -> int: ...

    def subset(self, index: Tensor) -> Self: ...


@dataclass
class ImageData:
    """A dataset ready for training: three splits (in memory, or files streamed by ``data/image_stream.py``),
    class names, and training-split statistics."""

    name: str
    classes: list[str]
    train: Any  # ImageSplit or image_stream.FileSplit, the same kind for all three
    val: Any
    test: Any
    mean: list[float]  # per channel, pixel values scaled to [0, 1], over the training split
    std: list[float]
    source: str  # the files or folder read
    split: str  # how validation and test were formed

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_chans(self) -> int:
        return self.train.in_chans

    @property
    def image_size(self) -> tuple[int, int]:
        return self.train.image_size

    def describe(self) -> str:
        h, w = self.image_size
        return (f"{self.name}: {self.num_classes} classes, {self.in_chans}x{h}x{w}, train {len(self.train)}, "
                f"val {len(self.val)}, test {len(self.test)} ({self.split})")


def channel_stats(images: Tensor, chunk: int = 8192) -> tuple[list[float], list[float]]:
    """Per-channel mean and population std of uint8 images (n, C, H, W), on the [0, 1] scale."""
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    square = torch.zeros_like(total)
    for start in range(0, len(images), chunk):
        x = images[start:start + chunk].double() / 255.0
        total += x.sum(dim=(0, 2, 3))
        square += x.square().sum(dim=(0, 2, 3))
    count = max(images.shape[0] * images.shape[2] * images.shape[3], 1)
    mean = total / count
    std = (square / count - mean.square()).clamp_min(0).sqrt()
    std = torch.where(std > 1e-6, std, torch.ones_like(std))  # a constant channel is left unscaled
    return mean.tolist(), std.tolist()


def stratified_split(labels: Tensor, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Indices (kept, held_out): ``round(fraction * n_c)`` of each class's n_c items, at least one, are held out.

    A class with a single item keeps it; ``fraction=0`` holds out nothing. Both index tensors are sorted.
    """
    g = torch.Generator().manual_seed(seed)
    kept, held = [], []
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        k = min(max(round(fraction * len(idx)), 1 if fraction > 0 else 0), len(idx) - 1)
        held.append(idx[:k])
        kept.append(idx[k:])
    return torch.cat(kept).sort().values, torch.cat(held).sort().values


# ------------------------------------------------------------------------------------------ IDX

# the third byte of an IDX magic number: element type
_IDX_TYPES = {0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
              0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def parse_idx(blob: bytes, what: str = "IDX data", ndim: int | None = None, count: int | None = None) -> np.ndarray:
    """Decode IDX bytes (big-endian: 2 zero bytes, type byte, ndim byte, ndim uint32 sizes, data).

    ``ndim`` / ``count`` (the first size) are checked when given, as unsigned bytes (MNIST's
    0x00000801 labels, 0x00000803 images). Every violation raises ``ValueError`` naming ``what``.
    """
    if len(blob) < 4:
        raise ValueError(f"{what} is not an IDX file: {len(blob)} bytes, shorter than the 4-byte magic number")
    magic = int.from_bytes(blob[:4], "big")
    type_code, dims = blob[2], blob[3]
    if blob[:2] != b"\x00\x00" or type_code not in _IDX_TYPES or dims == 0:
        raise ValueError(f"{what} is not an IDX file: magic number 0x{magic:08x}, expected 0x000008NN "
                         f"(0x00000801 for labels, 0x00000803 for images)")
    if ndim is not None and (type_code != 0x08 or dims != ndim):
        raise ValueError(f"{what} has magic number 0x{magic:08x}, expected 0x{0x800 + ndim:08x} "
                         f"({ndim}-dimensional unsigned bytes)")
    header = 4 + 4 * dims
    if len(blob) < header:
        raise ValueError(f"{what} is truncated: {len(blob)} bytes, the header alone needs {header}")
    shape = tuple(int.from_bytes(blob[4 + 4 * i:8 + 4 * i], "big") for i in range(dims))
    dtype = _IDX_TYPES[type_code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(blob) - header != expected:
        raise ValueError(f"{what} header says {' x '.join(map(str, shape))} items ({expected} bytes of data), "
                         f"but the file has {len(blob) - header} bytes after the header")
    if count is not None and shape[0] != count:
        raise ValueError(f"{what} holds {shape[0]} items, expected {count}")
    return np.frombuffer(blob, dtype=dtype, offset=header).reshape(shape)


def _read_maybe_gzip(path: Path) -> bytes:
    raw = path.read_bytes()
    if raw[:2] != b"\x1f\x8b":  # gzip magic: decide by content, not by the file name
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as err:
        raise ValueError(f"{path} is a corrupt gzip file ({err})") from err


def read_idx(path: str | os.PathLike, ndim: int | None = None, count: int | None = None,
             sha256: str | None = None) -> np.ndarray:
    """Read an IDX file, gzipped or raw; ``sha256`` is checked against the decompressed content."""
    path = Path(path)
    blob = _read_maybe_gzip(path)
    if sha256 is not None:
        got = hashlib.sha256(blob).hexdigest()
        if got != sha256:
            raise ValueError(f"sha256 mismatch for the content of {path}: expected {sha256}, got {got}. The file "
                             f"is corrupt or a different version: delete it to download it again")
    return parse_idx(blob, str(path), ndim, count)


@dataclass(frozen=True)
class IdxFile:
    name: str  # file name without .gz
    count: int
    sha256: str  # of the decompressed content, so any gzip of the same data verifies


@dataclass(frozen=True)
class IdxDataset:
    folder: str
    mirrors: tuple[str, ...]  # base URLs tried in order, each serving NAME.gz
    classes: tuple[str, ...]
    train_images: IdxFile
    train_labels: IdxFile
    test_images: IdxFile
    test_labels: IdxFile


_DIGITS = tuple(str(d) for d in range(10))
IDX_DATASETS = {
    # Canonical source: zalandoresearch/fashion-mnist (its README links these files). Digests: the
    # decompressed-content sha256 of the data README (Debian recompresses the .gz files).
    "fashion-mnist": IdxDataset(
        folder="fashion-mnist",
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        classes=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                 "Ankle boot"),
        train_images=IdxFile("train-images-idx3-ubyte", 60000,
                             "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"),
        train_labels=IdxFile("train-labels-idx1-ubyte", 60000,
                             "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"),
        test_images=IdxFile("t10k-images-idx3-ubyte", 10000,
                            "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"),
        test_labels=IdxFile("t10k-labels-idx1-ubyte", 10000,
                            "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"),
    ),
    # yann.lecun.com/exdb/mnist is unreliable (HTTP 403 for years); PyTorch's S3 mirror and Google's
    # CVDF mirror serve the same .gz bytes (gz sha256 440fcabf..., 3552534a..., 8d422c7b..., f7ae60f9...).
    # Pinned: the decompressed-content sha256, as published by several independent projects.
    "mnist": IdxDataset(
        folder="mnist",
        mirrors=("https://ossci-datasets.s3.amazonaws.com/mnist/", "https://storage.googleapis.com/cvdf-datasets/mnist/"),
        classes=_DIGITS,
        train_images=IdxFile("train-images-idx3-ubyte", 60000,
                             "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"),
        train_labels=IdxFile("train-labels-idx1-ubyte", 60000,
                             "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"),
        test_images=IdxFile("t10k-images-idx3-ubyte", 10000,
                            "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"),
        test_labels=IdxFile("t10k-labels-idx1-ubyte", 10000,
                            "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"),
    ),
}


def _fetch_from_mirrors(mirrors: Sequence[str], filename: str, dest: Path, sha256: str | None,
                        decompress: str | None = None) -> Path:
    """``fetch`` from the first mirror that answers; a checksum mismatch is not retried elsewhere."""
    errors = []
    for base in mirrors:
        try:
            return fetch(base + filename, dest, sha256, decompress=decompress)
        except FileNotFoundError as err:
            errors.append(str(err))
    raise FileNotFoundError("\n".join(errors))


def _idx_path(spec: IdxDataset, file: IdxFile, root: Path) -> Path:
    """The local file (raw or .gz; in ROOT/FOLDER or ROOT itself), downloaded (decompressed) if missing."""
    for folder in (root / spec.folder, root):
        for name in (file.name, file.name + ".gz"):
            if (folder / name).is_file():
                return folder / name
    return _fetch_from_mirrors(spec.mirrors, file.name + ".gz", root / spec.folder / file.name, file.sha256,
                               decompress="gzip")


def _load_idx_dataset(name: str, root: Path) -> tuple[ImageSplit, ImageSplit, list[str], str]:
    spec = IDX_DATASETS[name]
    splits = []
    for images_file, labels_file in ((spec.train_images, spec.train_labels), (spec.test_images, spec.test_labels)):
        images_path = _idx_path(spec, images_file, root)
        images = read_idx(images_path, ndim=3, count=images_file.count, sha256=images_file.sha256)
        labels = read_idx(_idx_path(spec, labels_file, root), ndim=1, count=labels_file.count,
                          sha256=labels_file.sha256)
        splits.append(ImageSplit(torch.from_numpy(images.copy()).unsqueeze(1),  # (n, 1, 28, 28)
                                 torch.from_numpy(labels.astype(np.int64))))
    return splits[0], splits[1], list(spec.classes), str(images_path.parent)


# ---------------------------------------------------------------------------------------- CIFAR


@dataclass(frozen=True)
class CifarDataset:
    archive: str
    url: str
    sha256: str  # of the .tar.gz (the MD5 on the CIFAR page is c58f3010... / eb9058c3...)
    folder: str  # the folder inside the archive
    train: tuple[str, ...]
    test: tuple[str, ...]
    meta: str
    names_key: str
    labels_key: str


CIFAR_DATASETS = {
    "cifar10": CifarDataset(
        "cifar-10-python.tar.gz", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce", "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",), "batches.meta", "label_names", "labels"),
    "cifar100": CifarDataset(
        "cifar-100-python.tar.gz", "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        "85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7", "cifar-100-python",
        ("train",), ("test",), "meta", "fine_label_names", "fine_labels"),
}

# What a CIFAR pickle may reference: numpy arrays (and _codecs.encode, which protocol-2 pickles written
# by Python 3 use for bytes) and nothing else, so a batch file cannot run code.
_SAFE_GLOBALS = {("_codecs", "encode"), ("numpy", "ndarray"), ("numpy", "dtype"),
                 ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                 ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar")}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _SAFE_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: a CIFAR batch holds only arrays, "
                                         f"lists and strings")
        if module.startswith("numpy.core.") and hasattr(np, "_core"):  # numpy 2 renamed numpy.core
            module = "numpy._core." + module[len("numpy.core."):]
        return super().find_class(module, name)


def _unpickle(fh: io.BufferedIOBase, what: str) -> dict[str, Any]:
    try:
        blob = _ArrayUnpickler(fh, encoding="bytes").load()
    except Exception as err:  # pickle raises many types on corrupt input
        raise ValueError(f"cannot read {what} as a CIFAR python batch: {err}") from err
    if not isinstance(blob, dict):
        raise ValueError(f"{what} is not a CIFAR python batch (no dictionary inside)")
    return {k.decode() if isinstance(k, bytes) else str(k): v for k, v in blob.items()}


def read_cifar_batch(fh: io.BufferedIOBase, what: str, labels_key: str = "labels") -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR python batch -> images (n, 3, 32, 32) uint8 and labels (n,) int64."""
    blob = _unpickle(fh, what)
    if "data" not in blob or labels_key not in blob:
        raise ValueError(f"{what} lacks 'data' or {labels_key!r} (keys: {sorted(blob)})")
    data = np.asarray(blob["data"])
    labels = np.asarray(blob[labels_key], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{what}: 'data' must be (n, 3072) uint8, got {data.shape} {data.dtype}")
    if labels.shape != (data.shape[0],):
        raise ValueError(f"{what}: {data.shape[0]} images but {labels.shape[0]} labels")
    return data.reshape(-1, 3, 32, 32), labels  # rows are the R, G, B planes, each 32x32 row-major


def _load_cifar(name: str, root: Path) -> tuple[ImageSplit, ImageSplit, list[str], str]:
    spec = CIFAR_DATASETS[name]
    folder = root / spec.folder
    with contextlib.ExitStack() as stack:
        if folder.is_dir():  # an extracted archive: read the batch files as they are
            source = str(folder)

            def open_member(member: str) -> io.BufferedIOBase:
                if not (folder / member).is_file():
                    raise FileNotFoundError(f"{folder / member} is missing (expected the extracted {spec.archive})")
                return (folder / member).open("rb")
        else:  # read the batches straight from the verified archive, without extracting it
            archive = fetch(spec.url, root / spec.archive, spec.sha256)
            source = str(archive)
            tar = stack.enter_context(tarfile.open(archive, "r:gz"))

            def open_member(member: str) -> io.BufferedIOBase:
                fh = tar.extractfile(f"{spec.folder}/{member}")
                if fh is None:
                    raise ValueError(f"{archive} lacks {spec.folder}/{member}")
                return fh  # type: ignore[return-value]

        with open_member(spec.meta) as fh:
            meta = _unpickle(fh, f"{source}/{spec.meta}")
        classes = [c.decode() if isinstance(c, bytes) else str(c) for c in meta.get(spec.names_key, [])]
        if not classes:
            raise ValueError(f"{source}/{spec.meta} lacks the class names ({spec.names_key!r})")
        splits = []
        for members in (spec.train, spec.test):
            parts = []
            for member in members:
                with open_member(member) as fh:
                    parts.append(read_cifar_batch(fh, f"{source}/{member}", spec.labels_key))
            splits.append(ImageSplit(torch.from_numpy(np.concatenate([p[0] for p in parts])),
                                     torch.from_numpy(np.concatenate([p[1] for p in parts]))))
    return splits[0], splits[1], classes, source


# --------------------------------------------------------------------------------------- digits


def _load_digits() -> tuple[ImageSplit, list[str], str]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise ValueError("the digits dataset is scikit-learn's bundled copy: install it with "
                         "pip install 'mambamixer[vision]' (or pip install scikit-learn)") from err
    bunch = load_digits()
    # values are counts 0..16 of set pixels in 4x4 blocks: map them onto 0..255
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]  # (1797, 1, 8, 8)
    split = ImageSplit(torch.from_numpy(images), torch.from_numpy(bunch.target.astype(np.int64)))
    return split, [str(n) for n in bunch.target_names], "sklearn.datasets.load_digits"


# ------------------------------------------------------------------------------------- dispatch

DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10", "cifar100")
_ALIASES = {"fashionmnist": "fashion-mnist", "fashion_mnist": "fashion-mnist", "cifar-10": "cifar10",
            "cifar_10": "cifar10", "cifar-100": "cifar100", "cifar_100": "cifar100"}


def dataset_name(data: str) -> str | None:
    """The canonical built-in name of ``data`` (case-insensitive, with aliases), or None for a path."""
    key = data.strip().lower()
    key = _ALIASES.get(key, key)
    return key if key in DATASETS else None


def is_folder_argument(data: str) -> bool:
    return dataset_name(data) is None and (os.sep in data or Path(data).expanduser().is_dir())


def check_data_argument(data: str) -> None:
    """Raise a clear ``ValueError`` for a name that is neither a built-in dataset nor a folder path."""
    if dataset_name(data) is None and not is_folder_argument(data):
        raise ValueError(f"unknown dataset {data!r}: expected one of {', '.join(DATASETS)}, or the path of an "
                         f"ImageFolder tree (a folder of class sub-folders holding images)")


def _seeded_subset(split: Split, n: int, seed: int) -> Split:
    if n >= len(split):
        return split
    keep = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[:n]
    return split.subset(keep.sort().values)


def check_split_arguments(data: str, val_fraction: float, limit_train: int | None, limit_eval: int | None) -> None:
    """``ValueError`` for an unknown dataset, a val_fraction outside [0, 1) or a limit that is no positive integer."""
    check_data_argument(data)
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    for what, limit in (("limit_train", limit_train), ("limit_eval", limit_eval)):
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise ValueError(f"{what} must be a positive integer, got {limit!r}")


def form_splits(name: str, classes: list[str], train: Split, val: Split | None, test: Split | None, note: str,
                val_fraction: float = VAL_FRACTION, limit_train: int | None = None,
                limit_eval: int | None = None) -> tuple[Split, Split, Split, str]:
    """(train, val, test, split note) of a dataset's parts, the same for in-memory and streamed splits.

    A missing ``test`` is a stratified ``TEST_FRACTION`` of ``train`` (seed ``SPLIT_SEED``), a missing
    ``val`` a stratified ``val_fraction`` of what is left (seed ``SPLIT_SEED + 1``); then the seeded
    ``limit_train`` / ``limit_eval`` subsets. ``note`` may hold "validation held out of train/".
    """
    held_out = f"validation: {val_fraction:.0%} of train, stratified, seed {SPLIT_SEED + 1}"
    if test is None:
        kept, held = stratified_split(train.labels, TEST_FRACTION, SPLIT_SEED)
        train, test = train.subset(kept), train.subset(held)
        note = f"test: {TEST_FRACTION:.0%} of the images, stratified, seed {SPLIT_SEED}; {held_out}"
    note = note.replace("validation held out of train/", held_out)
    if val is None:
        kept, held = stratified_split(train.labels, val_fraction, SPLIT_SEED + 1)
        train, val = train.subset(kept), train.subset(held)
    if limit_train is not None and limit_train < len(train):
        train = _seeded_subset(train, limit_train, SPLIT_SEED + 2)
        note += f"; training limited to {limit_train} images (seeded)"
    if limit_eval is not None and max(len(val), len(test)) > limit_eval:
        val, test = _seeded_subset(val, limit_eval, SPLIT_SEED + 3), _seeded_subset(test, limit_eval, SPLIT_SEED + 4)
        note += f"; validation and test limited to {limit_eval} images each (seeded): not comparable to results"
    for what, part in (("training", train), ("test", test)):
        if len(part) == 0:
            raise ValueError(f"{name}: the {what} split has no images")
        bad = (part.labels < 0) | (part.labels >= len(classes))
        if bad.any():
            raise ValueError(f"{name}: {what} labels must lie in 0..{len(classes) - 1}, found "
                             f"{part.labels[bad][0].item()}")
    return train, val, test, note


def load_image_data(
    data: str,
    data_dir: str | os.PathLike | None = None,
    img_size: int | None = None,
    val_fraction: float = VAL_FRACTION,
    limit_train: int | None = None,
    limit_eval: int | None = None,
) -> ImageData:
    """Load a dataset by name (``DATASETS``) or an ImageFolder path into memory.

    ``img_size`` resizes ImageFolder images while decoding (needed when their sizes differ);
    built-in datasets keep their native size (the task resizes batches). ``val_fraction`` of
    the training images (stratified, seed ``SPLIT_SEED``) is held out as validation, unless the
    tree has its own; ``limit_train`` keeps a seeded subset of that many training images and
    ``limit_eval`` of that many validation and test images (quick checks, not results).
    """
    check_split_arguments(data, val_fraction, limit_train, limit_eval)
    name = dataset_name(data)
    val: ImageSplit | None = None
    test: ImageSplit | None = None
    if name == "digits":
        everything, classes, source = _load_digits()
        kept, held = stratified_split(everything.labels, TEST_FRACTION, SPLIT_SEED)
        train, test = everything.subset(kept), everything.subset(held)
        note = (f"test: {TEST_FRACTION:.0%} of the 1797 images, stratified, seed {SPLIT_SEED}; "
                "validation held out of train/")
    elif name is not None:
        load = _load_cifar if name.startswith("cifar") else _load_idx_dataset
        train, test, classes, source = load(name, resolve_data_dir(data_dir))
        note = "test: the official test set; validation held out of train/"
    else:
        root = Path(data).expanduser()
        parts, classes, note = load_image_folder(root, img_size)
        splits = {what: ImageSplit(*tensors) for what, tensors in parts.items()}
        train, val, test = splits["train"], splits.get("val"), splits.get("test")
        source, name = str(root.resolve()), root.resolve().name
    train, val, test, split = form_splits(name, classes, train, val, test, note, val_fraction, limit_train, limit_eval)
    mean, std = channel_stats(train.images)
    return ImageData(name=name, classes=classes, train=train, val=val, test=test, mean=mean, std=std, source=source,
                     split=split)


class BatchLoader:
    """Mini-batches ``(images uint8 (b, C, H, W), labels (b,))`` of an in-memory split.

    Indexes whole batches at once (no per-item collation). ``shuffle`` draws a new order each
    epoch from ``generator``; ``drop_last`` drops the short final batch (training only). A
    ``sampler`` (e.g. the training core's ``EpochSampler``: sharded by rank, resumable) gives the
    order instead, cut into consecutive batches. ``with_indices=True`` adds each image's index in
    the split, ``(images, labels, indices (b,))`` (for per-image schedules such as ``AlternatingFlips``).
    """

    def __init__(self, split: ImageSplit, batch_size: int, shuffle: bool = False,
                 generator: torch.Generator | None = None, drop_last: bool = False,
                 sampler: Iterable[int] | None = None, with_indices: bool = False) -> None:
        self.split = split
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.generator = generator
        self.drop_last = drop_last
        self.sampler = sampler
        self.with_indices = with_indices

    def __len__(self) -> int:
        n = len(self.sampler) if self.sampler is not None else len(self.split)  # type: ignore[arg-type]
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        bs = self.batch_size
        if self.sampler is not None:
            order: Tensor | None = torch.tensor(list(self.sampler), dtype=torch.long)
            n = len(order)
        else:
            n = len(self.split)
            order = torch.randperm(n, generator=self.generator) if self.shuffle else None
        stop = n - n % bs if self.drop_last else n
        for start in range(0, stop, bs):
            if order is None:  # slices are views: no copy for evaluation
                batch = self.split.images[start:start + bs], self.split.labels[start:start + bs]
                idx = torch.arange(start, min(start + bs, n))
            else:
                idx = order[start:start + bs]
                batch = self.split.images[idx], self.split.labels[idx]
            yield (*batch, idx) if self.with_indices else batch
