"""Shared by the image tests: tiny ImageFolder trees of PNGs written with Pillow, and a short digits run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


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


def digits_held_out_losses(model: torch.nn.Module, steps: int, lr: float = 2e-3) -> tuple[float, float]:
    """Held-out cross-entropy of ``model`` on scikit-learn's 8x8 digits (the last 300 images) before
    and after ``steps`` AdamW steps on batches of 32 of the others (seeded)."""
    from sklearn.datasets import load_digits

    digits = load_digits()  # 1797 grey 8x8 images, 10 classes
    x = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0
    y = torch.tensor(digits.target)
    held_x, held_y = x[-300:], y[-300:]

    def held_out_loss() -> float:
        model.eval()
        with torch.no_grad():
            return F.cross_entropy(model(held_x), held_y).item()

    before = held_out_loss()
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(x) - 300, (32,), generator=g)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return before, held_out_loss()


FASHION_NAMES = {0: "t-shirt", 1: "trouser", 7: "sneaker"}  # three Fashion-MNIST classes, by label


def fashion_folder(shared_data: Path, root: Path, n_train: int = 40, n_test: int = 20,
                   names: dict[int, str] = FASHION_NAMES) -> Path:  # fmt: skip
    """ROOT/{train,test}/CLASS/INDEX.png: ``n_train`` + ``n_test`` Fashion-MNIST test-set images (28x28
    grey photographs of clothes) of each class of ``names``, written by benchmarks/finetune_transfer.py."""
    from bench_helpers import load_benchmark

    return load_benchmark("finetune_transfer").write_fashion_folder(shared_data, root, names, n_train, n_test)
