"""Command line: parses arguments and calls the task functions, nothing more.

    mambamixer forecast --model tsm2 --data ETTh1 --horizon 96 [--seq-len 96 --epochs ...]
    mambamixer classify --model resnet_small --data fashion-mnist [--epochs 10 --img-size 28 ...]
    mambamixer evaluate runs/forecast-tsm2-ETTh1-96-96      # either task: read from the checkpoint
    mambamixer predict runs/forecast-tsm2-ETTh1-96-96 --data my.csv   # the next horizon steps
    mambamixer predict runs/classify-vim2_femto-flowers photos/ --top-k 3   # label images: labels.csv
    mambamixer models --task vision
    torchrun --nproc-per-node 2 -m mambamixer forecast ...    # DistributedDataParallel

Every option defaults to None, meaning the model's own default. Bad input (a ValueError or
FileNotFoundError from the library) prints ``error: ...`` and exits with status 2; ``--debug``
shows the traceback instead. SIGINT / SIGTERM during training save the training state and exit
with 130 / 143; the same command with ``--resume`` continues the run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any


def _number(parse: Callable[[str], Any], accept: Callable[[Any], bool], what: str) -> Callable[[str], Any]:
    """An argparse type: ``parse`` the text, then require ``accept(value)``; errors say ``what``."""

    def convert(text: str) -> Any:
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
        if not accept(value):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return value

    return convert


positive_int = _number(int, lambda v: v >= 1, "a positive integer")
non_negative_int = _number(int, lambda v: v >= 0, "a non-negative integer")
positive_float = _number(float, lambda v: 0 < v < float("inf"), "a positive number")
non_negative_float = _number(float, lambda v: 0 <= v < float("inf"), "a non-negative number")
fraction = _number(float, lambda v: 0 <= v < 1, "a number in [0, 1)")
unit_fraction = _number(float, lambda v: 0 < v <= 1, "a number in (0, 1]")


def parse_value(text: str) -> Any:
    """A --set value: JSON (numbers, true/false/null, lists), a comma-separated list of those
    (``dims=32,96,256``), Python's True/False/None, else the string itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    if "," in text:
        return [parse_value(part.strip()) for part in text.split(",")]
    return {"True": True, "False": False, "None": None}.get(text, text)


