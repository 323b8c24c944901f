"""benchmarks/reproduce_tsm2.py: the table from a results file, the configuration of record chosen on
validation, resume/skip, and one real (tiny) run whose row carries every required field."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from bench_helpers import load_benchmark


@pytest.fixture(scope="module")
def repro():
    return load_benchmark("reproduce_tsm2")


def fake_row(repro, model, data, horizon, val, test, overrides=None, seed=0):
    overrides = overrides or {}
    return {"key": repro.run_key(model, data, horizon, overrides, seed), "command": "x", "model": model, "data": data,
            "seq_len": 512, "horizon": horizon, "seed": seed, "config_name": repro.config_name(overrides),
            "config": {"overrides": overrides}, "val_mse": val, "val_mae": val, "test_mse": test, "test_mae": test,
            "epochs_run": 3, "best_epoch": 1, "seconds": 10.0, "versions": {}, "date": "2026-12-07"}  # fmt: skip


def write_rows(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_sets_become_per_model_grids(repro):
    configs = repro.parse_sets(["tsm2_512:lr=5e-5,1e-4", "tsm2_512:dropout=0.5"], ["tsm2_512", "dlinear"])
    assert configs["dlinear"] == [{}]
    assert {"lr": "5e-5", "dropout": "0.5"} in configs["tsm2_512"] and len(configs["tsm2_512"]) == 2
    assert repro.config_name({"lr": "5e-5", "dropout": "0.5"}) == "dropout=0.5,lr=5e-5"
    with pytest.raises(SystemExit):
        repro.parse_sets(["patchtst:lr=1e-4"], ["tsm2_512"])  # a model not being run
    with pytest.raises(SystemExit):
        repro.parse_sets(["tsm2_512:seed=1"], ["tsm2_512"])


def test_table_takes_the_configuration_with_the_best_validation(repro, tmp_path):
    rows = [
        fake_row(repro, "tsm2_512", "ETTh1", 96, val=0.70, test=0.390),  # chosen: lowest validation MSE
        fake_row(repro, "tsm2_512", "ETTh1", 96, val=0.75, test=0.300, overrides={"lr": "5e-5"}),  # best test
        *(fake_row(repro, "tsm2_512", "ETTh1", h, val=1.0, test=t) for h, t in ((192, 0.41), (336, 0.43), (720, 0.45))),
        fake_row(repro, "dlinear", "ETTh1", 96, val=0.8, test=0.371),
        fake_row(repro, "tsm2_512", "Exchange", 96, val=0.2, test=0.10, seed=0),
        fake_row(repro, "tsm2_512", "Exchange", 96, val=0.2, test=0.20, seed=1),
        {**fake_row(repro, "patchtst", "ETTh1", 192, val=0, test=0), "error": "boom"},  # a failed run
    ]
    path = tmp_path / "r.jsonl"
    write_rows(path, rows)
    text = repro.table(repro.load_rows(path))
    lines = text.splitlines()
    row96 = next(line for line in lines if line.startswith("| ETTh1 | 96 |"))
    assert "0.3900 (1 seed, 2 configs)" in row96 and "0.375" in row96 and "0.417" in row96 and "0.3710" in row96
    assert "0.3000" not in row96
    average = next(line for line in lines if line.startswith("| ETTh1 | **average** |"))
    ours = (0.39 + 0.41 + 0.43 + 0.45) / 4
    assert f"{ours:.4f} ({ours / ((0.375 + 0.398 + 0.419 + 0.422) / 4):.3f}x paper)" in average
    assert next(line for line in lines if line.startswith("| Exchange | 96 |")).split("|")[3].strip().startswith(
        "0.1500 (2 seeds")  # the mean over seeds
    assert "not every horizon" in next(line for line in lines if line.startswith("| Exchange | **average** |"))
    assert any(line.startswith("| ETTh2 | all | not measured") for line in lines)
    assert "| patchtst | ETTh1 | 192 | defaults | 0 | failed: boom" in text
    assert "**lr=5e-5**" not in text and "| tsm2_512 | ETTh1 | 96 | **defaults** |" in text


def test_finished_runs_are_skipped_and_failed_ones_tried_again(repro, tmp_path, monkeypatch, capsys):
    path = tmp_path / "r.jsonl"
    done = fake_row(repro, "dlinear", "ETTh1", 96, val=0.8, test=0.37)
    failed = {**fake_row(repro, "dlinear", "ETTh1", 192, val=0, test=0), "error": "boom"}
    write_rows(path, [done, failed])
    ran = []

    def fake_execute(model, data, horizon, overrides, seed, args):
        ran.append((model, data, horizon, seed))
        return fake_row(repro, model, data, horizon, val=0.9, test=0.4, overrides=overrides, seed=seed)

    monkeypatch.setattr(repro, "execute", fake_execute)
    monkeypatch.setattr(repro, "versions", dict)
    repro.main(["--models", "dlinear", "--datasets", "ETTh1", "--horizons", "96", "192", "--results", str(path)])
    assert ran == [("dlinear", "ETTh1", 192, 0)]
    assert len(repro.load_rows(path)) == 3  # appended, nothing rewritten
    ran.clear()
    repro.main(["--models", "dlinear", "--datasets", "ETTh1", "--horizons", "96", "192", "--results", str(path)])
    assert ran == []
    assert "0 runs to do" in capsys.readouterr().out


def test_a_tiny_real_run_writes_a_complete_row(repro, tmp_path, monkeypatch):
    n = 400
    t = np.arange(n)
    frame = pd.DataFrame({"date": pd.date_range("2020-01-01", periods=n, freq="h").astype(str),
                          "a": np.sin(t / 5), "OT": np.cos(t / 7)})  # fmt: skip
    csv = tmp_path / "tiny.csv"
    frame.to_csv(csv, index=False)
    monkeypatch.setattr(repro, "SEQ_LEN", 24)  # the harness's lookback, shrunk so that the tiny series has windows
    path = tmp_path / "r.jsonl"
    argv = ["--models", "dlinear", "--datasets", str(csv), "--horizons", "8", "--set", "dlinear:epochs=1",
            "--results", str(path), "--runs", str(tmp_path / "runs")]  # fmt: skip
    repro.main(argv)
    (row,) = repro.load_rows(path)
    assert "error" not in row, row.get("error")
    assert all(field in row for field in repro.REQUIRED), [f for f in repro.REQUIRED if f not in row]
    assert row["config"]["training"]["epochs"] == 1 and row["config"]["overrides"] == {"epochs": "1"}
    assert row["epochs_run"] == 1 and row["best_epoch"] == 1 and row["val_mse"] > 0 and row["test_mse"] > 0
    assert set(row["versions"]) >= {"torch", "numpy", "mambamixer", "python"}
    assert "--seq-len 24" in row["command"] and "--epochs 1" in row["command"]
