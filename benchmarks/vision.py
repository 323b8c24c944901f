"""Image-classification benchmark: every model on Fashion-MNIST with one recipe and the same epochs.

    python benchmarks/vision.py                                       # default models, recipe epochs
    python benchmarks/vision.py --models resnet_small vit_small --epochs 5
    python benchmarks/vision.py --epochs 1 --limit-train 512 --limit-eval 1000   # a quick check only
    python benchmarks/vision.py --jobs 2 --threads 1 --bf16   # two runs at a time, one thread each
    python benchmarks/vision.py --procs 2 --threads 1 --bf16  # one run at a time on two DDP processes

A model is a registered name, optionally followed by config overrides:
``vim2_femto:switch_of_scans=true`` is ViM2 with Switch of Scans. Each model runs
``mambamixer classify`` in its own process (so peak memory is that run's own) with the recipe of
``mambamixer.tasks.classify.RECIPE`` and ``--epochs`` for all; its metrics.json is collected into
``--results`` (JSON lines; finished runs are skipped when re-run, so an interrupted benchmark
resumes). ``--jobs N`` runs N models at a time, each with ``--threads`` intra-op threads (torch and
numba), so a 2-core machine trains two models at once at one thread each; ``--procs N`` trains each
model on N processes under ``torchrun`` (DDP, the global batch split over them). The Markdown table
printed at the end has test top-1/top-5, parameters, train (forward+backward) and inference images
per second, peak memory and time, with the published Fashion-MNIST accuracies of the data README
below ours.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# Published Fashion-MNIST test accuracies (shared/data/README.md, from the Fashion-MNIST benchmark page).
PUBLISHED = [("ResNet-18", "94.9%"), ("WRN-28-10", "95.9%"), ("WRN-40-4, 8.9M parameters", "96.7%"),
             ("SVC, the best classical model", "89.7%")]
# The small variants (about 1-2M parameters at 10 classes on 28x28) and the two baselines.
DEFAULT_MODELS = ["vim2_femto", "viqs_femto", "vim2_femto:switch_of_scans=true", "resnet_small", "vit_small",
                  "mambaout_nano", "simba_nano"]


def parse_spec(spec: str) -> tuple[str, list[str]]:
    """``name:key=value,key=value`` -> (name, ["key=value", ...])."""
    name, _, rest = spec.partition(":")
    return name, [kv for kv in rest.split(",") if kv]


# Recipe changes passed on to every run: (classify flag, argument, tag in the run key).
RECIPE_FLAGS = (("--lr", "lr", "lr"), ("--warmup-epochs", "warmup_epochs", "warmup"),
                ("--batch-size", "batch_size", "batch"), ("--augment", "augment", "aug"),
                ("--val-fraction", "val_fraction", "val"), ("--ema-decay", "ema_decay", "ema"), ("--tta", "tta", "tta"))


def run_key(spec: str, args: argparse.Namespace, epochs: int) -> str:
    recipe = "".join(f"/{tag}{getattr(args, arg)}" for _, arg, tag in RECIPE_FLAGS if getattr(args, arg) is not None)
    return (f"{spec}/{args.data}/e{epochs}/s{args.seed}/train{args.limit_train or 'all'}/"
            f"eval{args.limit_eval or 'all'}/{'bf16' if args.bf16 else 'fp32'}"
            f"{'/noaug' if args.no_augment else ''}{recipe}{f'/p{args.procs}' if args.procs > 1 else ''}")


def load_results(path: Path) -> dict[str, dict]:
    if not path.exists():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {row["key"]: row for row in rows}


def run_one(spec: str, key: str, epochs: int, args: argparse.Namespace) -> dict:
    name, overrides = parse_spec(spec)
    out = Path(args.runs) / key.replace("/", "-").replace(":", "-").replace(",", "-")
    launcher = [sys.executable, "-m"]
    if args.procs > 1:
        launcher += ["torch.distributed.run", "--standalone", f"--nproc-per-node={args.procs}", "-m"]
    cmd = [*launcher, "mambamixer", "classify", "--model", name, "--data", args.data, "--epochs", str(epochs),
           "--seed", str(args.seed), "--out", str(out), "--quiet"]
    for kv in overrides:
        cmd += ["--set", kv]
    valued = [("--data-dir", "data_dir"), ("--limit-train", "limit_train"), ("--limit-eval", "limit_eval"),
              *((flag, arg) for flag, arg, _ in RECIPE_FLAGS)]
    for flag, arg in valued:
        if getattr(args, arg) is not None:
            cmd += [flag, str(getattr(args, arg))]
    cmd += [flag for flag, on in (("--bf16", args.bf16), ("--no-augment", args.no_augment)) if on]
    env = dict(os.environ)
    if args.threads:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
            env[var] = str(args.threads)
    subprocess.run(cmd, check=True, env=env)
    m = json.loads((out / "metrics.json").read_text())
    keep = ("test_top1", "test_top5", "test_loss", "val_top1", "n_params", "train_images_per_second",
            "inference_images_per_second", "epoch_images_per_second", "peak_memory_mb", "seconds", "train_seconds",
            "seconds_per_epoch", "epochs_run", "best_epoch", "train_images", "test_images")
    return {"key": key, "model": spec, "data": args.data, "epochs": epochs, "seed": args.seed,
            "limit_train": args.limit_train, "limit_eval": args.limit_eval, "bf16": args.bf16,
            "device": m["run"]["device"], "test_tta_top1": m.get("test_tta_top1"), **{k: m[k] for k in keep}}


def table(rows: list[dict], data: str) -> str:
    tta = any(r.get("test_tta_top1") is not None for r in rows)  # a column for flip TTA when any run has it
    lines = [f"| model | params | test top-1 |{' flip TTA top-1 |' if tta else ''} top-5 | train img/s "
             "| inference img/s | peak MB | s/epoch | training min | epochs | train / test images |",
             "|" + " --- |" * (11 + tta)]
    for r in rows:
        tta_cell = "" if not tta else f" {r['test_tta_top1']:.2%} |" if r.get("test_tta_top1") is not None else " - |"
        lines.append(f"| {r['model']} | {r['n_params']:,} | {r['test_top1']:.2%} |{tta_cell} {r['test_top5']:.2%} | "
                     f"{r['train_images_per_second']:.0f} | {r['inference_images_per_second']:.0f} | "
                     f"{r['peak_memory_mb']:.0f} | {r['seconds_per_epoch']:.0f} | {r['train_seconds'] / 60:.1f} | "
                     f"{r['epochs']} | "
                     f"{r['train_images']} / {r['test_images']} |")
    if data == "fashion-mnist":
        for model, acc in PUBLISHED:
            lines.append(f"| {model} (published) | - | {acc} |{' - |' if tta else ''} - | - | - | - | - | - | - "
                         "| 60000 / 10000 |")
    return "\n".join(lines)


def main() -> None:
    from mambamixer.models.registry import list_models
    from mambamixer.tasks.classify import RECIPE

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=None, help=f"default: {' '.join(DEFAULT_MODELS)}")
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--epochs", type=int, default=RECIPE["epochs"], help="the same for every model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit-train", type=int, default=None, help="seeded subset of N training images")
    parser.add_argument("--limit-eval", type=int, default=None, help="seeded subsets of N val and test images")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--no-augment", action="store_true", help="no crops, flips or erasing (short schedules)")
    parser.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the recipe's)")
    parser.add_argument("--warmup-epochs", type=float, default=None, help="default: the recipe's")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the recipe's")
    parser.add_argument("--augment", default=None, help="classify's --augment spec, e.g. flip (default: the recipe's)")
    parser.add_argument("--val-fraction", type=float, default=None,
                        help="held-out part of the training images (default 0.1; 0: train on all of them)")
    parser.add_argument("--ema-decay", type=float, default=None, help="EMA of the weights (default: none)")
    parser.add_argument("--tta", default=None, help="also report test top-1 with this test-time augmentation (flip)")
    parser.add_argument("--jobs", type=int, default=1, help="models trained at the same time")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads per process (default: as set)")
    parser.add_argument("--procs", type=int, default=1, help="DDP processes per run (torchrun; default 1: none)")
    parser.add_argument("--runs", default="runs/benchmark-vision", help="folder for the run folders")
    parser.add_argument("--results", default="runs/benchmark-vision/results.jsonl")
    parser.add_argument("--markdown", default=None, help="also write the table to this file")
    args = parser.parse_args()

    known = set(list_models(task="vision"))
    specs = args.models or DEFAULT_MODELS
    missing = [s for s in specs if parse_spec(s)[0] not in known]
    if missing and args.models:
        parser.error(f"not registered vision models: {', '.join(missing)}")
    if missing:
        print(f"skipped (not registered yet): {', '.join(missing)}", flush=True)
    specs = [s for s in specs if s not in missing]

    results_path = Path(args.results)
    results_path.parent.mkdir(parents=True, exist_ok=True)
    done = load_results(results_path)
    keys = [run_key(spec, args, args.epochs) for spec in specs]

    def run_and_record(spec: str, key: str) -> None:
        print(f"running {key}", flush=True)
        row = run_one(spec, key, args.epochs, args)
        done[key] = row
        with results_path.open("a") as fh:  # one write per line: concurrent runs append whole lines
            fh.write(json.dumps(row) + "\n")
        print(f"  {spec}: test top-1 {row['test_top1']:.4f}  {row['train_images_per_second']:.0f} train img/s  "
              f"{row['seconds']:.0f} s", flush=True)

    todo = [(spec, key) for spec, key in zip(specs, keys, strict=True) if key not in done]
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for future in [pool.submit(run_and_record, spec, key) for spec, key in todo]:
            future.result()
    text = table([done[k] for k in keys], args.data)
    if args.limit_train or args.limit_eval:
        text += (f"\n\nQuick check, not a result: training on {args.limit_train or 'all'} images, validation and "
                 f"test on {args.limit_eval or 'all'}.")
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")


if __name__ == "__main__":
    main()
