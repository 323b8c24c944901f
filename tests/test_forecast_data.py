"""The forecasting data layer: protocol splits, scaler, covariates, downloads and bad input."""

from __future__ import annotations

import gzip
import hashlib
import urllib.error
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mambamixer.data import download
from mambamixer.data.download import fetch, resolve_data_dir, sha256_file
from mambamixer.data.forecast import (
    EMBEDDED_DIR,
    get_benchmark,
    list_benchmarks,
    load_forecast_data,
    time_features,
)

ETTH1_SHA256 = "f18de3ad269cef59bb07b5438d79bb3042d3be49bdeecf01c1cd6d29695ee066"


def _need(folder: Path, name: str) -> Path:
    path = folder / name
    if not path.is_file():
        pytest.skip(f"{path} not available")
    return path


def _write_csv(path: Path, n: int, *, start: str = "2020-01-01", freq: str = "h", n_vars: int = 2) -> Path:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"date": pd.date_range(start, periods=n, freq=freq).strftime("%Y-%m-%d %H:%M:%S")})
    for j in range(n_vars - 1):
        frame[f"v{j}"] = rng.normal(size=n).round(4)
    frame["OT"] = np.arange(n, dtype=np.float64)
    frame.to_csv(path, index=False)
    return path


# ---------------------------------------------------------------------------------------------
# Protocol
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def etth1(shared_data: Path):
    _need(shared_data, "ETTh1.csv")
    return load_forecast_data("ETTh1", 96, 96, data_dir=shared_data)


@pytest.fixture(scope="module")
def etth1_raw(shared_data: Path) -> np.ndarray:
    return pd.read_csv(_need(shared_data, "ETTh1.csv")).iloc[:, 1:].to_numpy(np.float64)


def test_etth1_borders_and_window_counts(etth1) -> None:
    assert (len(etth1.train), len(etth1.val), len(etth1.test)) == (8449, 2785, 2785)
    assert (etth1.train.start, etth1.train.stop) == (0, 8640)
    assert (etth1.val.start, etth1.val.stop) == (8640 - 96, 11520)
    assert (etth1.test.start, etth1.test.stop) == (11520 - 96, 14400)
    assert etth1.n_vars == 7 and etth1.columns[-1] == "OT" and etth1.name == "ETTh1"
    assert etth1.split_kind == "ett_hour" and etth1.n_rows == 17420
    with pytest.raises(IndexError):
        etth1.test[len(etth1.test)]


