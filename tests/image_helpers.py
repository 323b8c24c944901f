"""Tiny ImageFolder trees of PNGs written with Pillow, shared by the image tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_png(path: Path, size: tuple[int, int] = (6, 6), mode: str = "RGB", value: int = 0) -> None:
    """A random ``size`` = (width, height) image in ``mode`` ("RGB" or "L"), seeded by ``value``."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode).save(path)


def make_folder(root: Path, classes: tuple[str, ...] = ("cat", "dog"), n: int = 6, mode: str = "RGB",
                size: tuple[int, int] = (6, 6)) -> Path:
    """ROOT/CLASS/{0..n-1}.png for every class; returns ROOT."""
    for c in classes:
        for i in range(n):
            write_png(root / c / f"{i}.png", size, mode, value=i)
    return root