def key_value(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    return key.strip(), parse_value(value)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show tracebacks of errors")

    parser = argparse.ArgumentParser(
        prog="mambamixer",
        description="MambaMixer, TSM2, the vision families and their baselines: train, evaluate and list models.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("forecast", parents=[common], help="train and test a forecaster",
                       description="Train a forecaster, keep the best epoch on validation MSE, report "
                                   "test MSE/MAE over every test window. Options left out take the "
                                   "model's defaults (see docs/training.md).")
    p.add_argument("--model", required=True, help="registered forecaster (see `mambamixer models`)")
    p.add_argument("--data", required=True, help="dataset name (ETTh1, ETTm1, weather, ...) or a CSV path")
    p.add_argument("--horizon", required=True, type=positive_int, help="forecast length")
    p.add_argument("--seq-len", type=positive_int, default=None,
                   help="lookback length (default: the model's own: 512 for tsm2_512, else 96)")
    p.add_argument("--data-dir", default=None, help="folder holding the dataset CSVs")
    p.add_argument("--optimizer", choices=("adam", "adamw"), default=None)
    p.add_argument("--schedule", choices=("halve", "cosine", "constant"), default=None,
                   help="learning-rate schedule")
    p.add_argument("--loss", choices=("mse", "mae", "huber"), default=None,
                   help="training loss (validation chooses the best epoch on MSE whatever it is)")
    p.add_argument("--train-on", choices=("train", "train+val", "all"), default="train",
                   help="after the validated run, refit a fresh model on the training and validation rows, or on "
                        "every row, for the chosen number of epochs; `predict` then uses it (default: train)")
    _missing_option(p, "error")
    _run_options(p, out_default="runs/forecast-MODEL-DATA-SEQ-HORIZON", set_example="d_model=64",
                 patience_help="early-stopping patience in epochs (0 disables)")
    p.set_defaults(func=_forecast)

    p = sub.add_parser("classify", parents=[common], help="train and test an image classifier",
                       description="Train a vision model, keep the best epoch on validation top-1, report test "
                                   "top-1/top-5 over the whole test set. Options left out take the recipe of "
                                   "docs/vision_data.md.")
    p.add_argument("--model", default=None,
                   help="registered vision model (see `mambamixer models --task vision`); with --init, default the "
                        "checkpoint's")
    p.add_argument("--data", default="digits",
                   help="digits (default, offline), mnist, fashion-mnist, cifar10, cifar100, or an ImageFolder path")
    p.add_argument("--data-dir", default=None, help="folder holding (or receiving) the dataset files")
    p.add_argument("--img-size", type=positive_int, default=None, help="resize images to N x N (default: as stored)")
    p.add_argument("--label-smoothing", type=float, default=None)
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast for forward passes")
    p.add_argument("--augment", default=None, metavar="SPEC",
                   help="training augmentation: default (the dataset's recipe), none, or a comma list of flip "
                        "(random; flip=alternate: each image mirrored every other epoch), crop=PIXELS, erase=PROB "
                        "(e.g. flip,crop=2)")
    p.add_argument("--no-augment", action="store_true", help="no random crops, flips or erasing (--augment none)")
    p.add_argument("--recipe", default=None, choices=("default", "deit"),
                   help="named recipe whose values fill every flag left out (deit: RandAugment, Mixup/CutMix, EMA, "
                        "AdamW lr 5e-4 x batch/512, 300 epochs; docs/vision.md)")
    p.add_argument("--mixup", type=non_negative_float, default=None, metavar="ALPHA",
                   help="Mixup Beta alpha (0 = off; default: the recipe's)")
    p.add_argument("--cutmix", type=non_negative_float, default=None, metavar="ALPHA",
                   help="CutMix Beta alpha (0 = off; default: the recipe's)")
    p.add_argument("--tta", default=None, metavar="MODE",
                   help="also report test metrics with test-time augmentation (flip: mean softmax of each image and "
                        "its mirror); the plain test metrics are kept")
    p.add_argument("--limit-train", type=positive_int, default=None,
                   help="train on a seeded subset of N training images (quick checks)")
    p.add_argument("--limit-eval", type=positive_int, default=None,
                   help="validate and test on seeded subsets of N images (quick checks, not results)")
    p.add_argument("--val-fraction", type=fraction, default=None,
                   help="part of the training images held out for validation and best-epoch selection "
                        "(default 0.1; 0: train on all of them and keep the epoch of lowest training loss)")
    p.add_argument("--init", default=None, metavar="RUN_DIR",
                   help="fine-tune: start from the weights of a classify run, a checkpoint folder or a saved model "
                        "(the head is re-created when the class count differs)")
    p.add_argument("--freeze-backbone", action="store_true", help="with --init: train only the classifier")
    _stream_options(p)
    _run_options(p, out_default="runs/classify-MODEL-DATA", set_example="drop_path_rate=0.1",
                 patience_help="early-stopping patience in epochs (default and 0: run every epoch)")
    p.set_defaults(func=_classify)

    p = sub.add_parser("evaluate", parents=[common], help="recompute a run's test metrics",
                       description="Reload a run's checkpoint and recompute its test metrics (forecast: MSE/MAE; "
                                   "classify: top-1/top-5/loss); the task is read from the checkpoint.")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--data-dir", default=None, help="folder holding the dataset files (default: the run's)")
    p.add_argument("--tta", default=None, metavar="MODE",
                   help="classify runs: also report the test metrics with this test-time augmentation, flip "
                        "(default: the run's own; none: only the plain metrics)")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("predict", parents=[common], help="forecast a series' next steps, or label images",
                       description="A forecasting run: forecast the next `horizon` steps of every variate after the "
                                   "last row of a CSV (default: the data the run was trained on), in the data's "
                                   "units: a CSV with a date column at the series' step, and a plot. An image-"
                                   "classification run: label an image file, or every image below a folder, with "
                                   "its top-k classes and probabilities (a CSV, one row per file).")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("input", nargs="?", default=None, metavar="INPUT",
                   help="classify runs: the image file or folder to label; forecast runs: as --data")
    p.add_argument("--data", default=None, help="CSV of the run's columns to forecast from (default: the run's data)")
    p.add_argument("--out", default=None,
                   help="forecast CSV (default RUN_DIR/future.csv), or labels CSV (default RUN_DIR/labels.csv)")
    p.add_argument("--top-k", type=positive_int, default=None,
                   help="classify runs: classes listed per image (default 5; at most the run's classes)")
    p.add_argument("--skip-bad", action="store_true",
                   help="classify runs: label the readable images when some files are not, and list those")
    p.add_argument("--plot", default=None,
                   help="plot of the recent history and the forecast (default RUN_DIR/future.png)")
    p.add_argument("--plot-columns", default=None, metavar="A,B,...",
                   help="variates to draw (default: the first 4)")
    p.add_argument("--checkpoint", choices=("auto", "validated", "refit"), default=None,
                   help="the run's model to use: auto (its refit when it has one), validated, refit")
    _missing_option(p, None)
    p.set_defaults(func=_predict)

    p = sub.add_parser("models", parents=[common], help="list registered models")
    p.add_argument("--task", default=None, help="only models of this task (forecast, vision)")
    p.set_defaults(func=_models)
    return parser


def _missing_option(p: argparse.ArgumentParser, default: str | None) -> None:
    p.add_argument("--missing", choices=("error", "ffill", "interpolate"), default=default,
                   help="missing values (NaN, empty cells): error, ffill (forward then backward fill) or "
                        "interpolate (linear in time)" + (" (default: the run's)" if default is None else
                                                          f" (default: {default})"))


def _stream_options(p: argparse.ArgumentParser) -> None:
    """classify: how an ImageFolder is read (docs/vision_data.md)."""
    g = p.add_argument_group("reading an ImageFolder (docs/vision_data.md)")
    g.add_argument("--data-mode", choices=("auto", "memory", "stream"), default="auto",
                   help="memory: decode every image up front; stream: decode each batch in DataLoader workers; "
                        "auto (default): stream a folder larger than 2 GiB decoded")
    g.add_argument("--workers", type=non_negative_int, default=None, metavar="N",
                   help="streamed: DataLoader worker processes per process (default min(8, CPU cores per process); "
                        "0 decodes in the training process)")
    g.add_argument("--crop-scale", type=unit_fraction, default=0.08, metavar="LOW",
                   help="streamed: training images get a random-resized crop of LOW to all of their area (default "
                        "0.08), in place of --augment's crop; 1: decoded as evaluation images")
    g.add_argument("--eval-crop", type=unit_fraction, default=0.875, metavar="FRACTION",
                   help="streamed: evaluation resizes the shorter side to img-size / FRACTION and takes the centre "
                        "img-size square (default 0.875: 256 then 224)")


def _run_options(p: argparse.ArgumentParser, out_default: str, set_example: str, patience_help: str) -> None:
    """Options every training command shares (a task's own recipe fills those left out)."""
    p.add_argument("--epochs", type=positive_int, default=None)
    p.add_argument("--batch-size", type=positive_int, default=None)
    p.add_argument("--lr", type=positive_float, default=None, help="peak learning rate")
    p.add_argument("--weight-decay", type=float, default=None)
    p.add_argument("--warmup-epochs", type=float, default=None, help="linear warm-up, in epochs")
    p.add_argument("--grad-clip", type=positive_float, default=None, help="max gradient norm")
    p.add_argument("--ema-decay", type=positive_float, default=None,
                   help="validate and keep an exponential moving average of the weights (e.g. 0.999)")
    p.add_argument("--patience", type=non_negative_int, default=None, help=patience_help)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help=f"run folder (default {out_default})")
    p.add_argument("--set", dest="overrides", type=key_value, action="append", default=None,
                   metavar="KEY=VALUE", help=f"model config override, repeatable (e.g. --set {set_example})")
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted run in --out from its train_state.pt (give the same arguments)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _forecast(args: argparse.Namespace) -> int:
    from mambamixer.tasks.forecast import run_forecast

    run_forecast(
        model=args.model, data=args.data, horizon=args.horizon, seq_len=args.seq_len, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, seed=args.seed, data_dir=args.data_dir, out=args.out,
        patience=args.patience, quiet=args.quiet, model_overrides=dict(args.overrides or []),
        optimizer=args.optimizer, schedule=args.schedule, weight_decay=args.weight_decay,
        warmup_epochs=args.warmup_epochs, grad_clip=args.grad_clip, ema_decay=args.ema_decay, resume=args.resume,
        train_on=args.train_on, missing=args.missing, loss=args.loss,
    )
    return 0


def _predict(args: argparse.Namespace) -> int:
    from mambamixer.tasks.common import run_task
    from mambamixer.tasks.predict import predict_run

    if args.input is not None and args.data is not None:
        raise ValueError(f"give the input once: {args.input} and --data {args.data}")
    task = run_task(args.run_dir)
    mine = ("--top-k", "--skip-bad") if task == "classify" else ("--data", "--plot", "--plot-columns", "--checkpoint",
                                                                  "--missing")
    other = [flag for flag in ("--top-k", "--skip-bad", "--plot", "--plot-columns", "--checkpoint", "--missing")
             if flag not in mine and getattr(args, flag[2:].replace("-", "_")) not in (None, False)]
    if other:
        raise ValueError(f"{other[0]} does not apply to a {task} run ({args.run_dir})")
    if task == "classify":
        return _label_images(args)
    columns = [c.strip() for c in args.plot_columns.split(",")] if args.plot_columns else None
    r = predict_run(args.run_dir, data=args.data or args.input, out=args.out, plot=args.plot, columns=columns,
                    missing=args.missing, checkpoint=args.checkpoint or "auto")
    future = r["forecast"]
    print(f"{len(future)} steps x {future.shape[1]} variates after {r['last_date']} of {r['data']} "
          f"(model {r['checkpoint']}):")
    print(future.head(3).to_string(float_format=lambda v: f"{v:.4g}", max_cols=8))
    print(f"wrote {r['csv']} and {r['plot']}")
    return 0


def _label_images(args: argparse.Namespace) -> int:
    from mambamixer.tasks.label_images import DEFAULT_TOP_K, label_images

    images = args.input or args.data
    if images is None:
        raise ValueError(f"{args.run_dir} is an image-classification run: give the images to label "
                         f"(mambamixer predict {args.run_dir} IMAGE_OR_FOLDER)")
    r = label_images(args.run_dir, images, out=args.out, top_k=args.top_k or DEFAULT_TOP_K, skip_bad=args.skip_bad)
    labels = r["labels"]
    for name, reason in r["skipped"]:
        print(f"skipped {name}: {reason}", file=sys.stderr)
    skipped = f", {len(r['skipped'])} unreadable files skipped" if r["skipped"] else ""
    print(f"{len(labels)} images of {images} labelled with the top {r['top_k']} of {r['num_classes']} classes "
          f"(model {r['checkpoint']}){skipped}:")
    print(labels.head(3).to_string(index=False, float_format=lambda v: f"{v:.3f}", max_cols=9))
    print(f"wrote {r['csv']}")
    return 0


def _classify(args: argparse.Namespace) -> int:
    from mambamixer.tasks.classify import run_classify

    run_classify(
        model=args.model, data=args.data, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        seed=args.seed, data_dir=args.data_dir, out=args.out, img_size=args.img_size, quiet=args.quiet,
        model_overrides=dict(args.overrides or []), weight_decay=args.weight_decay,
        warmup_epochs=args.warmup_epochs, label_smoothing=args.label_smoothing, grad_clip=args.grad_clip,
        ema_decay=args.ema_decay, patience=args.patience, bf16=args.bf16, augment=_augment_choice(args),
        limit_train=args.limit_train, limit_eval=args.limit_eval, resume=args.resume, tta=args.tta,
        init=args.init, freeze_backbone=args.freeze_backbone,
        recipe=args.recipe, mixup=args.mixup, cutmix=args.cutmix,
        **({} if args.val_fraction is None else {"val_fraction": args.val_fraction}),
        data_mode=args.data_mode, workers=args.workers, crop_scale=args.crop_scale, eval_crop=args.eval_crop,
    )
    return 0


def _augment_choice(args: argparse.Namespace) -> bool | str:
    if args.no_augment and args.augment not in (None, "none"):
        raise ValueError(f"--no-augment contradicts --augment {args.augment}")
    if args.no_augment:
        return False
    return args.augment or True


def _evaluate(args: argparse.Namespace) -> int:
    from mambamixer.tasks.common import run_task

    if run_task(args.run_dir) == "classify":
        return _evaluate_classify(args)
    from mambamixer.tasks.forecast import evaluate_forecast

    r = evaluate_forecast(args.run_dir, data_dir=args.data_dir)
    print(f"{r['model']} {r['data']} seq_len {r['seq_len']} horizon {r['horizon']}: "
          f"test MSE {r['test_mse']:.4f}  MAE {r['test_mae']:.4f}  ({r['test_windows']} windows)")
    if r.get("stored_test_mse") is not None:
        print(f"metrics.json: test MSE {r['stored_test_mse']:.4f}  MAE {r['stored_test_mae']:.4f}")
    return 0


def _evaluate_classify(args: argparse.Namespace) -> int:
    from mambamixer.tasks.classify import evaluate_classify

    r = evaluate_classify(args.run_dir, data_dir=args.data_dir, tta=args.tta)
    print(f"{r['model']} {r['data']}: test top-1 {r['test_top1']:.4f}  top-5 {r['test_top5']:.4f}  "
          f"loss {r['test_loss']:.4f}  ({r['test_images']} images)")
    if r.get("stored_test_top1") is not None:
        print(f"metrics.json: test top-1 {r['stored_test_top1']:.4f}  top-5 {r['stored_test_top5']:.4f}  "
              f"loss {r['stored_test_loss']:.4f}")
    if r["tta"]:
        print(f"with {r['tta']} test-time augmentation: top-1 {r['test_tta_top1']:.4f}  "
              f"top-5 {r['test_tta_top5']:.4f}  loss {r['test_tta_loss']:.4f}")
        if r.get("stored_test_tta_top1") is not None:
            print(f"metrics.json: {r['tta']} test-time augmentation top-1 {r['stored_test_tta_top1']:.4f}")
    return 0


def _models(args: argparse.Namespace) -> int:
    from mambamixer.models.registry import TASKS, list_models

    if args.task is not None and args.task not in TASKS:
        raise ValueError(f"--task must be one of {', '.join(TASKS)}, got {args.task!r}")
    for name in list_models(task=args.task):
        print(name)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (0 ok, 2 bad input)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse already printed usage and the message
        return exc.code if isinstance(exc.code, int) else 2
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as err:
        if args.debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:  # TrainingInterrupted: the state is saved, the message says how to resume
        if os.environ.get("RANK", "0") == "0":  # one message under torchrun
            print(str(err) or "interrupted", file=sys.stderr)
        return getattr(err, "exit_code", 130)
