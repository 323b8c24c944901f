"""The grid-search benchmark: axes to commands, and a two-run sweep on a small CSV that resumes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from bench_helpers import load_benchmark
from forecast_helpers import make_series_csv

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "forecast_sweep.py"


@pytest.fixture(scope="module")
def sweep():
    return load_benchmark("forecast_sweep")


def test_axes_become_every_combination_and_the_right_flags(sweep):
    axes = [sweep.parse_axis("lr=1e-4, 2e-4"), sweep.parse_axis("d_model=16,32"), sweep.parse_axis("seed=3")]
    configs = sweep.combinations(axes)
    assert len(configs) == 4 and {"lr": "2e-4", "d_model": "32", "seed": "3"} in configs
    cmd = sweep.command("tsm2", "ETTh1", 96, 24, {"lr": "1e-4", "d_model": "16", "batch_size": "8"}, Path("o"), None)
    assert cmd[cmd.index("--lr") + 1] == "1e-4" and cmd[cmd.index("--batch-size") + 1] == "8"
    assert cmd[cmd.index("--set") + 1] == "d_model=16"  # a model field, not a training flag
    with pytest.raises(SystemExit, match="KEY=V1,V2"):
        sweep.parse_axis("lr")
    with pytest.raises(SystemExit, match="once"):
        sweep.combinations([("lr", ["1"]), ("lr", ["2"])])


def test_a_small_sweep_runs_ranks_by_validation_and_skips_finished_runs(tmp_path):
    csv = make_series_csv(tmp_path / "series.csv", rows=400, n_vars=2)
    results = tmp_path / "results.jsonl"
    cmd = [sys.executable, str(BENCH), "--model", "dlinear", "--data", str(csv), "--seq-len", "24", "--horizons", "8",
           "--grid", "epochs=1", "--grid", "lr=1e-3,1e-2", "--jobs", "2", "--runs", str(tmp_path / "runs"),
           "--results", str(results)]  # fmt: skip
    first = subprocess.run(cmd, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr[-2000:]
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    assert sorted(r["config"]["lr"] for r in rows) == ["1e-2", "1e-3"]
    assert all(r["test_mse"] > 0 and "error" not in r for r in rows)
    table = [line for line in first.stdout.splitlines() if line.startswith("| 8 |")]
    val = [float(line.split("|")[3]) for line in table]
    assert len(val) == 2 and val == sorted(val)  # ranked by validation MSE
    again = subprocess.run(cmd, capture_output=True, text=True)
    assert "2 runs in the grid, 0 to do" in again.stdout
    assert len(results.read_text().splitlines()) == 2
