"""Forecast the future of a series: train on it, then predict the steps after its last row.

    f = Forecaster("tsm2", horizon=24, train_on="all").fit(df)   # df: a date column (or index) + variates
    future = f.predict(df)            # DataFrame (horizon, variates) in the data's units, indexed by
                                      # the timestamps after df's last row, at its step
    f = Forecaster.from_run("runs/forecast-tsm2-ETTh1-96-96")   # a run of `mambamixer forecast`

The model sees the last ``seq_len`` rows, standardised with the statistics of the rows it was
trained on, and their calendar covariates with those of the future timestamps (docs/predict.md).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from mambamixer.data.forecast import load_forecast_data, resolve_dataset_file, time_features
from mambamixer.data.series_csv import Series, future_dates, infer_step, read_series, series_from_frame, step_name
from mambamixer.io import atomic_write
from mambamixer.tasks.common import find_checkpoint, load_run_checkpoint, pick_device
from mambamixer.tasks.forecast_refit import REFIT_DIR

CHECKPOINTS = ("auto", "validated", "refit")
SeriesInput = pd.DataFrame | str | os.PathLike | None


class Forecaster:
    """A forecaster of one multivariate series: ``fit`` trains it, ``predict`` continues the series.

    ``model``, ``horizon``, ``seq_len``, ``train_on`` (``"train"``, ``"train+val"``, ``"all"``),
    ``missing`` and every other keyword (``epochs``, ``lr``, ``batch_size``, ``seed``,
    ``model_overrides``, ...) are those of :func:`mambamixer.tasks.forecast.run_forecast`.
    """

    def __init__(self, model: str = "tsm2", *, seq_len: int | None = None, horizon: int = 96,
                 train_on: str = "train", missing: str = "error", out: str | os.PathLike | None = None,
                 quiet: bool = True, **options: Any) -> None:
        self.model_name = model
        self.options = {"horizon": horizon, "seq_len": seq_len, "train_on": train_on, "missing": missing,
                        "quiet": quiet, **options}
        self.out = Path(out) if out is not None else None
        self.metrics: dict[str, Any] | None = None
        self.net: nn.Module | None = None
        self.run: dict[str, Any] = {}
        self.checkpoint: Path | None = None

    def fit(self, data: pd.DataFrame | str | os.PathLike, data_dir: str | os.PathLike | None = None) -> Forecaster:
        """Train on ``data`` (a DataFrame, a CSV path or a benchmark name) and load the model to predict with.

        A DataFrame is first written to ``<out>/data.csv``, so that the run folder holds what it
        was trained on (``out`` defaults to a fresh temporary folder).
        """
        from mambamixer.tasks.forecast import run_forecast

        if self.out is None:
            self.out = Path(tempfile.mkdtemp(prefix=f"forecast-{self.model_name}-"))
        if isinstance(data, pd.DataFrame):
            series_from_frame(data, "the data frame", self.options["missing"])  # its errors, before any write
            if (self.out / "checkpoint").is_dir():
                raise ValueError(f"{self.out} already holds a run (and its data.csv); fit a DataFrame into "
                                 f"another folder")
            self.out.mkdir(parents=True, exist_ok=True)
            frame = data.reset_index() if isinstance(data.index, pd.DatetimeIndex) else data
            data = atomic_write(self.out / "data.csv", lambda tmp: frame.to_csv(tmp, index=False))
        self.metrics = run_forecast(self.model_name, os.fspath(data), data_dir=data_dir, out=self.out, **self.options)
        self._load(self.out, "auto", None)
        return self

    @classmethod
    def from_run(cls, run_dir: str | os.PathLike, checkpoint: str = "auto",
                 device: str | torch.device | None = None) -> Forecaster:
        """The forecaster a finished run saved. ``checkpoint``: ``"auto"`` (the refit when the run
        has one, else the validated model), ``"validated"`` or ``"refit"``."""
        self = cls()
        self._load(Path(run_dir), checkpoint, device)
        self.model_name = self.run["model_name"]
        self.out = Path(run_dir)
        return self

    def _load(self, run_dir: Path, checkpoint: str, device: str | torch.device | None) -> None:
        if checkpoint not in CHECKPOINTS:
            raise ValueError(f"checkpoint must be one of {', '.join(CHECKPOINTS)}, got {checkpoint!r}")
        refit_dir = run_dir / REFIT_DIR
        if checkpoint == "refit" and not refit_dir.is_dir():
            raise ValueError(f"{run_dir} has no refit model ({refit_dir}); train with --train-on train+val or all")
        use_refit = checkpoint == "refit" or (checkpoint == "auto" and refit_dir.is_dir())
        where = refit_dir if use_refit else find_checkpoint(run_dir)
        ckpt, net, run = load_run_checkpoint(where, "forecast", "a forecasting run",
                                             ("data", "seq_len", "horizon", "columns"))
        refit = run.get("refit") or {}
        if use_refit and not refit.get("complete"):
            raise ValueError(f"the refit in {refit_dir} is unfinished ({refit.get('epochs_done')} of "
                             f"{refit.get('epochs')} epochs): continue it with `mambamixer forecast ... --resume`, "
                             f"or predict with --checkpoint validated")
        self.checkpoint, self.run = ckpt, run
        self.net = net.to(pick_device(device)).eval()
        scaler = run.get("scaler")
        if scaler is None:  # runs written before the scaler was recorded: recompute it from their data
            fd = load_forecast_data(run["data"], run["seq_len"], run["horizon"], data_dir=run.get("data_dir"))
            scaler = {"mean": fd.mean.tolist(), "std": fd.std.tolist()}
            self.run = {**run, "freq": fd.freq, "step": None, "missing": "error"}
        self._mean = np.asarray(scaler["mean"], dtype=np.float64)
        self._std = np.asarray(scaler["std"], dtype=np.float64)

    @property
    def columns(self) -> list[str]:
        return list(self.run["columns"])

    @property
    def seq_len(self) -> int:
        return int(self.run["seq_len"])

    @property
    def horizon(self) -> int:
        return int(self.run["horizon"])

    def read(self, data: SeriesInput = None, missing: str | None = None) -> Series:
        """The series to forecast from, checked against the run: ``None`` (the data the run was trained
        on), a DataFrame or a CSV path; the missing-value policy defaults to the run's."""
        missing = missing or self.run.get("missing", "error")
        if isinstance(data, pd.DataFrame):
            series = series_from_frame(data, "the data frame", missing)
        else:
            if data is None:
                path, _ = resolve_dataset_file(self.run["data"], self.run.get("data_dir"))
            else:
                path = Path(data)
                if not path.is_file():
                    raise ValueError(f"no such file: {os.fspath(data)!r}; expected a CSV with the run's columns")
            series = read_series(path, missing)
        self._check(series)
        return series

    def _check(self, series: Series) -> None:
        where, expected, found = series.path, self.columns, series.columns
        if found != expected:
            missing = [c for c in expected if c not in found]
            extra = [c for c in found if c not in expected]
            how = (f"missing {missing}" if missing else "") + ("; " if missing and extra else "") + (
                f"extra {extra}" if extra else "") or "the same names in another order"
            raise ValueError(f"{where}: expected the variate columns the run was trained on, {expected} in this "
                             f"order; found {found} ({how})")
        if len(series.dates) < self.seq_len:
            raise ValueError(f"{where}: {len(series.dates)} rows; the model needs the last {self.seq_len} "
                             f"(its lookback seq_len) to forecast from")

    def predict(self, data: SeriesInput = None, missing: str | None = None) -> pd.DataFrame:
        """The next ``horizon`` values of every variate after the last row of ``data`` (see :meth:`read`),
        in the data's units: a DataFrame indexed by the future timestamps at the series' step."""
        return self.forecast(self.read(data, missing))

    @torch.no_grad()
    def forecast(self, series: Series) -> pd.DataFrame:
        """:meth:`predict` of a series already read and checked."""
        assert self.net is not None, "no model: call fit() or use Forecaster.from_run()"
        window = series.dates[-max(self.seq_len, 3):]
        step = infer_step(window, f"{series.path}: the last {len(window)} timestamps")
        trained = self.run.get("step")
        if trained is not None and step_name(step) != trained:
            raise ValueError(f"{series.path}: the rows are {step_name(step)!r} apart; the run was trained on a "
                             f"series at a step of {trained!r}")
        future = future_dates(series.dates, self.horizon, step)
        history = series.dates[-self.seq_len:]
        freq = self.run["freq"]
        x_mark, y_mark = time_features(history, freq)[0], time_features(future, freq)[0]
        x = (series.values[-self.seq_len:] - self._mean) / self._std
        device = next(self.net.parameters()).device

        def tensor(a: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32, device=device)[None]

        pred = self.net(tensor(x), tensor(x_mark), tensor(y_mark))[0].double().cpu().numpy()
        values = pred * self._std + self._mean
        return pd.DataFrame(values, index=pd.DatetimeIndex(future, name=series.date_column), columns=self.columns)


__all__ = ["Forecaster"]
