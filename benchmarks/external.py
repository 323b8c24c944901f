"""neuralforecast's forecasters under OUR protocol, beside ours, at lookback 96 (issue 27).

    python benchmarks/external.py --models DLinear --datasets ETTh1 --horizons 96
    python benchmarks/external.py --models PatchTST --set hidden_size=64     # extra model kwargs
    python benchmarks/external.py --ours tsm2 --datasets ETTh1 --horizons 96 # our CLI, same file
    python benchmarks/external.py --table                                    # from the results file only
    python benchmarks/external.py --side-by-side loss=mae --with benchmarks/results/defaults96.jsonl

Each run trains one neuralforecast model (``pip install -e '.[bench]'``) on OUR z-scored splits
(``mambamixer.data.forecast``: ETT 12/4/4 months, others 7/1/2, z-scored with the training rows'
statistics) and scores it with OUR evaluation (``forecast_errors``) on every one of our validation
and test windows, MSE/MAE on the z-scored scale:

- the rows up to the validation border go to ``NeuralForecast.fit`` in the long format (one
  ``unique_id`` a variate, ``ds`` the file row, ``y`` the z-scored value) with ``val_size`` = the
  validation months, so neuralforecast trains on the training rows and early-stops on the
  validation months; univariate models (PatchTST, NHITS, DLinear) see each variate as a series,
  multivariate ones (iTransformer, TSMixer) get ``n_series``;
- the trained torch module is then called on our own window tensors (``WindowForecaster``): the
  exact forward neuralforecast's ``predict`` runs for one window (identity scaler, point loss),
  without building a data frame per window. ``tests/test_external.py`` checks it against
  ``nf.predict``.

Training uses neuralforecast's defaults except ``DEFAULTS`` below, ``input_size=seq_len`` and
``h=horizon``; ``--max-steps``/``--val-check-steps``/``--patience`` override those, ``--set KEY=V``
passes any other model kwarg. One JSON row a run is appended to ``--results`` (default the committed
``benchmarks/results/lookback96.jsonl``; the schema of ``lookback512.jsonl`` plus ``library`` and
``library_version``; ``epochs_run``/``best_epoch`` count optimiser steps for neuralforecast rows);
a finished key is skipped.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from forecast_sweep import command, run_one  # noqa: E402
from reproduce_tsm2 import config_name, finished, git_commit, load_rows, metrics_fields, versions  # noqa: E402

from mambamixer.data.forecast import ForecastData, load_forecast_data  # noqa: E402
from mambamixer.tasks.forecast import forecast_errors  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "lookback96.jsonl"
SEQ_LEN = 96
HORIZONS = (96, 192, 336, 720)
MODELS = ("PatchTST", "iTransformer", "TSMixer", "NHITS", "DLinear")
DEFAULTS = {"max_steps": 1000, "val_check_steps": 100, "early_stop_patience_steps": 5, "scaler_type": "identity"}
# Trainer settings that change nothing but the console output.
QUIET = {"enable_progress_bar": False, "enable_model_summary": False, "logger": False}
EVAL_BATCH_SIZE = 256


def require_neuralforecast():
    """The ``neuralforecast`` module, or a one-line exit saying how to install it."""
    try:
        import neuralforecast
    except ImportError:
        raise SystemExit("benchmarks/external.py needs neuralforecast for this run: "
                         "pip install -e '.[bench]'") from None
    return neuralforecast


# --------------------------------------------------------------------------------------- our data


def series_rows(fd: ForecastData) -> np.ndarray:
    """The z-scored rows ``(test stop, n_vars)`` our three splits window: train, then the validation and
    test rows after their ``seq_len`` look-back (which repeats the rows before them)."""
    return np.concatenate([fd.train.data, fd.val.data[fd.seq_len:], fd.test.data[fd.seq_len:]])


def series_ids(columns: list[str]) -> list[str]:
    """The ``unique_id`` of each column: its position first (``"0:HUFL"``, ...), so neuralforecast's
    sorted series order (the variate axis of multivariate models) is our column order."""
    width = len(str(len(columns) - 1))
    return [f"{i:0{width}d}:{c}" for i, c in enumerate(columns)]


def to_long(rows: np.ndarray, columns: list[str]) -> pd.DataFrame:
    """Rows ``(n, n_vars)`` to neuralforecast's long format: ``unique_id`` (``series_ids``), ``ds`` (the
    row, integer time, ``freq=1``), ``y``; sorted by series then time."""
    n = rows.shape[0]
    return pd.DataFrame({"unique_id": np.repeat(np.asarray(series_ids(columns), dtype=object), n),
                         "ds": np.tile(np.arange(n, dtype=np.int64), len(columns)),
                         "y": rows.T.reshape(-1)})  # fmt: skip


def from_long(frame: pd.DataFrame, columns: list[str], value: str = "y") -> np.ndarray:
    """The long format back to rows ``(n, n_vars)`` in ``columns`` order (``value`` the value column)."""
    wide = frame.pivot(index="ds", columns="unique_id", values=value).sort_index()
    return wide[series_ids(columns)].to_numpy(np.float32)


def fit_frame(fd: ForecastData) -> tuple[pd.DataFrame, int]:
    """The long frame ``NeuralForecast.fit`` gets (training and validation rows) and its ``val_size``."""
    rows = series_rows(fd)[: fd.val.stop]
    return to_long(rows, fd.columns), fd.val.stop - fd.train.stop


class WindowForecaster(nn.Module):
    """A trained neuralforecast model as one of ours: ``forward(x (B, L, N), x_mark, y_mark) -> (B, h, N)``.

    ``core`` is the model's torch module; univariate models predict each variate of each window as
    its own series (``(B * N, L, 1)`` in), multivariate ones every variate at once (``(B, L, N)`` in).
    With the identity scaler and a point loss this is all ``predict`` does between windows and output.
    """

    def __init__(self, core: nn.Module, multivariate: bool) -> None:
        super().__init__()
        self.core = core
        self.multivariate = multivariate

    def forward(self, x: torch.Tensor, x_mark: torch.Tensor | None = None,
                y_mark: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
        batch, seq_len, n_vars = x.shape
        y = x if self.multivariate else x.permute(0, 2, 1).reshape(batch * n_vars, seq_len, 1)
        out = self.core({"insample_y": y, "insample_mask": torch.ones_like(y), "futr_exog": None,
                         "hist_exog": None, "stat_exog": None})  # fmt: skip
        out = self.core.loss.domain_map(out) if hasattr(self.core, "loss") else out
        horizon = out.shape[1]
        out = out.reshape(out.shape[0], horizon, -1)  # (B, h, N) or (B * N, h, 1)
        if self.multivariate:
            return out
        return out.reshape(batch, n_vars, horizon).permute(0, 2, 1)


# ------------------------------------------------------------------------------------------- runs


def run_key(library: str, model: str, data: str, seq_len: int, horizon: int, overrides: dict[str, str],
            seed: int) -> str:  # fmt: skip
    return f"{library}/{model}/{data}/{seq_len}/{horizon}/{config_name(overrides)}/seed={seed}"


def parse_value(text: str):
    """``--set`` values: JSON where it parses (numbers, booleans, lists, null), else the string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_sets(texts: list[str]) -> dict[str, str]:
    sets = {}
    for text in texts:
        key, sep, value = text.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise SystemExit(f"--set expects KEY=VALUE, got {text!r}")
        sets[key.strip()] = value.strip()
    return sets


