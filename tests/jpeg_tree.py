"""A JPEG ImageFolder tree made of real images: Fashion-MNIST written at random sizes (tests and
benchmarks/image_stream.py).

    root = write_jpeg_tree(tmp_path / "fashion", shared_data, n_train=200, n_val=100)
    # root/train/<class>/<i>.jpg and root/val/<class>/<i>.jpg, square, 40 to 160 px
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mambamixer.data.images import IDX_DATASETS, read_idx

SIZES = (40, 160)  # side lengths, uniform, inclusive


def fashion_arrays(shared_data: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST's ``split`` ("train" or "test"): images (n, 28, 28) uint8 and labels (n,), verified."""
    spec = IDX_DATASETS["fashion-mnist"]
    images, labels = (spec.train_images, spec.train_labels) if split == "train" else (spec.test_images,
                                                                                      spec.test_labels)
    folder = shared_data / spec.folder
    x = read_idx(folder / f"{images.name}.gz", ndim=3, count=images.count, sha256=images.sha256)
    y = read_idx(folder / f"{labels.name}.gz", ndim=1, count=labels.count, sha256=labels.sha256)
    return x, y


def write_jpeg_tree(root: Path, shared_data: Path, n_train: int, n_val: int, seed: int = 0,
                    sizes: tuple[int, int] = SIZES, quality: int = 90, mode: str = "L") -> Path:
    """ROOT/train/<label>/<i>.jpg from the first ``n_train`` Fashion-MNIST training images and ROOT/val/... from
    the first ``n_val`` test images, each upscaled (bicubic) to a seeded random square size in ``sizes``, saved
    grey (``mode="L"``) or as three-component colour JPEGs (``"RGB"``, the decoding cost of photos)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for part, split, n in (("train", "train", n_train), ("val", "test", n_val)):
        x, y = fashion_arrays(shared_data, split)
        if n > len(x):
            raise ValueError(f"Fashion-MNIST's {split} split has {len(x)} images, asked for {n}")
        for label in np.unique(y[:n]):
            (root / part / str(label)).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            side = int(rng.integers(sizes[0], sizes[1] + 1))
            img = Image.fromarray(x[i], mode="L").resize((side, side), Image.Resampling.BICUBIC)
            img.convert(mode).save(root / part / str(y[i]) / f"{i}.jpg", quality=quality)
    return root
