"""benchmarks/external.py: neuralforecast's models see exactly our splits, scaling and windows.

On a 1,200-row slice of ETTh1 (a user file, so the 70/10/20 split), against an oracle built from the raw
CSV with pandas/numpy: the long frame ``NeuralForecast.fit`` gets holds our z-scored training and
validation rows (and round-trips), and ``WindowForecaster`` scores every one of our windows with our
own evaluation. Without neuralforecast; one extra check through it when it is importable.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from bench_helpers import load_benchmark
from torch import nn

from mambamixer.data.forecast import load_forecast_data
from mambamixer.tasks.forecast import forecast_errors

ROWS, SEQ_LEN, HORIZON = 1200, 24, 12


@pytest.fixture(scope="module")
def external():
    return load_benchmark("external")


@pytest.fixture(scope="module")
def etth1_slice(shared_data, tmp_path_factory):
    """(the slice's ForecastData, the oracle's z-scored rows (1200, 7) float64, the raw frame)."""
    raw = pd.read_csv(shared_data / "ETTh1.csv").iloc[:ROWS]
    path = tmp_path_factory.mktemp("external") / "etth1_slice.csv"
    raw.to_csv(path, index=False)
    values = raw.drop(columns="date").to_numpy(np.float64)
    train = values[: int(0.7 * ROWS)]
    z = (values - train.mean(axis=0)) / train.std(axis=0)
    return load_forecast_data(path, SEQ_LEN, HORIZON), z, raw


class LastValue(nn.Module):
    """A stand-in with neuralforecast's forward interface: repeats each series' last input value.

    ``insample_y`` is ``(B, L, 1)`` (univariate) or ``(B, L, N)`` (multivariate); output ``(B, h, 1 or N)``.
    """

    def __init__(self, horizon: int) -> None:
        super().__init__()
        self.horizon = horizon
        self.unused = nn.Parameter(torch.zeros(1))

    def forward(self, windows_batch: dict) -> torch.Tensor:
        y = windows_batch["insample_y"]
        assert windows_batch["insample_mask"].shape == y.shape
        return y[:, -1:, :].expand(-1, self.horizon, -1)


def oracle_last_value_errors(z: np.ndarray, start: int, stop: int) -> tuple[int, float, float]:
    """(windows, MSE, MAE) of the last-value forecast over every window whose targets lie in [start, stop)."""
    errors = []
    for first in range(start, stop - HORIZON + 1):
        errors.append(z[first : first + HORIZON] - z[first - 1])
    e = np.stack(errors)
    return len(errors), float(np.mean(e**2)), float(np.mean(np.abs(e)))


def test_fit_frame_is_our_scaled_training_and_validation_rows(external, etth1_slice):
    fd, z, raw = etth1_slice
    frame, val_size = external.fit_frame(fd)
    n_train, n_val = int(0.7 * ROWS), ROWS - int(0.7 * ROWS) - int(0.2 * ROWS)
    assert val_size == n_val == 120
    assert list(frame.columns) == ["unique_id", "ds", "y"]
    ids = list(frame["unique_id"].unique())
    assert ids == sorted(ids) and [i.split(":", 1)[1] for i in ids] == list(raw.columns[1:])  # our column order
    assert frame.groupby("unique_id")["ds"].apply(list).map(lambda ds: ds == list(range(n_train + n_val))).all()
    rows = external.from_long(frame, fd.columns)
    np.testing.assert_allclose(rows, z[: n_train + n_val], rtol=0, atol=1e-5)
    # the validation months are the last val_size rows of the frame: neuralforecast's training windows
    # end before them, and its early stopping scores them
    np.testing.assert_array_equal(rows[-val_size:], fd.val.data[SEQ_LEN:])
    np.testing.assert_array_equal(rows[:-val_size], fd.train.data)


def test_long_format_round_trip_in_any_row_order(external, etth1_slice):
    fd = etth1_slice[0]
    rows = external.series_rows(fd)
    assert rows.shape == (ROWS, fd.n_vars)
    frame = external.to_long(rows, fd.columns)
    assert len(frame) == ROWS * fd.n_vars
    np.testing.assert_array_equal(external.from_long(frame, fd.columns), rows)
    shuffled = frame.sample(frac=1.0, random_state=0)
    np.testing.assert_array_equal(external.from_long(shuffled, fd.columns), rows)


@pytest.mark.parametrize("multivariate", [False, True])
def test_window_forecaster_scores_every_one_of_our_windows(external, etth1_slice, multivariate):
    fd, z, _ = etth1_slice
    forecaster = external.WindowForecaster(LastValue(HORIZON), multivariate)
    n_train, n_test = int(0.7 * ROWS), int(0.2 * ROWS)
    for split, start, stop in ((fd.val, n_train, ROWS - n_test), (fd.test, ROWS - n_test, ROWS)):
        windows, mse, mae = oracle_last_value_errors(z, start, stop)
        got = forecast_errors(forecaster, split, batch_size=50, device="cpu")  # batches of 50: a ragged last one
        assert got["windows"] == len(split) == windows
        assert got["mse"] == pytest.approx(mse, rel=1e-5) and got["mae"] == pytest.approx(mae, rel=1e-5)
    assert len(fd.test) == n_test - HORIZON + 1 == 229


def test_window_forecaster_keeps_variates_apart(external, etth1_slice):
    """Each variate's forecast is made from that variate's inputs (a mixed-up reshape fails here)."""
    fd = etth1_slice[0]
    x = torch.stack([fd.test[i][0] for i in (0, 100, 228)])
    for multivariate in (False, True):
        pred = external.WindowForecaster(LastValue(HORIZON), multivariate)(x, None, None)
        assert pred.shape == (3, HORIZON, fd.n_vars)
        torch.testing.assert_close(pred, x[:, -1:, :].expand(-1, HORIZON, -1), rtol=0, atol=0)


def test_runs_need_neuralforecast_only_when_they_run(external, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "neuralforecast", None)  # importing it raises ImportError
    with pytest.raises(SystemExit, match="needs neuralforecast"):
        external.require_neuralforecast()


def test_table_and_resume_keys(external, tmp_path):
    row = {"key": external.run_key("neuralforecast", "DLinear", "ETTh1", 96, 96, {}, 0), "library": "neuralforecast",
           "library_version": "3.3.0", "model": "DLinear", "data": "ETTh1", "seq_len": 96, "horizon": 96, "seed": 0,
           "config_name": "defaults", "val_mse": 0.7, "test_mse": 0.3969, "test_mae": 0.4052, "best_epoch": 300,
           "epochs_run": 800, "step_unit": "optimiser steps", "seconds": 56.0, "versions": {"torch": "2.13.0+cpu"},
           "load_average": [2.04, 3.0, 3.0]}
    ours = {**row, "key": external.run_key("mambamixer", "tsm2", "ETTh1", 96, 96, {}, 0), "library": "mambamixer",
            "library_version": "0.1.0", "model": "tsm2", "test_mse": 0.3954, "step_unit": None}
    text = external.table([row, ours, {**row, "key": "x", "error": "boom"}])
    lines = text.splitlines()
    assert lines[2].startswith("| ETTh1 | 96 | mambamixer | tsm2 |") and "epochs" in lines[2]
    assert "| neuralforecast | DLinear |" in lines[3] and "0.4052" in lines[3]
    assert "300/800 steps | 56 (2.0) |" in lines[3]
    assert "failed: `x`: boom" in text
    assert row["key"] == "neuralforecast/DLinear/ETTh1/96/96/defaults/seed=0" != ours["key"]
    assert external.parse_sets(["hidden_size=64", "revin=false"]) == {"hidden_size": "64", "revin": "false"}
    assert external.parse_value("false") is False and external.parse_value("1e-3") == 1e-3
    assert external.parse_value("BatchNorm") == "BatchNorm"
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        external.parse_sets(["hidden_size"])


def test_side_by_side_averages_seeds_and_complete_data_sets_only(external):
    def row(library, model, config, data, horizon, mse, mae):
        return {"key": f"{library}/{model}/{config}/{data}/{horizon}", "model": model, "data": data, "seq_len": 96,
                "horizon": horizon, "seed": 0, "config_name": config, "test_mse": mse, "test_mae": mae,
                **({"library": library} if library else {})}

    rows = [row(None, "tsm2", "loss=mae", "ETTh1", h, 0.4 + i / 10, 0.3 + i / 10)
            for i, h in enumerate(external.HORIZONS)]
    rows += [row(None, "patchtst", "loss=mae", "ETTh1", 96, 0.9, 0.9),  # not asked for: another model
             row(None, "tsm2", "d_model=64", "ETTh1", 96, 0.8, 0.8),  # not asked for: another configuration
             row("neuralforecast", "TSMixer", "defaults", "ETTh1", 96, 0.38, 0.39),
             row("neuralforecast", "TSMixer", "defaults", "Weather", 96, 0.17, 0.21),
             {**row("neuralforecast", "TSMixer", "defaults", "Weather", 96, 0.19, 0.23), "key": "seed 1"}]
    lines = external.side_by_side(rows, ["tsm2:loss=mae"]).splitlines()
    assert lines[0] == "| model | ETTh1-96 | ETTh1-192 | ETTh1-336 | ETTh1-720 | Weather-96 | ETTh1 average |"
    assert lines[2] == ("| mambamixer tsm2 (loss=mae) | 0.4000 / 0.3000 | 0.5000 / 0.4000 | 0.6000 / 0.5000 | "
                        "0.7000 / 0.6000 | - | **0.5500 / 0.4500** |")
    # two seeds of one cell: their mean, and how many
    assert lines[3] == "| neuralforecast TSMixer | 0.3800 / 0.3900 | - | - | - | 0.1800 / 0.2200 (2 seeds) | - |"
    assert len(lines) == 4  # patchtst and d_model=64 left out


@pytest.mark.parametrize("model", ["DLinear", "TSMixer"])
def test_window_forecaster_matches_neuralforecast_predict(external, etth1_slice, model):
    """Through neuralforecast (skipped without it): two training steps, then our direct forward on test
    windows 0 and 228 equals ``NeuralForecast.predict`` on the rows up to each window's end."""
    pytest.importorskip("neuralforecast")
    from neuralforecast import NeuralForecast, models

    fd = etth1_slice[0]
    cls = getattr(models, model)
    kwargs = {**external.DEFAULTS, "max_steps": 2, "val_check_steps": 1, "random_seed": 0, **external.QUIET}
    if cls.MULTIVARIATE:
        kwargs["n_series"] = fd.n_vars
    nf = NeuralForecast(models=[cls(h=HORIZON, input_size=SEQ_LEN, **kwargs)], freq=1)
    frame, val_size = external.fit_frame(fd)
    nf.fit(df=frame, val_size=val_size)
    forecaster = external.WindowForecaster(nf.models[0], bool(cls.MULTIVARIATE)).eval()
    rows = external.series_rows(fd)
    for i in (0, len(fd.test) - 1):
        x, y = fd.test[i][:2]
        end = fd.test.start + i + SEQ_LEN  # file row of the window's first target
        np.testing.assert_array_equal(rows[end - SEQ_LEN : end], x.numpy())
        np.testing.assert_array_equal(rows[end : end + HORIZON], y.numpy())
        predicted = nf.predict(df=external.to_long(rows[:end], fd.columns))
        expected = external.from_long(predicted, fd.columns, value=model)
        with torch.no_grad():
            got = forecaster(x[None], None, None)[0].numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
