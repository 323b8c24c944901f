"""Images a second of the training transform on the device batch: the DeiT recipe's (RandAugment, erasing,
Mixup/CutMix) against the default one (crop, flip, erasing), measured in the same run.

    python benchmarks/augment.py [--size 224] [--batch 64] [--steps 5] [--device cpu]
"""

from __future__ import annotations

import argparse
import time

import torch

from mambamixer.data.augment import ImageTransform, default_augment
from mambamixer.data.mixup import Mixup
from mambamixer.tasks.vision_recipes import get_recipe


def images_per_second(step, batch: int, steps: int, device: torch.device) -> float:
    step()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return steps * batch / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    dev = torch.device(args.device)
    torch.manual_seed(0)
    images = torch.randint(0, 256, (args.batch, 3, args.size, args.size), dtype=torch.uint8, device=dev)
    labels = torch.randint(0, 1000, (args.batch,), device=dev)
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    recipe = get_recipe("deit")
    default = ImageTransform(mean, std, args.size, default_augment("folder", args.size))
    deit = ImageTransform(mean, std, args.size, recipe.augment("folder", args.size), recipe.eval_crop_pct)
    mix = Mixup(recipe.mixup(0.1), 1000)
    base = images_per_second(lambda: default(images, train=True), args.batch, args.steps, dev)
    full = images_per_second(lambda: mix(deit(images, train=True), labels), args.batch, args.steps, dev)
    print(f"{dev} {args.size}px batch {args.batch}: default transform {base:,.0f} img/s, deit transform + mixup "
          f"{full:,.0f} img/s ({base / full:.2f}x the default's cost)")


if __name__ == "__main__":
    main()
