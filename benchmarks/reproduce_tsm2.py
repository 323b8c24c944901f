"""The MambaMixer paper's TSM2 table at lookback 512, with PatchTST/64 and DLinear in the same harness.

    python benchmarks/reproduce_tsm2.py --models tsm2_512 --datasets ETTh1 --horizons 336 720 \\
        --set tsm2_512:lr=5e-5,1e-4 --set tsm2_512:dropout=0.3,0.5
    python benchmarks/reproduce_tsm2.py --models dlinear patchtst --datasets ETTh1 Exchange --jobs 2
    python benchmarks/reproduce_tsm2.py --table              # the Markdown table, from the results file only

Every (model, data set, horizon, configuration, seed) at lookback 512 runs ``mambamixer forecast``
in its own process (``benchmarks/forecast_sweep.py``'s command and runner, one thread each,
``--jobs`` at a time) and appends ONE JSON row to ``--results`` (default the committed
``benchmarks/results/lookback512.jsonl``): the command, model, configuration (the overrides given
and the full model-override and training recipe the run used), seed, validation and test MSE/MAE,
epochs run, best epoch, seconds, library versions and the date. A run already in the file is
skipped; a failed one (recorded with its error) is tried again.

``--set MODEL:KEY=V1,V2,...`` adds a grid axis for MODEL (KEY a training flag such as lr, or a
model config field such as dropout, as in forecast_sweep.py); every combination is a configuration
named by its overrides (``defaults`` when there are none). Every run's row is kept, the bad
configurations included. The configuration of record of a cell is the one with the lowest mean
validation MSE over its seeds; the table reports its test MSE averaged over those seeds.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from threading import Lock

sys.path.insert(0, str(Path(__file__).resolve().parent))
from forecast import PUBLISHED_TSM2_512  # noqa: E402
from forecast_sweep import combinations, command, parse_axis, run_one  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "lookback512.jsonl"
SEQ_LEN = 512
HORIZONS = (96, 192, 336, 720)
MODELS = ("tsm2_512", "patchtst", "dlinear")
# The paper's data sets; ETTh2 / ETTm2 (and Electricity / Traffic) are not in ../shared/data and
# cannot be downloaded on the machines these runs use.
DATASETS = ("ETTh1", "ETTh2", "ETTm1", "ETTm2", "Weather", "Exchange")
RUNNABLE = ("ETTh1", "ETTm1", "Weather", "Exchange")
# The MambaMixer paper's TSM2 table (v1, lookback 512, MSE), shared/docs/paper-notes.md; the rows
# benchmarks/forecast.py does not already carry are added here.
PAPER = {
    **PUBLISHED_TSM2_512,
    "ETTh2": {96: 0.253, 192: 0.334, 336: 0.347, 720: 0.401},
    "ETTm1": {96: 0.322, 192: 0.349, 336: 0.366, 720: 0.407},
    "ETTm2": {96: 0.173, 192: 0.230, 336: 0.279, 720: 0.388},
    "Weather": {96: 0.161, 192: 0.208, 336: 0.252, 720: 0.337},
}
# n8thantran/mambamixer-replication (lookback 512), test MSE.
THIRD_PARTY = {
    "ETTh1": {96: 0.417, 192: 0.446, 336: 0.468, 720: 0.485},
    "ETTh2": {96: 0.304, 192: 0.378, 336: 0.398, 720: 0.423},
    "ETTm1": {96: 0.310, 192: 0.350, 336: 0.379, 720: 0.439},
    "ETTm2": {96: 0.180, 192: 0.237, 336: 0.304, 720: 0.380},
    "Weather": {96: 0.153, 192: 0.196, 336: 0.248, 720: 0.321},
    "Exchange": {96: 0.118, 192: 0.212, 336: 0.375, 720: 0.980},
}
REQUIRED = ("key", "command", "model", "data", "seq_len", "horizon", "seed", "config", "val_mse", "val_mae",
            "test_mse", "test_mae", "epochs_run", "best_epoch", "seconds", "versions", "date")  # fmt: skip


def config_name(overrides: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(overrides.items())) or "defaults"


def run_key(model: str, data: str, horizon: int, overrides: dict[str, str], seed: int,
            seq_len: int | None = None) -> str:  # fmt: skip
    return f"{model}/{data}/{seq_len or SEQ_LEN}/{horizon}/{config_name(overrides)}/seed={seed}"


def parse_sets(texts: list[str], models: list[str]) -> dict[str, list[dict[str, str]]]:
    """``MODEL:KEY=V1,V2`` axes to every model's list of configurations (``[{}]`` without axes)."""
    axes: dict[str, list] = {m: [] for m in models}
    for text in texts:
        model, sep, axis = text.partition(":")
        if not sep or model not in axes:
            raise SystemExit(f"--set expects MODEL:KEY=V1,V2 with MODEL one of {models}, got {text!r}")
        key, values = parse_axis(axis)
        if key == "seed":
            raise SystemExit("seeds are given with --seeds, not --set")
        axes[model].append((key, values))
    return {m: combinations(a) for m, a in axes.items()}