def model_kwargs(args, overrides: dict[str, str], seed: int, n_series: int, multivariate: bool) -> dict:
    kwargs = {**DEFAULTS, "max_steps": args.max_steps, "val_check_steps": args.val_check_steps,
              "early_stop_patience_steps": args.patience, "random_seed": seed,
              **{k: parse_value(v) for k, v in overrides.items()}}  # fmt: skip
    return {**kwargs, "n_series": n_series} if multivariate else kwargs


def _row_base(key: str, cmd: str, library: str, model: str, data: str, horizon: int, seed: int,
              overrides: dict[str, str], args) -> dict:  # fmt: skip
    return {"key": key, "command": cmd, "library": library, "model": model, "data": data, "seq_len": SEQ_LEN,
            "horizon": horizon, "seed": seed, "config_name": config_name(overrides), "threads": args.threads,
            "versions": args.versions, "git_commit": args.commit, "load_average": os.getloadavg(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}  # fmt: skip


def _this_command(model: str, data: str, horizon: int, overrides: dict[str, str], seed: int, args) -> str:
    cmd = ["python", "benchmarks/external.py", "--models", model, "--datasets", data, "--horizons", str(horizon),
           "--seeds", str(seed), "--max-steps", str(args.max_steps), "--val-check-steps", str(args.val_check_steps),
           "--patience", str(args.patience), "--threads", str(args.threads)]  # fmt: skip
    for k, v in sorted(overrides.items()):
        cmd += ["--set", f"{k}={v}"]
    return shlex.join(cmd)


def run_neuralforecast(model: str, data: str, horizon: int, overrides: dict[str, str], seed: int, args) -> dict:
    """Train one neuralforecast model on our splits; its row, scored on every one of our windows."""
    nf_module = require_neuralforecast()
    from neuralforecast import NeuralForecast, models

    start = time.time()
    fd = load_forecast_data(data, SEQ_LEN, horizon, data_dir=args.data_dir)
    cls = getattr(models, model)
    multivariate = bool(cls.MULTIVARIATE)
    kwargs = model_kwargs(args, overrides, seed, fd.n_vars, multivariate)
    frame, val_size = fit_frame(fd)
    nf = NeuralForecast(models=[cls(h=horizon, input_size=SEQ_LEN, **kwargs, **QUIET)], freq=1)
    nf.fit(df=frame, val_size=val_size)
    train_seconds = time.time() - start
    core = nf.models[0]
    forecaster = WindowForecaster(core, multivariate).eval()
    val = forecast_errors(forecaster, fd.val, EVAL_BATCH_SIZE, "cpu")
    test = forecast_errors(forecaster, fd.test, EVAL_BATCH_SIZE, "cpu")
    history = [{"step": int(s), "val_mse": float(v)} for s, v in core.valid_trajectories]
    best = min(history, key=lambda h: h["val_mse"])["step"] if history else None
    key = run_key("neuralforecast", model, data, SEQ_LEN, horizon, overrides, seed)
    row = _row_base(key, _this_command(model, data, horizon, overrides, seed, args), "neuralforecast", model,
                    data, horizon, seed, overrides, args)  # fmt: skip
    kwargs.pop("n_series", None)
    return {**row, "library_version": nf_module.__version__, "seconds": round(time.time() - start, 1),
            "config": {"overrides": overrides, "model_kwargs": {"h": horizon, "input_size": SEQ_LEN, **kwargs},
                       "multivariate": multivariate},
            "val_mse": val["mse"], "val_mae": val["mae"], "test_mse": test["mse"], "test_mae": test["mae"],
            "val_windows": val["windows"], "test_windows": test["windows"],
            "epochs_run": len(core.train_trajectories),
            "best_epoch": best, "step_unit": "optimiser steps",
            "n_params": sum(p.numel() for p in core.parameters()), "train_seconds": round(train_seconds, 1),
            "device": "cpu", "history": history}  # fmt: skip


def run_ours(model: str, data: str, horizon: int, overrides: dict[str, str], seed: int, args) -> dict:
    """One ``mambamixer forecast`` run (our recipe) in its own process; its row."""
    key = run_key("mambamixer", model, data, SEQ_LEN, horizon, overrides, seed)
    out = Path(args.runs) / hashlib.sha1(key.encode()).hexdigest()[:12]
    cmd = command(model, data, SEQ_LEN, horizon, {**overrides, "seed": str(seed)}, out, args.data_dir)
    start = time.time()
    result = run_one(cmd, out, args.threads)
    import mambamixer

    row = {**_row_base(key, shlex.join(cmd), "mambamixer", model, data, horizon, seed, overrides, args),
           "library_version": mambamixer.__version__, "seconds": round(time.time() - start, 1)}  # fmt: skip
    if "error" in result:
        return {**row, "config": {"overrides": overrides}, **result}
    return {**row, **metrics_fields(out, overrides, result)}


def run_all(args) -> None:
    path = Path(args.results)
    path.parent.mkdir(parents=True, exist_ok=True)
    done = finished(load_rows(path))
    overrides = parse_sets(args.set)
    library, runner, models = (("mambamixer", run_ours, args.ours) if args.ours else
                               ("neuralforecast", run_neuralforecast, args.models))  # fmt: skip
    todo = [(m, d, h, s) for d in args.datasets for h in args.horizons for m in models for s in args.seeds
            if run_key(library, m, d, SEQ_LEN, h, overrides, s) not in done]  # fmt: skip
    print(f"{len(todo)} {library} runs to do, one at a time, results in {path}", flush=True)
    if not todo:
        return
    torch.set_num_threads(args.threads)
    args.versions, args.commit = versions(), git_commit()
    for model, data, horizon, seed in todo:
        row = runner(model, data, horizon, overrides, seed, args)
        with path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        summary = row.get("error") or (f"val {row['val_mse']:.4f} test {row['test_mse']:.4f} / {row['test_mae']:.4f}, "
                                       f"best {row['best_epoch']}/{row['epochs_run']}")  # fmt: skip
        print(f"{row['key']}: {summary} ({row['seconds']:.0f} s)", flush=True)


# ------------------------------------------------------------------------------------------ table


def table(rows: list[dict]) -> str:
    """Every finished run at lookback 96 as a Markdown table, sorted by data set, horizon and test MSE;
    seconds are wall time, with the 1-minute load average of the machine at the end of the run."""
    lines = ["| data set | horizon | library | model | configuration | seed | val MSE | test MSE | test MAE "
             "| best / run | seconds (load) | version |", "|" + " --- |" * 12]  # fmt: skip
    done = sorted(finished(rows).values(), key=lambda r: (r["data"], r["horizon"], r["test_mse"]))
    for r in done:
        unit = " steps" if r.get("step_unit") else " epochs"
        load = f" ({r['load_average'][0]:.1f})" if r.get("load_average") else ""
        lines.append(f"| {r['data']} | {r['horizon']} | {r['library']} | {r['model']} | {r['config_name']} | "
                     f"{r['seed']} | {r['val_mse']:.4f} | {r['test_mse']:.4f} | {r['test_mae']:.4f} | "
                     f"{r['best_epoch']}/{r['epochs_run']}{unit} | {r['seconds']:.0f}{load} | "
                     f"{r['library']} {r['library_version']}, torch {r['versions']['torch']} |")  # fmt: skip
    failed = [r for r in rows if "error" in r]
    if failed:
        lines += ["", *(f"- failed: `{r['key']}`: {r['error'][:80]}" for r in failed)]
    return "\n".join(lines)


def _label(r: dict) -> str:
    """A row's model as the side-by-side table names it: ``library model (configuration)``."""
    library = r.get("library", "mambamixer")  # search_defaults.py rows are ours and carry no library
    return f"{library} {r['model']}" + ("" if r["config_name"] == "defaults" else f" ({r['config_name']})")


def side_by_side(rows: list[dict], ours: list[str]) -> str:
    """Test MSE / MAE per (data set, horizon) cell, a row per model, the mean over the seeds run (their
    number in brackets when more than one), with each data set's four-horizon average where all four
    horizons are measured. ``rows`` may mix this file's rows with ``search_defaults.py``'s
    (``defaults96.jsonl``); of ours, only the configurations named in ``ours`` (``MODEL:CONFIG``, or
    ``CONFIG`` for any model) are shown; of neuralforecast's, every one."""

    def shown(r: dict) -> bool:
        return r.get("library") == "neuralforecast" or any(
            want in (r["config_name"], f"{r['model']}:{r['config_name']}") for want in ours)

    keep = [r for r in finished(rows).values() if r["seq_len"] == SEQ_LEN and shown(r)]
    cells = {(r["data"], r["horizon"]) for r in keep}
    columns = [(d, h) for d in sorted({d for d, _ in cells}) for h in HORIZONS if (d, h) in cells]
    runs: dict[str, dict] = {}
    for r in keep:
        runs.setdefault(_label(r), {}).setdefault((r["data"], r["horizon"]), []).append(r)
    means = {label: {c: (np.mean([r["test_mse"] for r in got[c]]), np.mean([r["test_mae"] for r in got[c]]),
                         len(got[c])) for c in got} for label, got in runs.items()}  # fmt: skip
    datasets = sorted({d for got in means.values() for d, _ in got if all((d, h) in got for h in HORIZONS)})
    head = [f"{d}-{h}" for d, h in columns] + [f"{d} average" for d in datasets]
    lines = ["| model | " + " | ".join(head) + " |", "|" + " --- |" * (len(head) + 1)]
    for label, got in sorted(means.items()):
        values = [f"{got[c][0]:.4f} / {got[c][1]:.4f}" + (f" ({got[c][2]} seeds)" if got[c][2] > 1 else "")
                  if c in got else "-" for c in columns]  # fmt: skip
        for d in datasets:
            four = [got.get((d, h)) for h in HORIZONS]
            values.append("-" if None in four else f"**{np.mean([m[0] for m in four]):.4f} / "
                                                   f"{np.mean([m[1] for m in four]):.4f}**")  # fmt: skip
        lines.append(f"| {label} | " + " | ".join(values) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--ours", nargs="+", default=None, metavar="MODEL",
                        help="run these mambamixer models (our recipe, `mambamixer forecast`) instead")
    parser.add_argument("--datasets", nargs="+", default=["ETTh1"])
    parser.add_argument("--horizons", nargs="+", type=int, default=[96])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--max-steps", type=int, default=DEFAULTS["max_steps"])
    parser.add_argument("--val-check-steps", type=int, default=DEFAULTS["val_check_steps"])
    parser.add_argument("--patience", type=int, default=DEFAULTS["early_stop_patience_steps"],
                        help="early_stop_patience_steps (validation checks without improvement)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="an extra model kwarg (neuralforecast) or config field / training flag (--ours)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per run")
    parser.add_argument("--data-dir", default=os.environ.get("MAMBAMIXER_DATA") or str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--runs", default="runs/external", help="folder for our runs' folders (--ours)")
    parser.add_argument("--results", default=str(RESULTS))
    parser.add_argument("--table", action="store_true", help="only print the table built from --results")
    parser.add_argument("--side-by-side", nargs="+", default=None, metavar="CONFIG",
                        help="print instead test MSE / MAE per cell, neuralforecast's models beside these "
                             "configurations of ours (config names, e.g. loss=mae), with four-horizon averages")
    parser.add_argument("--with", dest="extra", nargs="+", default=[], metavar="JSONL",
                        help="more results files for --side-by-side (e.g. benchmarks/results/defaults96.jsonl)")
    args = parser.parse_args(argv)
    if args.side_by_side is not None:
        rows = [r for path in (args.results, *args.extra) for r in load_rows(Path(path))]
        print(side_by_side(rows, args.side_by_side))
        return
    if not args.table:
        run_all(args)
    print(table(load_rows(Path(args.results))))


if __name__ == "__main__":
    main()
