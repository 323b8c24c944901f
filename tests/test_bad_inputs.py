"""Malformed input, through the command line and the Python API: each case gets an error that says
what is wrong (``error: ...`` and exit status 2 on the command line, ``ValueError`` in Python) and
leaves nothing behind: no output folder, no half-written file.

NaN values: the data loaders reject them (and infinities) with the column and count; a model's
forward does not scan its input for NaN on every call (a full pass, and a GPU sync, per forward),
so a NaN input gives a NaN forecast, and ``fit`` stops on the first non-finite loss naming the step.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from cli_helpers import with_flags
from forecast_helpers import make_series_csv
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from mambamixer.cli import main
from mambamixer.data.forecast import load_forecast_data
from mambamixer.models import create_model, list_models
from mambamixer.tasks.classify import run_classify
from mambamixer.tasks.forecast import forecast_errors, run_forecast
from mambamixer.training import TrainConfig, fit, load_checkpoint

FORECASTERS = [n for n in list_models(task="forecast") if not n.endswith("_512")]  # sizes share the checks


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("inputs")
    good = make_series_csv(root / "good.csv")
    frame = pd.read_csv(good)
    paths = {"good": good, "empty": root / "empty.csv", "header": root / "header.csv"}
    paths["empty"].write_text("")
    paths["header"].write_text("date,v0,v1\n")
    for name, column, value in (("nan", "v1", np.nan), ("inf", "v2", np.inf), ("text", "v0", "oops")):
        bad = frame.astype({column: object}) if isinstance(value, str) else frame.copy()
        bad.loc[7, column] = value
        bad.to_csv(root / f"{name}.csv", index=False)
        paths[name] = root / f"{name}.csv"
    return paths


@pytest.fixture(scope="module")
def run_dir(files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished DLinear run to damage (evaluate and resume cases)."""
    out = tmp_path_factory.mktemp("good") / "run"
    assert main(_forecast_args(files["good"], out)) == 0
    return out


def _forecast_args(csv: Path, out: Path, *extra: str) -> list[str]:
    return ["forecast", "--model", "dlinear", "--data", str(csv), "--horizon", "12", "--seq-len", "32", "--epochs",
            "1", "--out", str(out), "--quiet", *extra]


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _fails(args: list[str], message: str, capsys: pytest.CaptureFixture) -> str:
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "error: " in err and message in err and "Traceback" not in err, err
    return err


# --- command line: forecast ----------------------------------------------------------------------

@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"--model": "no_such_model"}, "unknown model 'no_such_model'"),
        ({"--model": "dlinea"}, "Did you mean dlinear"),
        ({"--model": "resnet_test"}, "not a forecaster"),
        ({"--horizon": "-5"}, "must be a positive integer, got '-5'"),
        ({"--horizon": "0"}, "must be a positive integer"),
        ({"--horizon": "two"}, "must be a positive integer"),
        ({"--seq-len": "0"}, "must be a positive integer"),
        ({"--seq-len": "5000"}, "too few rows for seq_len=5000"),
        ({"--data": "ETTx9"}, "unknown dataset name: 'ETTx9'"),
        ({"--data": "missing.csv"}, "no such file"),
        ({"--data": "empty"}, "empty file"),
        ({"--data": "header"}, "too few rows"),
        ({"--data": "nan"}, "1 missing value(s) (NaN) in column(s) 'v1'"),
        ({"--data": "inf"}, "infinite values in column(s) ['v2']"),
        ({"--data": "text"}, "non-numeric variate column(s) 'v0'"),
        ({"--set": "seq_len=10"}, "cannot set ['seq_len']"),
        ({"--set": "no_such_field=3"}, "no_such_field"),
        ({"--set": "kernel_size=4"}, "kernel_size must be a positive odd number"),
        ({"--set": "kernel_size"}, "expected key=value"),
        ({"--lr": "0"}, "must be a positive number"),
        ({"--lr": "nan"}, "must be a positive number"),
        ({"--lr": "-0.001"}, "must be a positive number"),
        ({"--batch-size": "0"}, "must be a positive integer"),
        ({"--epochs": "-1"}, "must be a positive integer"),
        ({"--grad-clip": "0"}, "must be a positive number"),
        ({"--warmup-epochs": "-1"}, "must be >= 0"),
        ({"--weight-decay": "-0.1"}, "must be >= 0"),
        ({"--optimizer": "sgd"}, "invalid choice: 'sgd'"),
        ({"--schedule": "linear"}, "invalid choice: 'linear'"),
        ({"--patience": "-2"}, "must be a non-negative integer"),
        ({"--resume": None}, "nothing to resume"),
    ],
)
def test_forecast_bad_input(change: dict[str, str | None], message: str, files: dict[str, Path], tmp_path: Path,
                            capsys: pytest.CaptureFixture) -> None:
    data = change.get("--data")
    if data in files:
        change = {**change, "--data": str(files[data])}
    elif data == "missing.csv":
        change = {**change, "--data": str(tmp_path / "missing.csv")}
    out = tmp_path / "run"
    _fails(with_flags(_forecast_args(files["good"], out), change), message, capsys)
    assert not out.exists()


