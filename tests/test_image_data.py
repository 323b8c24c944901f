"""Image data: IDX (shared Fashion-MNIST and small bad files), digits, ImageFolder, CIFAR batches,
verified downloads from a local mirror, splits, batches and the augmentation ops."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import pickle
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from image_helpers import make_folder, write_png

from mambamixer.data import images as image_data
from mambamixer.data.augment import (
    AlternatingFlips,
    AugmentConfig,
    ImageTransform,
    default_augment,
    parse_augment,
    random_crop,
    random_erase,
    random_hflip,
)
from mambamixer.data.images import (
    BatchLoader,
    IdxFile,
    ImageSplit,
    load_image_data,
    parse_idx,
    read_cifar_batch,
    read_idx,
    stratified_split,
)

FASHION = image_data.IDX_DATASETS["fashion-mnist"]


def idx_bytes(array: np.ndarray, magic: int | None = None, count: int | None = None) -> bytes:
    """An IDX file of unsigned bytes; ``magic`` / ``count`` override the header to make it wrong."""
    shape = list(array.shape)
    if count is not None:
        shape[0] = count
    magic = 0x800 + array.ndim if magic is None else magic
    return magic.to_bytes(4, "big") + b"".join(int(s).to_bytes(4, "big") for s in shape) + array.astype(
        np.uint8).tobytes()


# ------------------------------------------------------------------------------ IDX, shared data


@pytest.fixture(scope="module")
def fashion(shared_data: Path) -> image_data.ImageData:
    return load_image_data("fashion-mnist", data_dir=shared_data)


def test_fashion_mnist_files_verify_and_parse(shared_data: Path) -> None:
    folder = shared_data / "fashion-mnist"
    labels = read_idx(folder / "t10k-labels-idx1-ubyte.gz", ndim=1, count=10000, sha256=FASHION.test_labels.sha256)
    images = read_idx(folder / "t10k-images-idx3-ubyte.gz", ndim=3, count=10000, sha256=FASHION.test_images.sha256)
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8 and labels.shape == (10000,)
    assert labels.min() == 0 and labels.max() == 9 and np.bincount(labels).tolist() == [1000] * 10
    with pytest.raises(ValueError, match="sha256 mismatch"):
        read_idx(folder / "t10k-labels-idx1-ubyte.gz", sha256=FASHION.train_labels.sha256)


def test_fashion_mnist_splits(fashion: image_data.ImageData) -> None:
    assert len(fashion.train) + len(fashion.val) == 60000 and len(fashion.test) == 10000
    assert len(fashion.val) == 6000  # 10% of each class, stratified
    assert torch.bincount(fashion.val.labels).tolist() == [600] * 10
    assert tuple(fashion.train.images.shape[1:]) == (1, 28, 28) and fashion.train.images.dtype == torch.uint8
    assert fashion.num_classes == 10 and fashion.classes[0] == "T-shirt/top" and fashion.classes[9] == "Ankle boot"
    assert int(fashion.train.labels.min()) == 0 and int(fashion.train.labels.max()) == 9
    assert fashion.mean[0] == pytest.approx(0.2860, abs=2e-3) and fashion.std[0] == pytest.approx(0.3530, abs=2e-3)
    again = load_image_data("Fashion_MNIST", data_dir=fashion.source.rsplit("/", 1)[0], limit_train=500)
    assert torch.equal(again.val.labels, fashion.val.labels) and len(again.train) == 500  # same seeded split


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (idx_bytes(np.zeros((3, 2, 2)), magic=0x00000801), "magic number 0x00000801, expected 0x00000803"),
        (b"\x1f\x8b\x08\x00" + b"\x00" * 12, "corrupt gzip"),
        (b"PK\x03\x04" + b"\x00" * 12, "not an IDX file"),
        (idx_bytes(np.zeros((3, 2, 2)), count=4), "header says 4 x 2 x 2"),
        (idx_bytes(np.zeros((3, 2, 2)))[:-1], "bytes after the header"),
        (b"\x00\x00", "shorter than the 4-byte magic"),
    ],
)
def test_bad_idx_files(blob: bytes, message: str, tmp_path: Path) -> None:
    path = tmp_path / "bad-images-idx3-ubyte"
    path.write_bytes(blob)
    with pytest.raises(ValueError, match=message):
        read_idx(path, ndim=3)


def test_idx_count_and_gzip(tmp_path: Path) -> None:
    labels = np.arange(7) % 3
    (tmp_path / "l.gz").write_bytes(gzip.compress(idx_bytes(labels)))
    np.testing.assert_array_equal(read_idx(tmp_path / "l.gz", ndim=1, count=7), labels)  # gzip found by content
    with pytest.raises(ValueError, match="holds 7 items, expected 60000"):
        read_idx(tmp_path / "l.gz", ndim=1, count=60000)
    assert parse_idx(idx_bytes(np.ones((2, 3)))).shape == (2, 3)


def _fake_idx_dataset(root: Path, n_train: int = 40, n_test: int = 20) -> image_data.IdxDataset:
    """Small IDX files under ROOT/mirror/*.gz and a spec that pins their decompressed sha256."""
    rng = np.random.default_rng(0)
    files = {}
    mirror = root / "mirror"
    mirror.mkdir()
    for stem, n in (("train", n_train), ("t10k", n_test)):
        for kind, array in (("images", rng.integers(0, 256, (n, 4, 4))), ("labels", np.arange(n) % 10)):
            raw = idx_bytes(array)
            name = f"{stem}-{kind}-idx{3 if kind == 'images' else 1}-ubyte"
            (mirror / f"{name}.gz").write_bytes(gzip.compress(raw))
            split = "train" if stem == "train" else "test"
            files[f"{split}_{kind}"] = IdxFile(name, n, hashlib.sha256(raw).hexdigest())
    return dataclasses.replace(image_data.IDX_DATASETS["mnist"], mirrors=(
        (root / "offline").as_uri() + "/", mirror.as_uri() + "/"), **files)


def test_idx_download_from_mirror_is_verified(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = _fake_idx_dataset(tmp_path)
    monkeypatch.setitem(image_data.IDX_DATASETS, "mnist", spec)
    data_dir = tmp_path / "data"
    data = load_image_data("mnist", data_dir=data_dir)  # the first mirror fails, the second answers
    assert len(data.train) + len(data.val) == 40 and len(data.test) == 20 and data.image_size == (4, 4)
    stored = data_dir / "mnist" / "train-images-idx3-ubyte"
    assert stored.is_file() and stored.read_bytes()[:4] == b"\x00\x00\x08\x03"  # kept decompressed
    stored.write_bytes(stored.read_bytes()[:-1] + b"\x07")  # a damaged local copy is refused
    with pytest.raises(ValueError, match="sha256 mismatch"):
        load_image_data("mnist", data_dir=data_dir)


def test_idx_download_with_wrong_checksum_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = _fake_idx_dataset(tmp_path)
    spec = dataclasses.replace(spec, train_images=dataclasses.replace(spec.train_images, sha256="0" * 64))
    monkeypatch.setitem(image_data.IDX_DATASETS, "mnist", spec)
    with pytest.raises(ValueError, match="sha256 mismatch"):
        load_image_data("mnist", data_dir=tmp_path / "data")
    assert not list((tmp_path / "data").rglob("train-images*"))


def test_unknown_dataset_names_the_choices() -> None:
    with pytest.raises(ValueError, match="unknown dataset 'imagenet22k'.*fashion-mnist.*ImageFolder"):
        load_image_data("imagenet22k")


# ----------------------------------------------------------------------------------------- digits


def test_digits() -> None:
    pytest.importorskip("sklearn")
    data = load_image_data("digits")
    assert len(data.train) + len(data.val) + len(data.test) == 1797
    assert len(data.test) == 359 and data.image_size == (8, 8) and data.in_chans == 1 and data.num_classes == 10
    assert int(data.train.images.max()) == 255 and int(data.train.images.min()) == 0
    assert torch.bincount(data.test.labels).min() >= 35  # stratified: every digit in the test set


def test_digits_without_scikit_learn_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # as if scikit-learn were not installed
    with pytest.raises(ValueError, match=r"pip install 'mambamixer\[vision\]'"):
        load_image_data("digits")


# ------------------------------------------------------------------------------------ ImageFolder


def test_image_folder_seeded_split(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "pets")
    (root / "cat" / "notes.txt").write_text("not an image, ignored")
    data = load_image_data(str(root))
    assert data.classes == ["cat", "dog"] and data.in_chans == 3 and data.image_size == (6, 6)
    assert len(data.train) + len(data.val) + len(data.test) == 12
    assert torch.bincount(data.test.labels).tolist() == [1, 1] and len(data.val) == 2
    grey = load_image_data(str(make_folder(tmp_path / "grey", mode="L")), img_size=4)
    assert grey.in_chans == 1 and grey.image_size == (4, 4)


def test_image_folder_train_val(tmp_path: Path) -> None:
    make_folder(tmp_path / "tree" / "train", n=5)
    make_folder(tmp_path / "tree" / "val", classes=("dog",), n=3)
    data = load_image_data(str(tmp_path / "tree"))
    assert len(data.test) == 3 and data.test.labels.tolist() == [1, 1, 1]  # val/ is the test set
    assert len(data.train) + len(data.val) == 10 and "test = val/" in data.split


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda root: root.mkdir(), "no class sub-folders"),
        (lambda root: make_folder(root, classes=("only",)), "single class"),
        (lambda root: (make_folder(root), (root / "dog").joinpath("bad.png").write_bytes(b"not a png")),
         "cannot read image .*bad.png"),
        (lambda root: (make_folder(root), (root / "fish").mkdir()), "class folder .*fish has no images"),
        (lambda root: (make_folder(root), write_png(root / "dog" / "big.png", (9, 5))), "different sizes.*--img-size"),
    ],
)
def test_image_folder_errors(build, message: str, tmp_path: Path) -> None:
    root = tmp_path / "tree"
    build(root)
    with pytest.raises(ValueError, match=message):
        load_image_data(str(root))


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no ImageFolder"):
        load_image_data(str(tmp_path / "nowhere") + "/")


# ------------------------------------------------------------------------------------------ CIFAR


def cifar_pickle(n: int, labels_key: bytes = b"labels", seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    blob = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), labels_key: [i % 10 for i in range(n)],
            b"batch_label": b"synthetic"}
    return pickle.dumps(blob, protocol=2)


def test_cifar_batch_reader() -> None:
    images, labels = read_cifar_batch(io.BytesIO(cifar_pickle(4)), "batch")
    assert images.shape == (4, 3, 32, 32) and images.dtype == np.uint8 and labels.tolist() == [0, 1, 2, 3]
    raw = pickle.loads(cifar_pickle(4))[b"data"]
    assert np.array_equal(images[1, 2].ravel(), raw[1, 2048:])  # blue plane: the last 1024 values of a row
    with pytest.raises(ValueError, match="lacks 'data'"):
        read_cifar_batch(io.BytesIO(pickle.dumps({b"x": 1})), "batch")
    with pytest.raises(ValueError, match="refusing to load posix.system|refusing to load os.system"):

        class Evil:
            def __reduce__(self):
                import os

                return os.system, ("true",)

        read_cifar_batch(io.BytesIO(pickle.dumps(Evil())), "batch")


def _cifar_tree(folder: Path) -> None:
    folder.mkdir(parents=True)
    for i in range(1, 6):
        (folder / f"data_batch_{i}").write_bytes(cifar_pickle(10, seed=i))
    (folder / "test_batch").write_bytes(cifar_pickle(10, seed=9))
    names = [f"class{i}".encode() for i in range(10)]
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": names}, protocol=2))


def test_cifar10_from_folder_and_archive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _cifar_tree(tmp_path / "extracted" / "cifar-10-batches-py")
    data = load_image_data("CIFAR-10", data_dir=tmp_path / "extracted")
    assert len(data.train) + len(data.val) == 50 and len(data.test) == 10 and data.in_chans == 3
    assert data.classes[3] == "class3"
    archive = tmp_path / "archived" / "cifar-10-python.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "extracted" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    spec = dataclasses.replace(image_data.CIFAR_DATASETS["cifar10"], sha256=digest)
    monkeypatch.setitem(image_data.CIFAR_DATASETS, "cifar10", spec)
    again = load_image_data("cifar10", data_dir=archive.parent)  # read from the verified archive
    assert torch.equal(again.test.images, data.test.images)
    monkeypatch.setitem(image_data.CIFAR_DATASETS, "cifar10", dataclasses.replace(spec, sha256="0" * 64))
    with pytest.raises(ValueError, match="sha256 mismatch"):
        load_image_data("cifar10", data_dir=archive.parent)


# --------------------------------------------------------------------------- splits, batches, augment


def test_stratified_split_and_batches() -> None:
    labels = torch.tensor([0] * 10 + [1] * 5 + [2])
    kept, held = stratified_split(labels, 0.2, seed=3)
    assert torch.bincount(labels[held], minlength=3).tolist() == [2, 1, 0]  # a lone item stays in training
    assert sorted(kept.tolist() + held.tolist()) == list(range(16))
    assert torch.equal(held, stratified_split(labels, 0.2, seed=3)[1])
    split = ImageSplit(torch.zeros(10, 1, 2, 2, dtype=torch.uint8), torch.arange(10))
    assert len(BatchLoader(split, 4)) == 3 and len(BatchLoader(split, 4, drop_last=True)) == 2
    seen = torch.cat([y for _, y in BatchLoader(split, 4, shuffle=True, generator=torch.Generator().manual_seed(0))])
    assert sorted(seen.tolist()) == list(range(10))
    for loader in (BatchLoader(split, 4, with_indices=True), BatchLoader(split, 4, sampler=[7, 2, 9, 0, 5],
                                                                                   with_indices=True)):  # fmt: skip
        for _, y, idx in loader:  # the labels here are the indices
            assert torch.equal(y, idx)


def test_augmentation_ops() -> None:
    torch.manual_seed(0)
    x = torch.rand(16, 3, 8, 8)
    assert torch.equal(random_crop(x, 0), x)
    cropped = random_crop(x, 2)
    assert cropped.shape == x.shape and ((cropped == 0).flatten(1).any(1)).any()  # some offsets show the padding
    flipped = random_hflip(x)
    assert all(torch.equal(f, i) or torch.equal(f, i.flip(-1)) for f, i in zip(flipped, x, strict=True))
    erased = random_erase(x, p=1.0)
    assert ((erased == 0).flatten(1).sum(1) > 0).all() and torch.equal(random_erase(x, p=0.0), x)
    assert default_augment("digits", 8).hflip is False and default_augment("cifar10", 32).crop_padding == 4
    transform = ImageTransform([0.5], [0.25], img_size=16, augment=default_augment("fashion-mnist", 16))
    images = torch.full((4, 1, 8, 8), 128, dtype=torch.uint8)
    out = transform(images)
    assert out.shape == (4, 1, 16, 16)
    assert torch.allclose(out, torch.full_like(out, (128 / 255 - 0.5) / 0.25), atol=1e-5)
    assert transform(images, train=True).shape == (4, 1, 16, 16)


def test_alternating_flips() -> None:
    """Epoch 0 mirrors a seeded half of the images; every later epoch mirrors exactly the others of the epoch before."""
    flips = AlternatingFlips(1000, seed=0)
    idx = torch.randperm(1000)[:300]
    first = flips(idx, 0)
    assert 0.4 < first.float().mean() < 0.6
    assert torch.equal(flips(idx, 1), ~first) and torch.equal(flips(idx, 2), first)
    assert torch.equal(flips(idx, 7), ~first)
    assert torch.equal(AlternatingFlips(1000, seed=0)(idx, 0), first)  # the same in every process
    assert not torch.equal(AlternatingFlips(1000, seed=1)(idx, 0), first)
    x = torch.rand(4, 1, 3, 3)
    mask = torch.tensor([True, False, False, True])
    flipped = random_hflip(x, flip=mask)
    assert all(torch.equal(f, i.flip(-1) if m else i) for f, i, m in zip(flipped, x, mask, strict=True))
    transform = ImageTransform([0.0], [1.0], augment=AugmentConfig(hflip=True, flip_schedule="alternate"))
    images = torch.randint(0, 256, (4, 1, 3, 3), dtype=torch.uint8)
    assert torch.equal(transform(images, train=True, flip=mask), random_hflip(images.float() / 255, flip=mask))


def test_parse_augment() -> None:
    assert parse_augment("flip=alternate,crop=1", "x", 28) == AugmentConfig(hflip=True, flip_schedule="alternate",
                                                                            crop_padding=1)  # fmt: skip
    assert parse_augment("flip=random", "x", 28) == parse_augment("flip", "x", 28)
    assert parse_augment("flip,crop=2", "fashion-mnist", 28) == AugmentConfig(hflip=True, crop_padding=2)
    assert parse_augment(" Flip , erase=0.5", "x", 28) == AugmentConfig(hflip=True, erase_prob=0.5)
    assert parse_augment("none", "x", 28) is None
    assert parse_augment("default", "cifar10", 32) == default_augment("cifar10", 32)
    for bad in ("rotate", "crop", "crop=two", "flip=1", "flip=sometimes", "erase=2"):
        with pytest.raises(ValueError, match="augmentation|erase_prob"):
            parse_augment(bad, "x", 28)
