"""The streamed ImageFolder: loader throughput beside the training step, peak memory against the number of files,
and accuracy against the in-memory path, on JPEG trees of Fashion-MNIST written at random sizes.

    python benchmarks/image_stream.py throughput                 # images/s at 224 px, workers 0 1 2, vim2_tiny step
    python benchmarks/image_stream.py throughput --sizes 350 500 # ImageNet-like pixel counts
    python benchmarks/image_stream.py rss --files 7000 70000     # peak RSS over a fixed number of batches
    python benchmarks/image_stream.py accuracy --epochs 3 --limit-train 6000 --limit-eval 2000

``throughput`` times ``--batches`` training batches (random-resized crops, decoded by Pillow with
``Image.draft``) per worker count, the decode of one process with and without the draft, and (with
``simplejpeg`` importable) that decoder on the same files, then one training step of ``--model``
on batches of that size (forward + backward, ``measure_throughput`` of the task), so which one bounds
a run can be read off. ``rss`` trains nothing: each tree size runs in its own process that lists the
tree, forms the splits and reads ``--batches`` batches with ``--workers`` workers, then reports its own
peak RSS and its largest worker's. ``accuracy`` runs ``mambamixer classify`` on the in-memory path and
the streamed one (``--crop-scale 1 --eval-crop 1``: the in-memory recipe; and the defaults) with the
same recipe and epochs. Trees are written once under ``--root`` (tests/jpeg_tree.py) and kept.
Figures go to ``--results`` (JSON) and are printed; benchmarks/README.md holds the latest.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MAMBAMIXER_DATA", REPO.parent / "shared" / "data"))


def _jpeg_tree_module():
    spec = importlib.util.spec_from_file_location("jpeg_tree", REPO / "tests" / "jpeg_tree.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tree(root: Path, files: int, sizes: tuple[int, int], mode: str = "L") -> Path:
    """ROOT/fashion-FILES-LOW-HIGH[-RGB]: ``files`` JPEGs, 6/7 of them training images (Fashion-MNIST's split)."""
    folder = root / f"fashion-{files}-{sizes[0]}-{sizes[1]}{'-RGB' if mode == 'RGB' else ''}"
    if not (folder / "done").exists():
        t0 = time.perf_counter()
        n_val = files // 7
        _jpeg_tree_module().write_jpeg_tree(folder, DATA, n_train=files - n_val, n_val=n_val, sizes=sizes, mode=mode)
        (folder / "done").write_text(f"{time.perf_counter() - t0:.0f} s\n")
    return folder


def _stream(folder: Path, img_size: int, workers: int):
    from mambamixer.data.image_stream import load_images

    data, _ = load_images(str(folder), "stream", img_size=img_size, workers=workers)
    return data


def _loader_rate(split, batch: int, batches: int) -> float:
    from mambamixer.data.image_stream import StreamSampler, train_loader

    sampler = StreamSampler(len(split), 0, None, batch)
    sampler.set_epoch(0)
    it = iter(train_loader(split, batch, sampler, seed=0))
    next(it)  # worker start-up and the first prefetch are not counted
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * batch / (time.perf_counter() - t0)


def _decode_rate(files: list[Path], img_size: int, draft: bool) -> float:
    from mambamixer.data.image_stream import random_resized_box, read_image

    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    for path in files:
        read_image(path, img_size, False, lambda w, h: random_resized_box(w, h, rng), draft=draft)
    return len(files) / (time.perf_counter() - t0)


def _simplejpeg_rate(files: list[Path], img_size: int) -> float | None:
    """simplejpeg (libjpeg-turbo, DCT scaling by min_width/min_height), then Pillow's resize of the same crop."""
    try:
        import simplejpeg
    except ImportError:
        return None
    from PIL import Image

    from mambamixer.data.image_stream import random_resized_box

    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    for path in files:
        blob = path.read_bytes()
        h, w = simplejpeg.decode_jpeg_header(blob)[:2]
        left, top, right, bottom = random_resized_box(w, h, rng)
        need_w, need_h = int(w * img_size / (right - left)), int(h * img_size / (bottom - top))
        pixels = simplejpeg.decode_jpeg(blob, colorspace="RGB", min_width=need_w, min_height=need_h)
        fx, fy = pixels.shape[1] / w, pixels.shape[0] / h
        Image.fromarray(pixels).resize((img_size, img_size), Image.Resampling.BILINEAR,
                                       box=(left * fx, top * fy, right * fx, bottom * fy))
    return len(files) / (time.perf_counter() - t0)


def throughput(args: argparse.Namespace) -> dict:
    from mambamixer.data.augment import ImageTransform
    from mambamixer.tasks.classify import build_vision_model, measure_throughput

    folder = tree(args.root, args.files, tuple(args.sizes), mode="RGB")  # three-component JPEGs, as photos
    out: dict = {"tree": str(folder), "img_size": args.img_size, "batch": args.batch, "cpus": os.cpu_count(),
                 "loader_images_per_second": {}}
    for workers in args.workers:
        data = _stream(folder, args.img_size, workers)
        out["loader_images_per_second"][str(workers)] = _loader_rate(data.train, args.batch, args.batches)
        print(f"loader, {workers} workers: {out['loader_images_per_second'][str(workers)]:.0f} images/s", flush=True)
    files = [data.train.path(i) for i in range(min(args.batch * args.batches, len(data.train)))]
    out["decode_draft"] = _decode_rate(files, args.img_size, draft=True)
    out["decode_full"] = _decode_rate(files, args.img_size, draft=False)
    out["decode_simplejpeg"] = _simplejpeg_rate(files, args.img_size)
    print(f"one process: Pillow with draft {out['decode_draft']:.0f}, without {out['decode_full']:.0f}, simplejpeg "
          f"{out['decode_simplejpeg'] or float('nan'):.0f} images/s", flush=True)
    net = build_vision_model(args.model, 1000, 3, args.img_size)
    images = torch.randint(0, 256, (args.step_batch, 3, args.img_size, args.img_size), dtype=torch.uint8)
    labels = torch.randint(0, 1000, (args.step_batch,))
    transform = ImageTransform([0.5] * 3, [0.25] * 3)
    speed = measure_throughput(net, images, labels, transform, args.step_batch, args.step_batch, torch.device("cpu"),
                               steps=args.steps)
    out[f"{args.model}_train_images_per_second"] = speed["train_images_per_second"]
    out[f"{args.model}_inference_images_per_second"] = speed["inference_images_per_second"]
    print(f"{args.model} at {args.img_size} px, batch {args.step_batch}: train {speed['train_images_per_second']:.2f}, "
          f"inference {speed['inference_images_per_second']:.2f} images/s")
    return out


def _rss_child(folder: str, img_size: int, workers: int, batches: int, batch: int) -> None:
    data = _stream(Path(folder), img_size, workers)
    _loader_rate(data.train, batch, batches)
    self_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    child_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps({"files": len(data.train) + len(data.val) + len(data.test), "peak_rss_mb": self_mb,
                      "largest_worker_peak_rss_mb": child_mb}))


