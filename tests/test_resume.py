"""--resume and interrupts through the command line: a run stopped after k optimiser steps and resumed
ends with exactly the metrics of an uninterrupted run (forecast and classify, with dropout and
augmentation drawing from the restored RNG); a real SIGTERM; bad training states."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from forecast_helpers import make_series_csv

from mambamixer.cli import main
from mambamixer.training.checkpoint import STATE_NAME, load_train_state
from mambamixer.training.trainer import STOP_AFTER_ENV


def _forecast(csv: Path, out: Path, *extra: str) -> list[str]:
    # tsm2 with dropout 0.2: the resumed run must draw the same dropout masks
    return ["forecast", "--model", "tsm2", "--data", str(csv), "--horizon", "12", "--seq-len", "32", "--epochs", "2",
            "--batch-size", "16", "--patience", "0", "--set", "d_model=16", "--set", "n_blocks=1", "--out", str(out),
            "--quiet", *extra]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_series_csv(tmp_path_factory.mktemp("series") / "toy.csv")


@pytest.fixture(scope="module")
def whole(csv: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("resume") / "whole"
    assert main(_forecast(csv, out)) == 0
    return out


def _stop_then_resume(args: list[str], steps: int, monkeypatch: pytest.MonkeyPatch,
                      capsys: pytest.CaptureFixture) -> str:
    monkeypatch.setenv(STOP_AFTER_ENV, str(steps))
    capsys.readouterr()
    assert main(args) == 130
    err = capsys.readouterr().err
    monkeypatch.delenv(STOP_AFTER_ENV)
    assert main([*args, "--resume"]) == 0
    return err


def test_forecast_stop_and_resume_equals_uninterrupted(csv: Path, whole: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    monkeypatch.setenv(STOP_AFTER_ENV, "30")  # epoch 2, step 7 of 23
    assert main(_forecast(csv, out)) == 130
    err = capsys.readouterr().err
    assert "SIGINT: stopped at epoch 2, step 7 of 23 (optimiser step 30)" in err and "--resume" in err
    assert (out / "checkpoint" / "model.safetensors").is_file() and not (out / "metrics.json").exists()
    assert load_train_state(out / STATE_NAME)["step_in_epoch"] == 7
    monkeypatch.delenv(STOP_AFTER_ENV)
    assert main([*_forecast(csv, out), "--resume"]) == 0
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (whole, out))
    for key in ("test_mse", "test_mae", "val_mse", "val_mae", "best_epoch", "epochs_run"):
        assert b[key] == a[key], key
    assert [h["train_loss"] for h in b["history"]] == [h["train_loss"] for h in a["history"]]
    assert (out / "checkpoint" / "model.safetensors").read_bytes() == (
        whole / "checkpoint" / "model.safetensors").read_bytes()


def test_classify_stop_and_resume_equals_uninterrupted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("sklearn")
    args = ["classify", "--model", "vit_test", "--data", "digits", "--epochs", "2", "--batch-size", "16",
            "--limit-train", "128", "--limit-eval", "64", "--quiet"]  # augmentation and dropout on
    assert main([*args, "--out", str(tmp_path / "whole")]) == 0
    _stop_then_resume([*args, "--out", str(tmp_path / "run")], 5, monkeypatch, capsys)
    a, b = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("whole", "run"))
    for key in ("test_top1", "test_loss", "val_top1", "val_loss"):
        assert b[key] == a[key], key
    assert [h["train_loss"] for h in b["history"]] == [h["train_loss"] for h in a["history"]]


def test_resuming_a_finished_run_only_re_evaluates(csv: Path, whole: Path, tmp_path: Path) -> None:
    out = tmp_path / "copy"
    shutil.copytree(whole, out)
    assert main([*_forecast(csv, out), "--resume"]) == 0
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (whole, out))
    assert b["test_mse"] == a["test_mse"] and b["history"] == a["history"]


def _tamper_weights(path: Path) -> None:
    blob = torch.load(path, weights_only=True)
    name = next(iter(blob["model"]))
    blob["model"][name] = torch.zeros(3, 3)  # a shape of some other model
    torch.save(blob, path)


@pytest.mark.parametrize(
    ("damage", "extra", "message"),
    [
        (lambda p: p.unlink(), (), "nothing to resume"),
        (lambda p: p.write_bytes(p.read_bytes()[:1000]), (), "truncated, corrupt"),
        (lambda p: p.write_bytes(b"not a zip file at all"), (), "truncated, corrupt"),
        (_tamper_weights, (), "does not fit this model"),
        (lambda p: None, ("--lr", "0.01"), "other settings (training.lr 0.0002 then, 0.01 now)"),
        (lambda p: None, ("--set", "d_model=24"), "model_overrides.d_model 16 then, 24 now"),
        (lambda p: None, ("--seed", "1"), "seed 0 then, 1 now"),
    ],
)
def test_bad_training_state_is_a_clear_error_and_keeps_the_run(damage, extra: tuple[str, ...], message: str,
                                                               csv: Path, whole: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "copy"
    shutil.copytree(whole, out)
    damage(out / STATE_NAME)
    before = _snapshot(out)
    capsys.readouterr()
    assert main([*_forecast(csv, out), *extra, "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err, err
    assert _snapshot(out) == before  # the best checkpoint and everything else are kept


def test_resume_without_a_run_writes_nothing(csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main([*_forecast(csv, tmp_path / "none"), "--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err and not (tmp_path / "none").exists()


def test_real_sigterm_saves_and_exits_143(csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "run"
    # DLinear at batch 4 for 30 epochs: seconds of training in all, so the signal lands mid-run
    args = ["forecast", "--model", "dlinear", "--data", str(csv), "--horizon", "12", "--seq-len", "32", "--epochs",
            "30", "--batch-size", "4", "--patience", "0", "--out", str(out), "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}
    env.pop(STOP_AFTER_ENV, None)
    proc = subprocess.Popen([sys.executable, "-m", "mambamixer", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / STATE_NAME).exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)  # the state appears at the end of epoch 1
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    assert "SIGTERM: stopped at epoch" in err and "--resume" in err and "Traceback" not in err
    blob = load_train_state(out / STATE_NAME)
    assert 92 <= blob["step"] < 30 * 92 and not blob["finished"]  # 92 steps an epoch
    # the state resumes: run a few more steps and stop again
    monkeypatch.setenv(STOP_AFTER_ENV, str(blob["step"] + 3))
    assert main([*args, "--resume"]) == 130
    assert load_train_state(out / STATE_NAME)["step"] == blob["step"] + 3
    capsys.readouterr()