# --- command line: classify ----------------------------------------------------------------------

@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"--model": "tsm2"}, "not an image classifier"),
        ({"--data": "imagenet22k"}, "unknown dataset 'imagenet22k'"),
        ({"--label-smoothing": "1.5"}, "label_smoothing must be in [0, 1)"),
        ({"--limit-train": "0"}, "must be a positive integer"),
        ({"--val-fraction": "1"}, "must be a number in [0, 1), got '1'"),
        ({"--val-fraction": "-0.1"}, "must be a number in [0, 1)"),
        ({"--img-size": "0"}, "must be a positive integer"),
        ({"--img-size": "6"}, "not divisible by the total stride"),
        ({"--batch-size": "-8"}, "must be a positive integer"),
        ({"--set": "in_chans=3"}, "cannot set ['in_chans']"),
        ({"--resume": None}, "nothing to resume"),
        ({"--tta": "rotate"}, "unknown test-time augmentation 'rotate'; known: flip or none"),
        ({"--tta": "flip"}, "a mirrored digits image can change its label"),
    ],
)
def test_classify_bad_input(change: dict[str, str | None], message: str, tmp_path: Path,
                            capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("sklearn")
    out = tmp_path / "run"
    args = ["classify", "--model", "resnet_test", "--data", "digits", "--epochs", "1", "--out", str(out), "--quiet"]
    _fails(with_flags(args, change), message, capsys)
    assert not out.exists()


# --- command line: evaluate ----------------------------------------------------------------------

def _truncate_weights(run: Path) -> None:
    weights = run / "checkpoint" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])


def _other_shapes(run: Path) -> None:
    config = run / "checkpoint" / "config.json"
    blob = json.loads(config.read_text())
    blob["config"]["horizon"] = 7  # the weights were trained for 12
    config.write_text(json.dumps(blob))