def rss(args: argparse.Namespace) -> dict:
    out = {"img_size": args.img_size, "workers": args.workers[-1], "batches": args.batches, "batch": args.batch}
    for files in args.files_list:
        folder = tree(args.root, files, tuple(args.sizes))
        cmd = [sys.executable, __file__, "_rss", str(folder), str(args.img_size), str(args.workers[-1]),
               str(args.batches), str(args.batch)]
        line = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        out[str(files)] = json.loads(line)
        print(f"{files} files: {out[str(files)]}", flush=True)
    return out


def accuracy(args: argparse.Namespace) -> dict:
    folder = tree(args.root, args.files, tuple(args.sizes))
    common = ["--model", args.model, "--data", str(folder), "--img-size", str(args.img_size), "--epochs",
              str(args.epochs), "--limit-train", str(args.limit_train), "--limit-eval", str(args.limit_eval), "--quiet"]
    runs = {"memory": ["--data-mode", "memory"],
            "stream, the in-memory recipe": ["--data-mode", "stream", "--crop-scale", "1", "--eval-crop", "1"],
            "stream, defaults": ["--data-mode", "stream"]}
    out = {"tree": str(folder), "model": args.model, "epochs": args.epochs, "limit_train": args.limit_train,
           "limit_eval": args.limit_eval}
    for name, extra in runs.items():
        run_dir = args.root / "runs" / f"{folder.name}-{name.replace(' ', '').replace(',', '-')}-e{args.epochs}"
        if not (run_dir / "metrics.json").exists():
            t0 = time.perf_counter()
            cmd = [sys.executable, "-m", "mambamixer", "classify", *common, *extra, "--out", str(run_dir)]
            subprocess.run(cmd, check=True)
            print(f"{name}: {time.perf_counter() - t0:.0f} s", flush=True)
        m = json.loads((run_dir / "metrics.json").read_text())
        out[name] = {k: m[k] for k in ("test_top1", "val_top1", "seconds", "peak_memory_mb", "epochs_run")}
        print(f"{name}: test top-1 {m['test_top1']:.4f}", flush=True)
    return out


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_rss":
        folder, img_size, workers, batches, batch = sys.argv[2:]
        _rss_child(folder, int(img_size), int(workers), int(batches), int(batch))
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("part", choices=("throughput", "rss", "accuracy"))
    p.add_argument("--root", type=Path, default=Path("/tmp/mambamixer-jpeg-trees"), help="where trees are written")
    p.add_argument("--files", type=int, nargs="+", default=None,
                   help="tree size(s): throughput/accuracy 7000 and 70000 default, rss 7000 70000")
    p.add_argument("--sizes", type=int, nargs=2, default=(40, 160), metavar=("LOW", "HIGH"), help="image sides")
    p.add_argument("--img-size", type=int, default=None, help="224 (throughput, rss), 28 (accuracy)")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--batches", type=int, default=10)
    p.add_argument("--model", default=None, help="vim2_tiny (throughput), vim2_femto (accuracy)")
    p.add_argument("--step-batch", type=int, default=8, help="throughput: the training step's batch")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--limit-train", type=int, default=6000)
    p.add_argument("--limit-eval", type=int, default=2000)
    p.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results" / "image_stream.json")
    args = p.parse_args()
    accuracy_run = args.part == "accuracy"
    args.img_size = args.img_size or (28 if accuracy_run else 224)
    args.model = args.model or ("vim2_femto" if accuracy_run else "vim2_tiny")
    args.files_list = args.files or [7000, 70000]
    args.files = args.files_list[-1] if args.files else (70000 if accuracy_run else 7000)
    result = {"throughput": throughput, "rss": rss, "accuracy": accuracy}[args.part](args)
    everything = json.loads(args.results.read_text()) if args.results.exists() else {}
    everything[f"{args.part}/{args.sizes[0]}-{args.sizes[1]}"] = result
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(everything, indent=1) + "\n")


if __name__ == "__main__":
    main()