def load_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def finished(rows: list[dict]) -> dict[str, dict]:
    """The rows of finished runs by key (a failed run's row carries ``error`` and does not count)."""
    return {r["key"]: r for r in rows if "error" not in r}


def versions() -> dict[str, str]:
    import numpy
    import torch

    import mambamixer

    return {"torch": torch.__version__, "numpy": numpy.__version__, "mambamixer": mambamixer.__version__,
            "python": platform.python_version(), "mambamixer_path": str(Path(mambamixer.__file__).parent)}  # fmt: skip


def git_commit() -> str | None:
    """The commit of the mambamixer source the runs import: $MAMBAMIXER_SOURCE_COMMIT when the runs use
    an exported snapshot of it (``git archive``, on PYTHONPATH), else this checkout's HEAD."""
    if os.environ.get("MAMBAMIXER_SOURCE_COMMIT"):
        return os.environ["MAMBAMIXER_SOURCE_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def execute(model: str, data: str, horizon: int, overrides: dict[str, str], seed: int, args) -> dict:
    """Run one cell in its own process (at lookback ``args.seq_len``, default 512); its row (with
    ``error`` when it failed)."""
    seq_len = getattr(args, "seq_len", SEQ_LEN)
    key = run_key(model, data, horizon, overrides, seed, seq_len)
    out = Path(args.runs) / hashlib.sha1(key.encode()).hexdigest()[:12]
    cmd = command(model, data, seq_len, horizon, {**overrides, "seed": str(seed)}, out, args.data_dir)
    start = time.time()
    result = run_one(cmd, out, args.threads)
    row = {"key": key, "command": shlex.join(cmd), "model": model, "data": data, "seq_len": seq_len,
           "horizon": horizon, "seed": seed, "config_name": config_name(overrides),
           "seconds": round(time.time() - start, 1), "threads": args.threads, "jobs": args.jobs,
           "versions": args.versions, "git_commit": args.commit,
           "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}  # fmt: skip
    if "error" in result:
        return {**row, "config": {"overrides": overrides}, **result}
    return {**row, **metrics_fields(out, overrides, result)}


def metrics_fields(out: Path, overrides: dict[str, str], result: dict) -> dict:
    """A finished ``mambamixer forecast`` run's row fields from its ``metrics.json``: the configuration
    (overrides, model overrides, training recipe), validation/test MSE/MAE, epochs and the history."""
    metrics = json.loads((out / "metrics.json").read_text())
    run = metrics["run"]
    row = {"config": {"overrides": overrides, "model_overrides": run["model_overrides"], "training": run["training"]}}
    keep = ("val_mse", "val_mae", "test_mse", "test_mae", "epochs_run", "best_epoch", "n_params",
            "seconds_per_epoch", "train_seconds", "device")  # fmt: skip
    row.update({k: (metrics[k] if k in metrics else result.get(k)) for k in keep})
    row["history"] = [{"epoch": h["epoch"], "train_loss": h["train_loss"], "val_mse": h["val_loss"],
                       "seconds": h["seconds"]} for h in metrics["history"]]
    return row


def run_all(args) -> None:
    path = Path(args.results)
    path.parent.mkdir(parents=True, exist_ok=True)
    done = finished(load_rows(path))
    configs = getattr(args, "configs", None) or parse_sets(args.set, args.models)  # explicit lists, or the grids
    todo = [(m, d, h, c, s) for d in args.datasets for h in args.horizons for m in args.models
            for c in configs[m] for s in args.seeds
            if run_key(m, d, h, c, s, getattr(args, "seq_len", SEQ_LEN)) not in done]  # fmt: skip
    print(f"{len(todo)} runs to do, {args.jobs} at a time, results in {path}", flush=True)
    if not todo:
        return
    args.versions, args.commit = versions(), git_commit()
    lock = Lock()
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {pool.submit(execute, *item, args): item for item in todo}
        for future in as_completed(futures):
            row = future.result()
            with lock, path.open("a") as f:
                f.write(json.dumps(row) + "\n")
            summary = row.get("error") or (f"val {row['val_mse']:.4f} test {row['test_mse']:.4f} / "
                                           f"{row['test_mae']:.4f}, best epoch {row['best_epoch']}/{row['epochs_run']}")
            print(f"{row['key']}: {summary} ({row['seconds']:.0f} s)", flush=True)


# --------------------------------------------------------------------------------------------- table


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def of_record(rows: list[dict]) -> dict[tuple, dict]:
    """Per (model, data, horizon): the configuration with the lowest mean validation MSE over its
    seeds, as ``{"config", "val_mse", "test_mse", "test_mae", "seeds", "configs"}`` (means over seeds)."""
    groups: dict[tuple, dict[str, list[dict]]] = {}
    for r in finished(rows).values():
        if r["seq_len"] == SEQ_LEN:
            groups.setdefault((r["model"], r["data"], r["horizon"]), {}).setdefault(r["config_name"], []).append(r)
    best = {}
    for cell, by_config in groups.items():
        name, rs = min(by_config.items(), key=lambda kv: _mean([r["val_mse"] for r in kv[1]]))
        best[cell] = {"config": name, "val_mse": _mean([r["val_mse"] for r in rs]), "seeds": len(rs),
                      "test_mse": _mean([r["test_mse"] for r in rs]), "test_mae": _mean([r["test_mae"] for r in rs]),
                      "configs": len(by_config)}  # fmt: skip
    return best


def _cell(best: dict[tuple, dict], model: str, data: str, horizon: int, detail: bool = False) -> str:
    b = best.get((model, data, horizon))
    if b is None:
        return "-"
    text = f"{b['test_mse']:.4f}"
    if detail:
        text += f" ({b['seeds']} seed{'s' * (b['seeds'] > 1)}, {b['configs']} config{'s' * (b['configs'] > 1)})"
    return text


def _average(values: list[float | None]) -> float | None:
    return None if any(v is None for v in values) else _mean(values)  # type: ignore[arg-type]


def table(rows: list[dict]) -> str:
    """The summary table (configuration of record per cell) and every run, as Markdown."""
    best = of_record(rows)
    lines = ["| data set | horizon | TSM2, ours | TSM2, paper | TSM2, third-party replication | PatchTST/64, ours "
             "| DLinear, ours |", "|" + " --- |" * 7]  # fmt: skip
    for data in DATASETS:
        if data not in RUNNABLE:
            lines.append(f"| {data} | all | not measured: {data}.csv is not in ../shared/data and cannot be "
                         f"downloaded here | {' / '.join(f'{PAPER[data][h]:.3f}' for h in HORIZONS)} | "
                         f"{' / '.join(f'{THIRD_PARTY[data][h]:.3f}' for h in HORIZONS)} | - | - |")  # fmt: skip
            continue
        for h in HORIZONS:
            lines.append(f"| {data} | {h} | {_cell(best, 'tsm2_512', data, h, True)} | {PAPER[data][h]:.3f} | "
                         f"{THIRD_PARTY[data][h]:.3f} | {_cell(best, 'patchtst', data, h)} | "
                         f"{_cell(best, 'dlinear', data, h)} |")  # fmt: skip
        ours = [best[("tsm2_512", data, h)]["test_mse"] if ("tsm2_512", data, h) in best else None for h in HORIZONS]
        avg, paper_avg = _average(ours), _mean([PAPER[data][h] for h in HORIZONS])
        third_avg = _mean([THIRD_PARTY[data][h] for h in HORIZONS])
        others = []
        for model in ("patchtst", "dlinear"):
            a = _average([best[(model, data, h)]["test_mse"] if (model, data, h) in best else None for h in HORIZONS])
            others.append("-" if a is None else f"{a:.4f}")
        ours_text = "- (not every horizon measured)" if avg is None else f"{avg:.4f} ({avg / paper_avg:.3f}x paper)"
        lines.append(f"| {data} | **average** | {ours_text} | {paper_avg:.4f} | {third_avg:.4f} "
                     f"({third_avg / paper_avg:.3f}x paper) | {others[0]} | {others[1]} |")  # fmt: skip
    lines += ["", "Every run (the configuration of record of a cell is the lowest mean validation MSE):", "",
              "| model | data set | horizon | configuration | seed | val MSE | test MSE / MAE | best / run | seconds |",
              "|" + " --- |" * 9]  # fmt: skip
    for r in sorted(rows, key=lambda r: (r["model"], r["data"], r["horizon"], r.get("val_mse", float("inf")))):
        if "error" in r:
            lines.append(f"| {r['model']} | {r['data']} | {r['horizon']} | {r['config_name']} | {r['seed']} | "
                         f"failed: {r['error'][:60]} | | | {r['seconds']:.0f} |")  # fmt: skip
            continue
        mark = "**" if best[(r["model"], r["data"], r["horizon"])]["config"] == r["config_name"] else ""
        lines.append(f"| {r['model']} | {r['data']} | {r['horizon']} | {mark}{r['config_name']}{mark} | {r['seed']} | "
                     f"{r['val_mse']:.4f} | {r['test_mse']:.4f} / {r['test_mae']:.4f} | "
                     f"{r['best_epoch']}/{r['epochs_run']} | {r['seconds']:.0f} |")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--datasets", nargs="+", default=list(RUNNABLE))
    parser.add_argument("--horizons", nargs="+", type=int, default=list(HORIZONS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--set", action="append", default=[], metavar="MODEL:KEY=V1,V2",
                        help="a grid axis for one model (training flag or model config field), repeatable")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time")
    parser.add_argument("--threads", type=int, default=1, help="threads per run")
    parser.add_argument("--data-dir", default=os.environ.get("MAMBAMIXER_DATA") or str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--runs", default="runs/reproduce_tsm2", help="folder for the run folders")
    parser.add_argument("--results", default=str(RESULTS))
    parser.add_argument("--table", action="store_true", help="only print the table built from --results")
    parser.add_argument("--markdown", default=None, help="also write the table to this file")
    args = parser.parse_args(argv)
    if not args.table:
        run_all(args)
    text = table(load_rows(Path(args.results)))
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")


if __name__ == "__main__":
    main()