def _other_model(run: Path) -> None:
    path = run / "checkpoint" / "run.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "model_name": "patchtst"}))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda run: shutil.rmtree(run), "no run folder"),
        (lambda run: (run / "checkpoint" / "run.json").unlink(), "run.json is missing"),
        (lambda run: (run / "checkpoint" / "run.json").write_text("{not json"), "cannot read"),
        (lambda run: (run / "checkpoint" / "config.json").write_text("[]"), "does not hold a JSON object"),
        (_truncate_weights, "truncated or corrupt"),
        (_other_shapes, "do not fit model 'dlinear'"),
        (_other_model, "does not fit model 'patchtst'"),
    ],
)
def test_evaluate_bad_checkpoint(damage, message: str, run_dir: Path, tmp_path: Path,
                                 capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    damage(run)
    before = _tree(run) if run.exists() else None
    _fails(["evaluate", str(run)], message, capsys)
    assert (_tree(run) if run.exists() else None) == before


# --- the output folder ---------------------------------------------------------------------------

def test_output_under_a_file(files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("keep")
    _fails(_forecast_args(files["good"], blocker / "run"), "is not a folder", capsys)
    _fails(_forecast_args(files["good"], blocker), "exists and is not a folder", capsys)
    assert blocker.read_text() == "keep" and [p.name for p in tmp_path.iterdir()] == ["a_file"]


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_folder(files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        _fails(_forecast_args(files["good"], locked / "run"), "is not writable", capsys)
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o755)


@pytest.mark.skipif(not sys.platform.startswith("linux") or not Path("/proc/self").is_dir(), reason="needs /proc")
def test_output_folder_that_cannot_be_created(files: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    # procfs refuses new folders even to root, after the permission checks pass
    _fails(_forecast_args(files["good"], Path("/proc/mambamixer-test-run")), "cannot write to output folder",
           capsys)


# --- Python API ----------------------------------------------------------------------------------

def test_unknown_model_names_close_matches() -> None:
    with pytest.raises(ValueError, match="unknown model 'tsm3'. Did you mean tsm2"):
        create_model("tsm3")


@pytest.mark.parametrize("name", FORECASTERS)
@pytest.mark.parametrize(("field", "value"), [("horizon", -3), ("seq_len", 0), ("n_vars", 0)])
def test_forecaster_config_must_be_positive(name: str, field: str, value: int) -> None:
    shape = {"seq_len": 32, "horizon": 12, "n_vars": 3, field: value}
    with pytest.raises(ValueError, match=field):
        create_model(name, **shape)


BAD_SERIES = {
    "short lookback": (torch.randn(2, 31, 3), r"x must have shape \(batch, seq_len, n_vars\) = \(batch, 32, 3\)"),
    "wrong variates": (torch.randn(2, 32, 4), r"x must have shape"),
    "no batch axis": (torch.randn(32, 3), r"x must have shape"),
    "integer dtype": (torch.zeros(2, 32, 3, dtype=torch.int64), "floating-point"),
    "float64 on float32 weights": (torch.randn(2, 32, 3, dtype=torch.float64), "float32 weights"),
}


@pytest.mark.parametrize("name", FORECASTERS)
@pytest.mark.parametrize("case", list(BAD_SERIES))
def test_forecaster_forward_rejects_bad_series(name: str, case: str) -> None:
    model = create_model(name, seq_len=32, horizon=12, n_vars=3)
    x, message = BAD_SERIES[case]
    with pytest.raises(ValueError, match=message):
        model(x)


@pytest.mark.parametrize("name", ["resnet_test", "vit_test"])
@pytest.mark.parametrize(
    ("images", "message"),
    [(torch.zeros(2, 1, 8, 8, dtype=torch.uint8), "float"), (torch.randn(2, 3, 8, 8), "in_chans=1"),
     (torch.randn(1, 8, 8), r"\(batch, 1")],
)
def test_vision_forward_rejects_bad_images(name: str, images: torch.Tensor, message: str) -> None:
    model = create_model(name, num_classes=3, in_chans=1, img_size=8, **({"patch_size": 2} if "vit" in name else {}))
    with pytest.raises(ValueError, match=message):
        model(images)


def test_nan_input_is_not_checked_in_forward_but_stops_fit() -> None:
    model = create_model("dlinear", seq_len=32, horizon=12, n_vars=3)
    x = torch.randn(4, 32, 3)
    x[1, 5, 2] = float("nan")
    assert model(x).isnan().any()  # documented: no per-call NaN scan
    loader = DataLoader(TensorDataset(x, torch.randn(4, 12, 3)), batch_size=2)

    def loss_fn(m: nn.Module, batch) -> torch.Tensor:
        return nn.functional.mse_loss(m(batch[0]), batch[1])

    with pytest.raises(ValueError, match=r"training loss is nan at epoch 1, step 1 \(optimiser step 1\)"):
        fit(model, loader, loss_fn, TrainConfig(epochs=1, quiet=True))


def test_nan_values_in_data_are_rejected(files: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match=r"missing value\(s\) \(NaN\) in column\(s\) 'v1'"):
        load_forecast_data(str(files["nan"]), 32, 12)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"horizon": -1}, "horizon must be a positive integer"),
        ({"seq_len": 2.5}, "seq_len must be a positive integer"),
        ({"batch_size": 0}, "batch_size must be a positive integer"),
        ({"model_overrides": {"horizon": 3}}, "cannot set ['horizon']"),
        ({"model": "vit_test"}, "not a forecaster"),
        ({"lr": float("inf")}, "lr must be a positive number"),
        ({"resume": True}, "nothing to resume"),
    ],
)
def test_run_forecast_bad_arguments(kwargs: dict, message: str, files: dict[str, Path], tmp_path: Path) -> None:
    args = {"model": "dlinear", "data": str(files["good"]), "horizon": 12, "seq_len": 32, "epochs": 1,
            "out": tmp_path / "run", "quiet": True, **kwargs}
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        run_forecast(**args)
    assert not (tmp_path / "run").exists()


def test_run_classify_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown model"):
        run_classify("no_such_model", out=tmp_path / "run")
    with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 1\)"):
        run_classify("resnet_test", label_smoothing=2.0, out=tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"epochs": 0}, "epochs"), ({"lr": 0.0}, "lr"), ({"lr": float("nan")}, "lr"), ({"optimizer": "sgd"}, "optimizer"),
     ({"schedule": "step"}, "schedule"), ({"weight_decay": -1.0}, "weight_decay"), ({"grad_clip": 0.0}, "grad_clip"),
     ({"patience": 0}, "patience")],
)
def test_train_config_rejects(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TrainConfig(**kwargs)


def test_empty_data_in_the_training_core() -> None:
    model = create_model("dlinear", seq_len=32, horizon=12, n_vars=3)
    empty = TensorDataset(torch.zeros(0, 32, 3), torch.zeros(0, 12, 3))
    with pytest.raises(ValueError, match="yields no batches"):
        fit(model, DataLoader(empty, batch_size=4), lambda m, b: m(b[0]).sum(), TrainConfig(quiet=True))
    windows = TensorDataset(*(torch.zeros(0, n, 3) for n in (32, 12, 32, 12)))
    with pytest.raises(ValueError, match="no windows"):
        forecast_errors(model, windows)


def test_load_checkpoint_of_nothing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no checkpoint folder"):
        load_checkpoint(tmp_path / "nowhere")
