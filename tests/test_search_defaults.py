"""benchmarks/search_defaults.py: configurations ranked on validation over several data sets at once,
scored against the reference configuration, and explicit configurations parsed and run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from bench_helpers import load_benchmark


@pytest.fixture(scope="module")
def search():
    return load_benchmark("search_defaults")


def row(model, data, horizon, config, val, test, seed=0, seq_len=96):
    name = ",".join(f"{k}={v}" for k, v in sorted(config.items())) or "defaults"
    return {"key": f"{model}/{data}/{seq_len}/{horizon}/{name}/seed={seed}", "model": model, "data": data,
            "seq_len": seq_len, "horizon": horizon, "seed": seed, "config_name": name, "config": {"overrides": config},
            "val_mse": val, "val_mae": val, "test_mse": test, "test_mae": test, "epochs_run": 2, "best_epoch": 1,
            "seconds": 1.0}  # fmt: skip


def test_the_choice_is_the_mean_validation_ratio_over_every_cell(search):
    rows = [row("tsm2", "A", 96, {}, 1.0, 0.5), row("tsm2", "B", 96, {}, 0.2, 0.5),
            # better on A by 5%, worse on B by 10%: a mean ratio of 1.025, behind the reference
            row("tsm2", "A", 96, {"lr": "1"}, 0.95, 0.1), row("tsm2", "B", 96, {"lr": "1"}, 0.22, 0.1),
            # 2% better on both (two seeds on B averaged): ranked first although its test is worse
            row("tsm2", "A", 96, {"lr": "2"}, 0.98, 0.9), row("tsm2", "B", 96, {"lr": "2"}, 0.195, 0.9),
            row("tsm2", "B", 96, {"lr": "2"}, 0.197, 0.9, seed=1),
            # measured on A only: not ranked
            row("tsm2", "A", 96, {"lr": "3"}, 0.5, 0.1),
            # another model and another lookback do not count
            row("dlinear", "A", 96, {}, 0.1, 0.1), row("tsm2", "A", 96, {"lr": "4"}, 0.1, 0.1, seq_len=512)]
    cells, ranked = search.scores(rows, "tsm2", 96)
    assert cells == [("A", 96), ("B", 96)]
    assert [b["config"] for b in ranked] == ["lr=2", "defaults", "lr=1"]
    assert ranked[0]["score"] == pytest.approx((0.98 + 0.196 / 0.2) / 2) and ranked[0]["seeds"] == 1
    assert ranked[2]["score"] == pytest.approx((0.95 + 1.1) / 2)
    text = search.table(rows, "tsm2", 96)
    assert "| lr=2 | 1 | 0.9800 |" in text and "lr=3" in text  # every run is listed, ranked or not


def test_configs_parse_and_bad_ones_exit(search):
    assert search.parse_config("loss=mae  d_model=64") == {"loss": "mae", "d_model": "64"}
    for bad in ("loss", "loss=mae,mse", "seed=1", ""):
        with pytest.raises(SystemExit):
            search.parse_config(bad)


def test_explicit_configs_and_the_reference_run(search, tmp_path):
    n = 400
    t = np.arange(n)
    frame = pd.DataFrame({"date": pd.date_range("2020-01-01", periods=n, freq="h").astype(str),
                          "a": np.sin(t / 5), "OT": np.cos(t / 7)})  # fmt: skip
    csv = tmp_path / "tiny.csv"
    frame.to_csv(csv, index=False)
    path = tmp_path / "r.jsonl"
    argv = ["--model", "dlinear", "--seq-len", "24", "--datasets", str(csv), "--horizons", "8",
            "--config", "epochs=1 loss=mae", "--config", "epochs=1", "--results", str(path),
            "--runs", str(tmp_path / "runs")]  # fmt: skip
    search.main(argv + ["--no-reference"])
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert sorted(r["config_name"] for r in rows) == ["epochs=1", "epochs=1,loss=mae"]
    assert all("error" not in r and r["seq_len"] == 24 for r in rows), rows
    trained = {r["config_name"]: r["config"]["training"]["loss"] for r in rows}
    assert trained == {"epochs=1": "mse", "epochs=1,loss=mae": "mae"}
    assert "--loss mae" in next(r["command"] for r in rows if r["config_name"] == "epochs=1,loss=mae")
    search.main(argv)  # the two are skipped, the reference runs
    assert [json.loads(line)["config_name"] for line in path.read_text().splitlines()][2:] == ["defaults"]
    assert Path(tmp_path / "runs").is_dir()
