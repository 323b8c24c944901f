"""The forecast task end to end through the command line (one short DLinear run)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from cli_helpers import with_flags

from mambamixer.cli import main, parse_value
from mambamixer.tasks.forecast import evaluate_forecast

METRIC_KEYS = {"test_mse", "test_mae", "val_mse", "val_mae", "n_params", "train_seconds", "seconds_per_epoch",
               "epochs_run", "best_epoch", "peak_memory_mb", "config", "run", "history"}


def _forecast_args(out: Path, data_dir: Path, *extra: str) -> list[str]:
    return ["forecast", "--model", "dlinear", "--data", "ETTh1", "--horizon", "24", "--seq-len", "48",
            "--epochs", "1", "--out", str(out), "--data-dir", str(data_dir), "--quiet", *extra]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(_forecast_args(out, shared_data, "--set", "kernel_size=13")) == 0
    return out


def test_forecast_writes_every_file(run_dir: Path) -> None:
    for name in ("metrics.json", "forecast.png", "training_curves.png", "checkpoint/model.safetensors",
                 "checkpoint/config.json", "checkpoint/run.json"):
        assert (run_dir / name).is_file(), name
    assert (run_dir / "forecast.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in run_dir.rglob("*.tmp")]


def test_metrics_are_complete_and_finite(run_dir: Path) -> None:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics) >= METRIC_KEYS
    for key in METRIC_KEYS - {"config", "run", "history"}:
        assert isinstance(metrics[key], (int, float)) and math.isfinite(metrics[key]), key
    assert 0 < metrics["test_mse"] < 2 and metrics["epochs_run"] == 1 == metrics["best_epoch"]
    assert metrics["test_windows"] == 2880 + 48 - 48 - 24 + 1  # every window of the test split
    assert metrics["config"]["kernel_size"] == 13  # --set reached the model
    run = metrics["run"]
    assert run["model_name"] == "dlinear" and run["seq_len"] == 48 and run["horizon"] == 24
    assert run["training"]["lr"] == 5e-3 and run["training"]["schedule"] == "halve"  # DLinear's defaults
    assert [set(h) >= {"train_loss", "val_loss", "lr", "seconds"} for h in metrics["history"]] == [True]


def test_evaluate_reproduces_test_mse(run_dir: Path, shared_data: Path, capsys: pytest.CaptureFixture) -> None:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    again = evaluate_forecast(run_dir, data_dir=shared_data)
    assert again["test_mse"] == pytest.approx(metrics["test_mse"], rel=1e-6)
    assert again["test_mae"] == pytest.approx(metrics["test_mae"], rel=1e-6)
    assert again["test_windows"] == metrics["test_windows"]
    capsys.readouterr()
    assert main(["evaluate", str(run_dir)]) == 0  # the run's own data_dir is remembered
    assert f"test MSE {metrics['test_mse']:.4f}" in capsys.readouterr().out


def test_evaluate_corrupt_checkpoint(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    broken = tmp_path / "broken"
    (broken / "checkpoint").mkdir(parents=True)
    for name in ("config.json", "run.json"):
        (broken / "checkpoint" / name).write_bytes((run_dir / "checkpoint" / name).read_bytes())
    weights = (run_dir / "checkpoint" / "model.safetensors").read_bytes()
    (broken / "checkpoint" / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    assert main(["evaluate", str(broken)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "truncated or corrupt" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"--model": "no_such_model"}, "unknown model"),
        ({"--horizon": "-5"}, "positive integer"),
        ({"--seq-len": "0"}, "positive integer"),
        ({"--set": "no_such_field=3"}, "no_such_field"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(change: dict[str, str], message: str, tmp_path: Path,
                                              shared_data: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    assert main(with_flags(_forecast_args(out, shared_data), change)) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists()


def test_unwritable_out_fails_before_training(tmp_path: Path, shared_data: Path,
                                              capsys: pytest.CaptureFixture) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    assert main(_forecast_args(blocker / "run", shared_data)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "not a folder" in err
    assert blocker.read_text() == "not a folder"
    assert main(_forecast_args(blocker, shared_data)) == 2
    assert "not a folder" in capsys.readouterr().err


def test_models_lists_forecasters(capsys: pytest.CaptureFixture) -> None:
    assert main(["models", "--task", "forecast"]) == 0
    assert "dlinear" in capsys.readouterr().out.split()
    assert main(["models", "--task", "nope"]) == 2


def test_parse_value() -> None:
    assert parse_value("3") == 3 and parse_value("0.5") == 0.5 and parse_value("true") is True
    assert parse_value("False") is False and parse_value("[1, 2]") == [1, 2] and parse_value("layer") == "layer"
    assert parse_value("32,96,256") == [32, 96, 256] and parse_value("row, column") == ["row", "column"]


def test_training_losses_are_the_named_criteria() -> None:
    import torch

    from mambamixer.tasks.forecast import make_forecast_loss

    class Fixed(torch.nn.Module):  # predicts its input's first horizon steps
        def forward(self, x, x_mark=None, y_mark=None):
            return x[:, :3]

    x, y = torch.randn(4, 5, 2), torch.randn(4, 3, 2)
    batch = (x, y, torch.zeros(4, 5, 0), torch.zeros(4, 3, 0))
    diff = x[:, :3] - y
    assert make_forecast_loss("mse")(Fixed(), batch).item() == pytest.approx(diff.square().mean().item())
    assert make_forecast_loss("mae")(Fixed(), batch).item() == pytest.approx(diff.abs().mean().item())
    small = diff.abs() < 1  # Huber with delta 1: quadratic inside, linear outside
    huber = torch.where(small, 0.5 * diff.square(), diff.abs() - 0.5).mean()
    assert make_forecast_loss("huber")(Fixed(), batch).item() == pytest.approx(huber.item())
    with pytest.raises(ValueError, match="loss must be one of"):
        make_forecast_loss("rmse")


def test_loss_flag_is_recorded_and_validation_stays_mse(run_dir: Path, tmp_path: Path, shared_data: Path) -> None:
    out = tmp_path / "mae"
    assert main(_forecast_args(out, shared_data, "--set", "kernel_size=13", "--loss", "mae")) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    default = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["run"]["training"]["loss"] == "mae" and default["run"]["training"]["loss"] == "mse"
    assert metrics["history"][0]["val_loss"] == pytest.approx(metrics["val_mse"], rel=1e-6)  # chosen on MSE
    assert metrics["history"][0]["train_loss"] != pytest.approx(default["history"][0]["train_loss"], rel=1e-3)


def test_epoch_line_names_the_training_loss_and_the_validation_error(tmp_path: Path, shared_data: Path,
                                                                     capsys: pytest.CaptureFixture) -> None:
    args = [a for a in _forecast_args(tmp_path / "loud", shared_data, "--loss", "mae") if a != "--quiet"]
    assert main(args) == 0
    metrics = json.loads((tmp_path / "loud" / "metrics.json").read_text())
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("dlinear epoch 1/1"))
    # the training loss (MAE) and the validation figure (MSE) are told apart, with their values
    assert f"train mae {metrics['history'][0]['train_loss']:.4f}" in line
    assert f"val mse {metrics['val_mse']:.4f}" in line