def test_first_val_target_is_row_8640_and_windows_slice_the_rows(etth1, etth1_raw) -> None:
    scaled = (etth1_raw - etth1_raw[:8640].mean(0)) / etth1_raw[:8640].std(0)
    x, y, x_mark, y_mark = etth1.val[0]
    assert etth1.val.first_target_row == 8640
    np.testing.assert_allclose(y[0].numpy(), scaled[8640], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(x.numpy(), scaled[8544:8640], rtol=1e-5, atol=1e-5)
    i = 123  # item i of the test split: x = rows[s+i : s+i+96], y = the next 96 rows
    x, y, _, _ = etth1.test[i]
    s = etth1.test.start
    np.testing.assert_allclose(x.numpy(), scaled[s + i : s + i + 96], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(y.numpy(), scaled[s + i + 96 : s + i + 192], rtol=1e-5, atol=1e-5)
    last = etth1.test[-1][1]
    np.testing.assert_allclose(last[-1].numpy(), scaled[14399], rtol=1e-5, atol=1e-5)
    assert all(t.dtype == torch.float32 for t in etth1.train[0])


def test_scaler_sees_training_rows_only(etth1, etth1_raw, shared_data: Path, tmp_path: Path) -> None:
    np.testing.assert_allclose(etth1.mean, etth1_raw[:8640].mean(0), rtol=1e-6)
    np.testing.assert_allclose(etth1.std, etth1_raw[:8640].std(0), rtol=1e-6)  # population std
    # Changing a test-split value changes the test data, not the scaler.
    lines = (shared_data / "ETTh1.csv").read_text().splitlines(keepends=True)
    row = 12000
    fields = lines[row + 1].rstrip("\n").split(",")
    fields[-1] = "1000000.0"
    lines[row + 1] = ",".join(fields) + "\n"
    edited = tmp_path / "ETTh1.csv"  # a file named like the benchmark gets its protocol
    edited.write_text("".join(lines))
    other = load_forecast_data(edited, 96, 96)
    assert other.split_kind == "ett_hour"
    np.testing.assert_array_equal(other.mean, etth1.mean)
    np.testing.assert_array_equal(other.std, etth1.std)
    assert not np.array_equal(other.test.data, etth1.test.data)


def test_inverse_transform_roundtrip(etth1, etth1_raw) -> None:
    x = etth1.test[0][0]
    back = etth1.inverse_transform(x)
    assert isinstance(back, torch.Tensor)
    np.testing.assert_allclose(back.numpy(), etth1_raw[11424:11520], rtol=1e-5, atol=1e-4)
    roundtrip = etth1.inverse_transform(etth1.transform(etth1_raw[:5]))
    np.testing.assert_allclose(roundtrip, etth1_raw[:5], rtol=1e-5)
    with pytest.raises(ValueError, match="7"):
        etth1.inverse_transform(np.zeros((3, 5)))
    assert "8449" in etth1.describe() and "8640" in etth1.describe()


def test_ratio_split_on_exchange(shared_data: Path) -> None:
    _need(shared_data, "exchange_rate.csv")
    data = load_forecast_data("Exchange_Rate", 96, 96, data_dir=shared_data)
    n = 7588
    num_train, num_test = int(n * 0.7), int(n * 0.2)
    num_val = n - num_train - num_test
    assert data.split_kind == "ratio" and data.n_vars == 8 and data.freq == "d"
    assert (data.val.start, data.val.stop) == (num_train - 96, num_train + num_val)
    assert (data.test.start, data.test.stop) == (n - num_test - 96, n)
    assert len(data.train) == num_train - 96 - 96 + 1
    assert len(data.val) == num_val + 96 - 96 - 96 + 1
    assert len(data.test) == num_test - 96 + 1 == 1422


def test_covariates_shape_and_range(etth1, shared_data: Path) -> None:
    x_mark, y_mark = etth1.train[0][2], etth1.train[0][3]
    assert x_mark.shape == (96, 4) and y_mark.shape == (96, 4) and etth1.n_marks == 4
    assert etth1.mark_names == ["HourOfDay", "DayOfWeek", "DayOfMonth", "DayOfYear"]
    marks = etth1.train.marks
    assert marks.dtype == np.float32 and marks.min() >= -0.5 and marks.max() <= 0.5
    # 2016-07-01 00:00 is a Friday: hour 0, day-of-week 4, day 1, day-of-year 183.
    np.testing.assert_allclose(x_mark[0].numpy(), [-0.5, 4 / 6 - 0.5, -0.5, 182 / 365 - 0.5], rtol=1e-6)
    np.testing.assert_allclose(x_mark[1, 0].item(), 1 / 23 - 0.5, rtol=1e-6)
    # y_mark continues x_mark: the calendar of the target rows (future-known).
    np.testing.assert_allclose(y_mark[0, 0].item(), (96 % 24) / 23 - 0.5, rtol=1e-6)
    dates = pd.date_range("2020-01-01", periods=3, freq="15min")
    feats, names = time_features(dates, "t")
    assert feats.shape == (3, 5) and names[0] == "MinuteOfHour"
    assert time_features(dates, "w")[1] == ["DayOfMonth", "WeekOfYear"]
    assert time_features(dates, "d")[0].shape == (3, 3)
    _need(shared_data, "national_illness.csv")
    ili = load_forecast_data("ili", 36, 24, data_dir=shared_data)
    assert ili.n_marks == 2 and ili.train[0][2].shape == (36, 2) and ili.train[0][1].shape == (24, 7)


def test_weather_keeps_rows_by_position(shared_data: Path) -> None:
    _need(shared_data, "weather.csv")
    data = load_forecast_data("WEATHER", 96, 96, data_dir=shared_data)
    assert data.n_rows == 52696 and data.n_vars == 21 and data.columns[-1] == "OT"
    assert data.dates.duplicated().sum() == 1  # the original's duplicated timestamp is kept
    assert len(data.test) == int(52696 * 0.2) - 96 + 1


def test_name_lookup_is_case_insensitive() -> None:
    assert list_benchmarks()[:4] == ["ETTh1", "ETTh2", "ETTm1", "ETTm2"]
    for alias, name in [("etth1", "ETTh1"), ("ETTH1.csv", "ETTh1"), ("exchange", "Exchange"),
                        ("exchange_rate", "Exchange"), ("ili", "ILI"), ("Illness", "ILI"),
                        ("national_illness", "ILI"), ("weather", "Weather"), ("ECL", "Electricity"),
                        ("traffic", "Traffic"), ("ettm2", "ETTm2")]:
        assert get_benchmark(alias).name == name
    assert get_benchmark("nope") is None
    assert get_benchmark("ETTh2").sha256 is None and get_benchmark("ETTh2").url.startswith("https://")


def test_user_csv_uses_ratio_split(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "mine.csv", 500, freq="D", n_vars=3)
    data = load_forecast_data(path, 24, 12)
    assert data.name == "mine" and data.split_kind == "ratio" and data.freq == "d" and data.n_vars == 3
    assert len(data.test) == int(500 * 0.2) - 12 + 1
    only = load_forecast_data(path, 24, 12, target_cols=["OT"], freq="h")
    assert only.columns == ["OT"] and only.n_marks == 4
    with pytest.raises(ValueError, match="not among the variate columns"):
        load_forecast_data(path, 24, 12, target_cols=["nope"])


# ---------------------------------------------------------------------------------------------
# Embedded ETTh1
# ---------------------------------------------------------------------------------------------

def test_embedded_etth1_is_byte_exact(shared_data: Path, tmp_path: Path) -> None:
    embedded = EMBEDDED_DIR / "ETTh1.csv"
    assert sha256_file(embedded) == ETTH1_SHA256
    assert embedded.read_bytes() == _need(shared_data, "ETTh1.csv").read_bytes()
    license_text = (EMBEDDED_DIR / "ETTh1.LICENSE.md").read_text()
    assert "CC BY-ND 4.0" in license_text and "zhouhaoyi/ETDataset" in license_text
    # An empty data folder falls back to the embedded copy, with no network.
    data = load_forecast_data("etth1", 96, 96, data_dir=tmp_path)
    assert data.path == embedded and len(data.train) == 8449


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------

def test_no_date_column(tmp_path: Path) -> None:
    path = tmp_path / "nodate.csv"
    pd.DataFrame({"a": np.arange(300.0), "b": np.arange(300.0)}).to_csv(path, index=False)
    with pytest.raises(ValueError, match="no date column.*'date'"):
        load_forecast_data(path, 24, 12)


def test_unparsable_dates(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "baddate.csv", 300)
    lines = path.read_text().splitlines()
    lines[5] = "not a date," + lines[5].split(",", 1)[1]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match="unparsable timestamp.*line 6: 'not a date'"):
        load_forecast_data(path, 24, 12)


def test_non_numeric_column(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "text.csv", 300)
    frame = pd.read_csv(path)
    frame["label"] = "x"
    frame.to_csv(path, index=False)
    with pytest.raises(ValueError, match="non-numeric variate column.*'label'"):
        load_forecast_data(path, 24, 12)


def test_missing_values_policy(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "nan.csv", 300)
    frame = pd.read_csv(path)
    frame.loc[[10, 11], "OT"] = np.nan
    frame.loc[20, "v0"] = np.nan
    frame.to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"3 missing value.*'v0': 1.*'OT': 2"):
        load_forecast_data(path, 24, 12)
    filled = load_forecast_data(path, 24, 12, missing="ffill")
    raw = filled.inverse_transform(filled.train.data)
    np.testing.assert_allclose(raw[10:12, -1], [9.0, 9.0], atol=1e-3)
    interp = load_forecast_data(path, 24, 12, missing="interpolate")
    raw = interp.inverse_transform(interp.train.data)
    np.testing.assert_allclose(raw[10:12, -1], [10.0, 11.0], atol=1e-3)
    with pytest.raises(ValueError, match="missing must be one of"):
        load_forecast_data(path, 24, 12, missing="zero")


