"""`mambamixer predict` and `Forecaster`: forecasting past the last row of a user's series.

Runs train DLinear for one or two epochs on CSVs cut from the real benchmark files, so that the
timestamps, columns and values are those of real data at each frequency.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mambamixer import Forecaster
from mambamixer.cli import main
from mambamixer.data.forecast import load_forecast_data, time_features
from mambamixer.data.series_csv import future_dates, infer_step
from mambamixer.tasks.forecast import run_forecast
from mambamixer.training.checkpoint import load_checkpoint

SEQ_LEN, HORIZON = 48, 24


def user_csv(shared_data: Path, file: str, path: Path, rows: int = 700, date_name: str = "date") -> Path:
    """The first ``rows`` rows of a benchmark file, saved as a user's CSV (its own name, so the 70/10/20 split)."""
    frame = pd.read_csv(shared_data / file, nrows=rows).rename(columns={"date": date_name})
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)
    return path


def train(csv: Path, out: Path, **kwargs) -> dict:
    return run_forecast("dlinear", str(csv), horizon=HORIZON, seq_len=SEQ_LEN, epochs=kwargs.pop("epochs", 1),
                        out=out, quiet=True, **kwargs)


@pytest.fixture(scope="module")
def hourly(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> tuple[Path, Path]:
    """(run folder, CSV): DLinear trained on 700 hourly rows of ETTh1 with its column order shuffled."""
    root = tmp_path_factory.mktemp("predict")
    csv = user_csv(shared_data, "ETTh1.csv", root / "plant.csv")
    frame = pd.read_csv(csv)
    frame[["date", "OT", "HUFL", "LULL", "HULL", "MUFL", "MULL", "LUFL"]].to_csv(csv, index=False)
    out = root / "run"
    train(csv, out)
    return out, csv


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_predict_is_the_models_forecast_of_the_last_window(hourly: tuple[Path, Path], tmp_path: Path) -> None:
    run_dir, csv = hourly
    out = tmp_path / "next.csv"
    assert main(["predict", str(run_dir), "--data", str(csv), "--out", str(out), "--plot",
                 str(tmp_path / "next.png")]) == 0
    got = pd.read_csv(out, index_col="date", parse_dates=True)
    # a direct forward pass over the same last window, scaled by the loader's own train statistics
    fd = load_forecast_data(csv, SEQ_LEN, HORIZON)
    net, _ = load_checkpoint(run_dir / "checkpoint")
    raw = pd.read_csv(csv, parse_dates=["date"])
    x = torch.as_tensor(fd.transform(raw[fd.columns].to_numpy(np.float32)[-SEQ_LEN:]))[None]
    dates = pd.DatetimeIndex(raw["date"])
    future = pd.date_range(dates[-1], periods=HORIZON + 1, freq="h")[1:]
    marks = [torch.as_tensor(time_features(d, "h")[0])[None] for d in (dates[-SEQ_LEN:], future)]
    with torch.no_grad():
        want = fd.inverse_transform(net.eval()(x, *marks)[0]).numpy()
    np.testing.assert_allclose(got.to_numpy(), want, rtol=1e-5, atol=1e-5)
    assert list(got.columns) == ["OT", "HUFL", "LULL", "HULL", "MUFL", "MULL", "LUFL"]  # the file's order
    assert list(got.index) == list(future)
    assert (tmp_path / "next.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_predict_defaults_to_the_runs_own_data(hourly: tuple[Path, Path], capsys: pytest.CaptureFixture) -> None:
    run_dir, csv = hourly
    assert main(["predict", str(run_dir), "--plot-columns", "OT,LUFL"]) == 0
    assert "wrote" in capsys.readouterr().out
    got = pd.read_csv(run_dir / "future.csv", index_col=0, parse_dates=True)
    expected = Forecaster.from_run(run_dir).predict(csv)
    np.testing.assert_allclose(got.to_numpy(), expected.to_numpy(), rtol=1e-6)
    assert (run_dir / "future.png").is_file()


@pytest.mark.parametrize(("file", "step"), [("ETTh1.csv", "h"), ("ETTm1.csv", "15min"),
                                            ("exchange_rate.csv", "D"), ("national_illness.csv", "W-TUE")])
def test_timestamps_continue_at_the_series_step(shared_data: Path, tmp_path: Path, file: str, step: str) -> None:
    csv = user_csv(shared_data, file, tmp_path / "series.csv", rows=400, date_name="when")
    dates = pd.DatetimeIndex(pd.read_csv(csv, parse_dates=["when"])["when"])
    assert infer_step(dates).freqstr == step
    train(csv, tmp_path / "run")
    future = Forecaster.from_run(tmp_path / "run").predict(csv)
    assert future.index.name == "when" and len(future) == HORIZON
    assert (future.index[1:] - future.index[:-1]).nunique() == 1
    assert future.index[0] == dates[-1] + (dates[-1] - dates[-2])
    assert list(future.index) == list(future_dates(dates, HORIZON))
    assert list(future.columns) == list(pd.read_csv(csv, nrows=0).columns[1:])
    assert np.isfinite(future.to_numpy()).all()


def test_month_start_series_continues_by_months() -> None:
    dates = pd.date_range("2020-01-01", periods=30, freq="MS")
    assert list(future_dates(dates, 3)) == list(pd.to_datetime(["2022-07-01", "2022-08-01", "2022-09-01"]))


def test_forecaster_api_fits_a_dataframe_and_refits_on_all_rows(shared_data: Path, tmp_path: Path) -> None:
    frame = pd.read_csv(shared_data / "ETTh1.csv", nrows=700, parse_dates=["date"]).set_index("date")
    f = Forecaster("dlinear", horizon=HORIZON, seq_len=SEQ_LEN, train_on="all", epochs=2, out=tmp_path / "run")
    future = f.fit(frame).predict(frame)
    assert f.checkpoint == tmp_path / "run" / "refit"  # the refit is what predicts
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["refit"]["on"] == "all" and metrics["refit"]["epochs"] == metrics["best_epoch"]
    assert metrics["refit"]["windows"] == 700 - SEQ_LEN - HORIZON + 1  # every row, not only the train split
    assert metrics["run"]["train_on"] == "all" and (tmp_path / "run" / "data.csv").is_file()
    assert list(future.index) == list(pd.date_range(frame.index[-1], periods=HORIZON + 1, freq="h")[1:])
    validated = Forecaster.from_run(tmp_path / "run", checkpoint="validated").predict(frame)
    assert not np.allclose(validated.to_numpy(), future.to_numpy())  # two models, two forecasts
    # a later run in the same folder without a refit removes the stale one
    train(tmp_path / "run" / "data.csv", tmp_path / "run")
    assert not (tmp_path / "run" / "refit").exists()
    assert Forecaster.from_run(tmp_path / "run").checkpoint == tmp_path / "run" / "checkpoint"


def test_refit_on_train_and_validation_rows(hourly: tuple[Path, Path], tmp_path: Path) -> None:
    _, csv = hourly
    metrics = train(csv, tmp_path / "run", train_on="train+val", epochs=2)
    fd = load_forecast_data(csv, SEQ_LEN, HORIZON)
    assert metrics["refit"]["rows"] == fd.val.stop  # the train rows and the validation rows, no test row
    assert metrics["refit"]["windows"] == fd.val.stop - SEQ_LEN - HORIZON + 1
    # the validated model's test figures are the ones reported, as in a plain run
    plain = train(csv, tmp_path / "plain", epochs=2)
    assert metrics["test_mse"] == pytest.approx(plain["test_mse"], rel=1e-6)


def _edit(csv: Path, path: Path, change) -> Path:
    change(pd.read_csv(csv)).to_csv(path, index=False)
    return path


BAD_DATA = {
    "too few rows": (lambda f: f.iloc[:SEQ_LEN - 1], "47 rows; the model needs the last 48"),
    "missing column": (lambda f: f.drop(columns=["HULL"]), "missing ['HULL']"),
    "extra column": (lambda f: f.assign(extra=1.0), "extra ['extra']"),
    "renamed column": (lambda f: f.rename(columns={"OT": "oil"}), "missing ['OT']; extra ['oil']"),
    "other order": (lambda f: f[["date", "LUFL", *[c for c in f.columns[1:] if c != "LUFL"]]],
                    "the same names in another order"),
    "non-numeric": (lambda f: f.assign(MUFL=f["MUFL"].astype(object).where(f.index != 5, "high")),
                    "non-numeric variate column(s) 'MUFL' (e.g. 'high')"),
    "NaN": (lambda f: f.assign(MULL=f["MULL"].where(f.index != 690)), "1 missing value(s) (NaN) in column(s) 'MULL'"),
    "irregular dates": (lambda f: f.drop(f.index[-10]), "irregular timestamps"),
    "unparseable date": (lambda f: f.assign(date=f["date"].where(f.index != 3, "yesterday")),
                         "unparsable timestamp(s)"),
    "other step": (lambda f: f.assign(date=pd.date_range("2020-01-01", periods=len(f), freq="30min")),
                   "'30min' apart; the run was trained on a series at a step of 'h'"),
}


@pytest.mark.parametrize("case", sorted(BAD_DATA))
def test_bad_data_gets_one_line_and_changes_nothing(hourly: tuple[Path, Path], tmp_path: Path, case: str,
                                                     capsys: pytest.CaptureFixture) -> None:
    run_dir, csv = hourly
    change, message = BAD_DATA[case]
    before = snapshot(run_dir)
    bad = _edit(csv, tmp_path / "bad.csv", change)
    assert main(["predict", str(run_dir), "--data", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    assert message in err, err
    assert snapshot(run_dir) == before


def test_nan_is_filled_when_the_policy_says_so(hourly: tuple[Path, Path], tmp_path: Path) -> None:
    run_dir, csv = hourly
    bad = _edit(csv, tmp_path / "gap.csv", BAD_DATA["NaN"][0])
    out = tmp_path / "f.csv"
    assert main(["predict", str(run_dir), "--data", str(bad), "--missing", "ffill", "--out", str(out),
                 "--plot", str(tmp_path / "f.png")]) == 0
    assert np.isfinite(pd.read_csv(out, index_col=0).to_numpy()).all()


def _corrupt(run_dir: Path) -> None:
    weights = run_dir / "checkpoint" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])


def _no_checkpoint(run_dir: Path) -> None:
    for p in (run_dir / "checkpoint").iterdir():
        p.unlink()
    (run_dir / "checkpoint").rmdir()


@pytest.mark.parametrize(("damage", "message"), [(_corrupt, "model.safetensors"),
                                                 (_no_checkpoint, "is not a run folder: it holds no checkpoint/")])
def test_bad_run_folder_gets_one_line(hourly: tuple[Path, Path], tmp_path: Path, damage, message: str,
                                      capsys: pytest.CaptureFixture) -> None:
    import shutil

    run_dir = tmp_path / "copy"
    shutil.copytree(hourly[0], run_dir)
    damage(run_dir)
    before = snapshot(run_dir)
    assert main(["predict", str(run_dir), "--data", str(hourly[1])]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and message in err, err
    assert snapshot(run_dir) == before


def test_bad_arguments_get_one_line(hourly: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run_dir, csv = hourly
    cases = [
        (["--plot-columns", "OT,nope"], "plot columns ['nope'] are not variates"),
        (["--out", str(tmp_path / "no" / "such" / "f.csv")], "does not exist"),
        (["--data", str(tmp_path / "absent.csv")], "no such file"),
        (["--checkpoint", "refit"], "has no refit model"),
    ]
    for extra, message in cases:
        before = snapshot(run_dir)
        assert main(["predict", str(run_dir), *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err and message in err, (extra, err)
        assert snapshot(run_dir) == before
    assert main(["predict", str(tmp_path / "nowhere")]) == 2
    assert "no run folder" in capsys.readouterr().err


def test_interrupted_refit_resumes_exactly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from forecast_helpers import make_series_csv
    from safetensors.torch import load_file

    csv = make_series_csv(tmp_path / "s.csv")  # 368 training windows: 11 steps an epoch; all rows: 17
    args = ["forecast", "--model", "dlinear", "--data", str(csv), "--horizon", "12", "--seq-len", "32",
            "--epochs", "3", "--train-on", "all", "--quiet"]
    assert main([*args, "--out", str(tmp_path / "whole")]) == 0
    monkeypatch.setenv("MAMBAMIXER_STOP_AFTER_STEPS", "40")  # the main fit's 33 steps finish; the refit stops
    assert main([*args, "--out", str(tmp_path / "cut")]) == 130
    assert (tmp_path / "cut" / "refit_state.pt").is_file()
    monkeypatch.delenv("MAMBAMIXER_STOP_AFTER_STEPS")
    assert main([*args, "--out", str(tmp_path / "cut"), "--resume"]) == 0
    whole, cut = (load_file(tmp_path / d / "refit" / "model.safetensors") for d in ("whole", "cut"))
    assert whole.keys() == cut.keys() and all(torch.equal(whole[k], cut[k]) for k in whole)


def test_unfinished_refit_is_refused_and_a_fresh_run_clears_an_old_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                       capsys: pytest.CaptureFixture) -> None:
    from forecast_helpers import make_series_csv

    csv = make_series_csv(tmp_path / "s.csv")
    args = ["forecast", "--model", "dlinear", "--data", str(csv), "--horizon", "12", "--seq-len", "32",
            "--epochs", "3", "--train-on", "all", "--quiet", "--out", str(tmp_path / "run")]
    monkeypatch.setenv("MAMBAMIXER_STOP_AFTER_STEPS", "40")  # refit stopped in its third epoch
    assert main(args) == 130
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "the refit in" in err and "unfinished (2 of 3 epochs)" in err, err
    assert main(["predict", str(tmp_path / "run"), "--checkpoint", "validated"]) == 0
    monkeypatch.setenv("MAMBAMIXER_STOP_AFTER_STEPS", "5")  # a fresh run, stopped at once, leaves no old refit
    assert main([*args[:-5], "--quiet", "--out", str(tmp_path / "run")]) == 130
    assert not (tmp_path / "run" / "refit").exists()


def test_outputs_never_overwrite_the_input_or_the_checkpoint(hourly: tuple[Path, Path],
                                                             capsys: pytest.CaptureFixture) -> None:
    run_dir, csv = hourly
    before = snapshot(run_dir)
    for extra in (["--out", str(csv)], ["--plot", str(run_dir / "checkpoint" / "config.json")]):
        assert main(["predict", str(run_dir), "--data", str(csv), *extra]) == 2
        assert "would overwrite" in capsys.readouterr().err
    assert snapshot(run_dir) == before


def test_the_csv_may_be_given_as_the_input_argument(hourly: tuple[Path, Path], tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    """`predict RUN CSV` (the form that labels images for a classify run) is `predict RUN --data CSV`."""
    run_dir, csv = hourly
    for name, data in (("a", ["--data", str(csv)]), ("b", [str(csv)])):
        assert main(["predict", str(run_dir), *data, "--out", str(tmp_path / f"{name}.csv"), "--plot",
                     str(tmp_path / f"{name}.png")]) == 0
    assert (tmp_path / "a.csv").read_text() == (tmp_path / "b.csv").read_text()
    capsys.readouterr()
    for extra, message in ((["--top-k", "3"], "--top-k does not apply to a forecast run"),
                           (["--data", str(csv)], "give the input once")):
        assert main(["predict", str(run_dir), str(csv), *extra]) == 2
        assert message in capsys.readouterr().err
