"""``mambamixer predict``: forecast the steps after a series' last row with a trained run, and write
them as a CSV (a date column at the series' step, the variates' own names, the data's units) and a
plot of the recent history and the forecast.

    result = predict_run("runs/forecast-tsm2-my-96-24", data="my.csv")   # -> RUN/future.csv, future.png

Everything is read and checked before anything is written; the outputs are written atomically, so
bad input leaves every file as it was.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from mambamixer.forecaster import Forecaster
from mambamixer.io import atomic_write
from mambamixer.training.plots import plot_future

DEFAULT_PLOT_COLUMNS = 4  # variates drawn when none are chosen: the first few


def writable_file(path: Path, what: str) -> Path:
    if path.is_dir():
        raise ValueError(f"{what} {path} is a folder; expected a file name")
    if not path.parent.is_dir():
        raise ValueError(f"cannot write {what} {path}: the folder {path.parent} does not exist")
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write {what} {path}: {path.parent} is not writable")
    return path


def plot_columns(columns: Sequence[str], chosen: Sequence[str] | None) -> list[str]:
    """The variates to draw: ``chosen`` (each must be a column), else the first few."""
    if not chosen:
        return list(columns[:DEFAULT_PLOT_COLUMNS])
    unknown = [c for c in chosen if c not in columns]
    if unknown:
        raise ValueError(f"plot columns {unknown} are not variates of the run; expected some of {list(columns)}")
    return list(chosen)


def predict_run(run_dir: str | os.PathLike, data: str | os.PathLike | None = None,
                out: str | os.PathLike | None = None, plot: str | os.PathLike | None = None,
                columns: Sequence[str] | None = None, missing: str | None = None, checkpoint: str = "auto",
                device: str | None = None) -> dict[str, Any]:  # fmt: skip
    """Forecast the next ``horizon`` steps after the last row of ``data`` (default: the data the run
    was trained on) and write ``out`` (default ``RUN/future.csv``) and ``plot`` (``RUN/future.png``;
    ``columns``: the variates drawn). Returns the forecast frame and where it went."""
    run_dir = Path(run_dir)
    forecaster = Forecaster.from_run(run_dir, checkpoint, device)
    out = writable_file(Path(out) if out is not None else run_dir / "future.csv", "the forecast")
    plot = writable_file(Path(plot) if plot is not None else run_dir / "future.png", "the plot")
    drawn = plot_columns(forecaster.columns, columns)
    series = forecaster.read(data, missing)
    keep = [series.path.resolve(), *(p.resolve() for d in ("checkpoint", "refit") for p in (run_dir / d).glob("*"))]
    for path, what in ((out, "--out"), (plot, "--plot")):
        if path.resolve() in keep:
            raise ValueError(f"{what} {path} would overwrite the input data or the run's checkpoint; "
                             f"expected a new file name")
    if out.resolve() == plot.resolve():
        raise ValueError(f"--out and --plot are the same file {out}; expected two names")
    future = forecaster.forecast(series)

    atomic_write(out, lambda tmp: future.to_csv(tmp, index_label=future.index.name))
    shown = min(len(series.dates), max(4 * forecaster.horizon, forecaster.seq_len))
    history = pd.DataFrame(series.values[-shown:], index=series.dates[-shown:], columns=series.columns)
    title = (f"{forecaster.run['model_name']}: {forecaster.horizon} steps after {series.dates[-1]} "
             f"({series.path.name})")
    plot_future(history[drawn], future[drawn], plot, title)
    return {"forecast": future, "csv": out, "plot": plot, "checkpoint": forecaster.checkpoint,
            "data": series.path, "last_date": series.dates[-1]}


__all__ = ["plot_columns", "predict_run", "writable_file"]
