"""DistributedDataParallel on CPU (gloo): two processes under torchrun against one process with the
same global batch, and exact resume across processes. One torchrun launch runs every multi-process
case (tests/ddp_driver.py); the single-process references run here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ddp_driver import CLASSIFY, folder_stream_args, folder_tta_args, forecast_args
from forecast_helpers import make_series_csv
from image_helpers import make_folder

from mambamixer.cli import main

pytest.importorskip("sklearn")  # the classify case trains on digits
if not torch.distributed.is_available():
    pytest.skip("torch.distributed is not available", allow_module_level=True)

DRIVER = Path(__file__).with_name("ddp_driver.py")


@pytest.fixture(scope="module")
def ddp(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, subprocess.CompletedProcess]:
    root = tmp_path_factory.mktemp("ddp")
    csv = str(make_series_csv(root / "toy.csv"))
    folder = str(make_folder(root / "pets", n=16, size=(8, 8)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}
    env.pop("MAMBAMIXER_STOP_AFTER_STEPS", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(DRIVER),
           str(root), csv, folder]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return root, csv, proc


def _metrics(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())


def _close(a: float, b: float, rel: float = 1e-5) -> bool:
    return abs(a - b) <= rel * max(abs(a), abs(b), 1e-12)


def test_exit_codes(ddp) -> None:
    root, _, _ = ddp
    assert json.loads((root / "exit_codes.json").read_text()) == {
        "forecast": 0, "classify": 0, "switch_of_scans": 0, "tta": 0, "stream": 0, "uninterrupted": 0, "stopped": 130,
        "resumed": 0}


def test_forecast_on_two_processes_equals_one(ddp, tmp_path: Path) -> None:
    root, csv, _ = ddp
    assert main(forecast_args("dlinear", csv, tmp_path / "single")) == 0
    one, two = _metrics(tmp_path / "single"), _metrics(root / "forecast")
    assert two["run"]["processes"] == 2 and one["run"]["processes"] == 1
    assert two["test_windows"] == one["test_windows"] and two["val_windows"] == one["val_windows"]
    for key in ("test_mse", "test_mae", "val_mse", "val_mae"):
        assert _close(two[key], one[key]), (key, two[key], one[key])
    for h1, h2 in zip(one["history"], two["history"], strict=True):
        assert h1["samples"] == h2["samples"] == 368  # 23 global batches of 16, on both
        assert _close(h1["train_loss"], h2["train_loss"]) and _close(h1["val_loss"], h2["val_loss"])


def test_classify_on_two_processes_equals_one(ddp, tmp_path: Path) -> None:
    root, _, _ = ddp
    assert main([*CLASSIFY, "--no-augment", "--set", "dropout=0", "--out", str(tmp_path / "single")]) == 0
    one, two = _metrics(tmp_path / "single"), _metrics(root / "classify")
    assert two["test_images"] == one["test_images"] == 64
    assert abs(two["test_top1"] - one["test_top1"]) <= 1 / 64  # at most one borderline image may flip
    for key in ("test_loss", "val_loss"):
        assert _close(two[key], one[key]), (key, two[key], one[key])
    assert [h["samples"] for h in two["history"]] == [h["samples"] for h in one["history"]] == [128, 128]
    assert all(_close(a["train_loss"], b["train_loss"]) for a, b in zip(one["history"], two["history"], strict=True))


def test_flip_tta_on_two_processes_equals_one(ddp, tmp_path: Path) -> None:
    root, _, _ = ddp
    assert main(folder_tta_args(str(root / "pets"), tmp_path / "single")) == 0
    one, two = _metrics(tmp_path / "single"), _metrics(root / "tta")
    assert two["run"]["processes"] == 2 and two["tta"] == one["tta"] == "flip"
    assert two["test_images"] == one["test_images"] > 0
    for key in ("test_loss", "test_tta_loss"):
        assert _close(two[key], one[key]), (key, two[key], one[key])
    assert two["test_tta_loss"] != two["test_loss"]  # the mirrored views changed the scores


def test_streamed_folder_on_two_processes_equals_one(ddp, tmp_path: Path) -> None:
    """Two ranks read disjoint halves of each global batch (tests/test_image_stream.py checks the shards): the
    losses of one process with the same global batch."""
    root, _, _ = ddp
    assert main(folder_stream_args(str(root / "pets"), tmp_path / "single")) == 0
    one, two = _metrics(tmp_path / "single"), _metrics(root / "stream")
    assert two["run"]["processes"] == 2 and two["run"]["data_mode"] == one["run"]["data_mode"] == "stream"
    assert two["test_images"] == one["test_images"] > 0
    assert [h["samples"] for h in two["history"]] == [h["samples"] for h in one["history"]]
    for key in ("test_loss", "val_loss"):
        assert _close(two[key], one[key]), (key, two[key], one[key])
    assert all(_close(a["train_loss"], b["train_loss"]) for a, b in zip(one["history"], two["history"], strict=True))


def test_resume_on_two_processes_is_exact(ddp) -> None:
    root, _, _ = ddp
    whole, resumed = _metrics(root / "uninterrupted"), _metrics(root / "resumed")
    for key in ("test_mse", "test_mae", "val_mse", "val_mae"):
        assert resumed[key] == whole[key], key
    assert [h["train_loss"] for h in resumed["history"]] == [h["train_loss"] for h in whole["history"]]


def test_rank_zero_alone_writes_and_prints(ddp) -> None:
    root, _, proc = ddp
    assert proc.stdout.count("test MSE") == 3 and proc.stdout.count("test top-1") == 4  # 3 forecasts, 4 classify
    assert proc.stderr.count("SIGINT: stopped at epoch 2, step 7 of 23") == 1
    assert not list(root.rglob("*.tmp"))
    assert sorted(p.name for p in (root / "forecast").iterdir()) == [
        "checkpoint", "forecast.png", "metrics.json", "train_state.pt", "training_curves.png"]