def test_too_few_rows(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "short.csv", 120)
    with pytest.raises(ValueError, match=r"too few rows.*the train split has 84 rows but needs at least 108"):
        load_forecast_data(path, 96, 12)
    with pytest.raises(ValueError, match=r"val split has 12 \(\+24 look-back = 36\) rows but needs at least"):
        load_forecast_data(path, 24, 24)


@pytest.mark.parametrize(("seq_len", "horizon"), [(0, 12), (24, 0), (-1, 12), (24, 1.5)])
def test_non_positive_lengths(tmp_path: Path, seq_len, horizon) -> None:
    path = _write_csv(tmp_path / "ok.csv", 300)
    with pytest.raises(ValueError, match="must be a positive integer"):
        load_forecast_data(path, seq_len, horizon)


def test_unknown_name_lists_known_names() -> None:
    with pytest.raises(ValueError, match="unknown dataset name.*ETTh1.*Traffic"):
        load_forecast_data("ettx9", 96, 96)
    with pytest.raises(ValueError, match="no such file"):
        load_forecast_data("/nonexistent/folder/data.csv", 96, 96)


# ---------------------------------------------------------------------------------------------
# Downloads
# ---------------------------------------------------------------------------------------------

def test_fetch_verifies_and_is_atomic(tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(b"hello mambamixer\n" * 100)
    good = hashlib.sha256(src.read_bytes()).hexdigest()
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=f"expected {'0' * 64}, got {good}"):
        fetch(src.as_uri(), out / "file.bin", "0" * 64)
    assert not out.exists() or list(out.iterdir()) == []  # nothing left behind
    assert fetch(src.as_uri(), out / "file.bin", ["1" * 64, good.upper()]) == out / "file.bin"
    assert (out / "file.bin").read_bytes() == src.read_bytes() and list(out.iterdir()) == [out / "file.bin"]
    with pytest.raises(ValueError, match="corrupt or a different version"):
        fetch(src.as_uri(), out / "file.bin", "2" * 64)  # an existing file is verified, not replaced
    gz = tmp_path / "src.bin.gz"
    gz.write_bytes(gzip.compress(src.read_bytes()))
    assert fetch(gz.as_uri(), out / "unzipped.bin", good, decompress="gzip").read_bytes() == src.read_bytes()
    assert sorted(p.name for p in out.iterdir()) == ["file.bin", "unzipped.bin"]


def test_offline_download_failure_explains_what_to_do(tmp_path: Path, monkeypatch) -> None:
    def offline(*args, **kwargs):
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(download.urllib.request, "urlopen", offline)
    data_dir = tmp_path / "data"
    with pytest.raises(FileNotFoundError) as info:
        load_forecast_data("ETTh2", 96, 96, data_dir=data_dir)
    message = str(info.value)
    assert str(data_dir) in message and get_benchmark("ETTh2").url in message
    assert "MAMBAMIXER_DATA" in message and "--data-dir" in message
    assert not data_dir.exists() or list(data_dir.iterdir()) == []


def test_resolve_data_dir(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MAMBAMIXER_DATA", str(tmp_path / "env"))
    assert resolve_data_dir(None) == tmp_path / "env"
    assert resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_data_dir(str(tmp_path)) == tmp_path
    monkeypatch.delenv("MAMBAMIXER_DATA")
    assert resolve_data_dir() == Path.home() / ".cache" / "mambamixer" / "data"
