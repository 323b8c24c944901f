"""Fine-tuning against training from scratch on real images: a model trained on seven Fashion-MNIST
classes, then a few labelled images of the other three.

    python benchmarks/finetune_transfer.py --data-dir ../shared/data --out runs/transfer
    python benchmarks/finetune_transfer.py --model resnet_small --shots 10 --seeds 0 1 2 --epochs 15

Writes two ImageFolder trees of PNGs from Fashion-MNIST's 10,000 test images (28x28 grey): source/
(seven classes: tops, pullovers, dresses, coats, sandals, shirts, bags; train/ and test/) and target/
(trousers, sneakers, ankle boots: ``--shots`` training images per class, ``--target-test`` test
images). Trains the model on source/ (the recipe, its default augmentation), then on target/ with one
recipe (no validation split: the epoch of lowest training loss is kept) three ways per seed: from
scratch, ``--init`` the source run (every weight trains), and ``--init --freeze-backbone`` (only the
new head trains). Prints a Markdown table of target test top-1 (mean and each seed).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np

SOURCE_CLASSES = (0, 2, 3, 4, 5, 6, 8)
TARGET_CLASSES = (1, 7, 9)


def class_folder_names(labels: tuple[int, ...]) -> dict[int, str]:
    """Fashion-MNIST labels -> folder names ("T-shirt/top" -> "t-shirt-top")."""
    from mambamixer.data.images import IDX_DATASETS

    names = IDX_DATASETS["fashion-mnist"].classes
    return {c: names[c].lower().replace("/", "-").replace(" ", "-") for c in labels}


def write_fashion_folder(data_dir: Path, root: Path, names: dict[int, str], n_train: int, n_test: int) -> Path:
    """ROOT/{train,test}/CLASS/INDEX.png: the first ``n_train``, then the next ``n_test``, images of each
    class of ``names`` (label -> folder name) among Fashion-MNIST's test images; returns ROOT."""
    from PIL import Image

    from mambamixer.data.images import read_idx

    folder = Path(data_dir) / "fashion-mnist"
    images = read_idx(folder / "t10k-images-idx3-ubyte.gz", ndim=3)
    labels = read_idx(folder / "t10k-labels-idx1-ubyte.gz", ndim=1)
    for label, name in names.items():
        index = np.nonzero(labels == label)[0]
        if len(index) < n_train + n_test:
            raise ValueError(f"class {name} has {len(index)} images, fewer than {n_train} + {n_test}")
        for split, chosen in (("train", index[:n_train]), ("test", index[n_train:n_train + n_test])):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in chosen:
                Image.fromarray(images[i]).save(root / split / name / f"{i:05d}.png")
    return root


def main(argv: list[str] | None = None) -> int:
    from mambamixer.tasks.classify import run_classify

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", type=Path, default=Path("../shared/data"), help="holds fashion-mnist/")
    p.add_argument("--out", type=Path, default=Path("runs/transfer"))
    p.add_argument("--model", default="vim2_femto")
    p.add_argument("--source-train", type=int, default=600, help="training images per source class")
    p.add_argument("--source-epochs", type=int, default=5)
    p.add_argument("--shots", type=int, default=20, help="training images per target class")
    p.add_argument("--target-test", type=int, default=300, help="test images per target class")
    p.add_argument("--epochs", type=int, default=10, help="epochs of each target run")
    p.add_argument("--batch-size", type=int, default=16, help="batch of each target run")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--init-lr", type=float, default=None, help="peak learning rate of the --init runs (default: "
                                                                  "the recipe's, as from scratch)")
    args = p.parse_args(argv)

    source = write_fashion_folder(args.data_dir, args.out / "source", class_folder_names(SOURCE_CLASSES),
                                  args.source_train, 1000 - args.source_train)
    target = write_fashion_folder(args.data_dir, args.out / f"target-{args.shots}", class_folder_names(TARGET_CLASSES),
                                  args.shots, args.target_test)
    source_run = args.out / f"source-{args.model}"
    if not (source_run / "metrics.json").is_file():
        run_classify(args.model, str(source), epochs=args.source_epochs, out=source_run, quiet=True)
    ways = {"from scratch": {}, "--init": {"init": source_run, "lr": args.init_lr},
            "--init --freeze-backbone": {"init": source_run, "freeze_backbone": True, "lr": args.init_lr}}
    top1: dict[str, list[float]] = {}
    for way, extra in ways.items():
        for seed in args.seeds:
            tag = way.replace("--", "").replace(" ", "-") + (f"-lr{args.init_lr}" if extra and args.init_lr else "")
            m = run_classify(None if extra else args.model, str(target), epochs=args.epochs, seed=seed,
                             batch_size=args.batch_size, val_fraction=0.0, quiet=True,
                             out=args.out / f"target-{args.shots}-{tag}-s{seed}", **extra)
            top1.setdefault(way, []).append(m["test_top1"])
    print(f"\n{args.model}: target test top-1, {3 * args.shots} training images ({args.shots} a class), "
          f"{3 * args.target_test} test, {args.epochs} epochs, batch {args.batch_size}, seeds {args.seeds}, "
          f"--init lr {args.init_lr or 'the recipe'}\n")
    print("| start | mean | per seed |\n| --- | --- | --- |")
    for way, values in top1.items():
        print(f"| {way} | {statistics.mean(values):.2%} | {', '.join(f'{v:.2%}' for v in values)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
