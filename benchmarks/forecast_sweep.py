"""Grid search for a forecaster: every combination of the given values, several runs at a time.

    python benchmarks/forecast_sweep.py --model tsm2_512 --seq-len 512 --horizons 96 \\
        --grid d_model=16,32,64 --grid dropout=0.1,0.3 --grid lr=1e-4,3e-4 --jobs 2 --results sweep.jsonl

Each ``--grid KEY=V1,V2,...`` adds an axis. KEY is a training option of ``mambamixer forecast``
(lr, batch_size, epochs, patience, weight_decay, warmup_epochs, grad_clip, schedule, optimizer,
seed, ema_decay, loss) or else a model config field (passed as ``--set KEY=V``). Every combination runs as its own
``mambamixer forecast`` process, ``--jobs`` at a time (one thread each; on a GPU machine the runs
share the GPU); finished runs are found in ``--results`` (JSON lines) and skipped when re-run,
failed ones (recorded with their error) are tried again.

The configuration is chosen on validation MSE, as a grid search must be: the table printed at the
end is sorted by it, and the test figures of the chosen row are the ones to report.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from threading import Lock

TRAINING_FLAGS = ("lr", "batch_size", "epochs", "patience", "weight_decay", "warmup_epochs", "grad_clip", "schedule",
                  "optimizer", "seed", "ema_decay", "loss")  # fmt: skip


def parse_axis(text: str) -> tuple[str, list[str]]:
    key, sep, values = text.partition("=")
    if not sep or not key or not values:
        raise SystemExit(f"--grid expects KEY=V1,V2,..., got {text!r}")
    return key.strip(), [v.strip() for v in values.split(",") if v.strip()]


def combinations(axes: list[tuple[str, list[str]]]) -> list[dict[str, str]]:
    keys = [k for k, _ in axes]
    if len(set(keys)) != len(keys):
        raise SystemExit(f"each --grid key may appear once, got {keys}")
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*(v for _, v in axes))]


def run_key(model: str, data: str, seq_len: int, horizon: int, config: dict[str, str]) -> str:
    return f"{model}/{data}/{seq_len}/{horizon}/" + ",".join(f"{k}={v}" for k, v in sorted(config.items()))


def command(model: str, data: str, seq_len: int, horizon: int, config: dict[str, str], out: Path,
            data_dir: str | None) -> list[str]:  # fmt: skip
    cmd = [sys.executable, "-m", "mambamixer", "forecast", "--model", model, "--data", data, "--horizon",
           str(horizon), "--seq-len", str(seq_len), "--out", str(out), "--quiet"]  # fmt: skip
    if data_dir:
        cmd += ["--data-dir", data_dir]
    for key, value in sorted(config.items()):
        if key in TRAINING_FLAGS:
            cmd += [f"--{key.replace('_', '-')}", value]
        else:
            cmd += ["--set", f"{key}={value}"]
    return cmd


def run_one(cmd: list[str], out: Path, threads: int) -> dict:
    """The run's metrics, or ``{"error": ...}`` (recorded, and tried again by the next sweep)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "NUMBA_NUM_THREADS": str(threads)}
    result = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        return {"error": result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "failed"}
    try:
        m = json.loads((out / "metrics.json").read_text())
        keys = ("test_mse", "test_mae", "val_mse", "val_mae", "n_params", "seconds_per_epoch", "epochs_run",
                "best_epoch")  # fmt: skip
        return {k: m[k] for k in keys} | {"device": m["run"]["device"]}
    except (OSError, ValueError, KeyError) as err:
        return {"error": f"unreadable metrics.json in {out}: {err}"}


def table(rows: list[dict]) -> str:
    lines = ["| horizon | config | val MSE | test MSE | test MAE | params | best / run | s/epoch |",
             "|" + " --- |" * 8]  # fmt: skip
    for r in sorted(rows, key=lambda r: (r["horizon"], r.get("val_mse", float("inf")))):
        config = ", ".join(f"{k}={v}" for k, v in sorted(r["config"].items())) or "defaults"
        if "error" in r:
            lines.append(f"| {r['horizon']} | {config} | failed: {r['error'][:60]} | | | | | |")
            continue
        lines.append(f"| {r['horizon']} | {config} | {r['val_mse']:.4f} | {r['test_mse']:.4f} | {r['test_mae']:.4f} | "
                     f"{r['n_params']:,} | {r['best_epoch']}/{r['epochs_run']} | {r['seconds_per_epoch']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", default="ETTh1")
    parser.add_argument("--seq-len", type=int, default=None, help="default: the model's own (tsm2_512: 512)")
    parser.add_argument("--horizons", nargs="+", type=int, default=[96])
    parser.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2", help="one axis of the grid")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time")
    parser.add_argument("--threads", type=int, default=1, help="threads per run")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--runs", default="runs/sweep", help="folder for the run folders")
    parser.add_argument("--results", default="runs/sweep/results.jsonl")
    parser.add_argument("--markdown", default=None, help="also write the table to this file")
    args = parser.parse_args()

    configs = combinations([parse_axis(a) for a in args.grid])
    if args.seq_len is None:
        from mambamixer.tasks.forecast import default_seq_len

        args.seq_len = default_seq_len(args.model)
    results = Path(args.results)
    results.parent.mkdir(parents=True, exist_ok=True)
    done = {}
    if results.exists():
        for line in results.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                done[row["key"]] = row
    todo, grid_keys = [], set()
    for horizon in args.horizons:
        for config in configs:
            key = run_key(args.model, args.data, args.seq_len, horizon, config)
            grid_keys.add(key)
            if key not in done or "error" in done[key]:  # failed runs are tried again
                out = Path(args.runs) / hashlib.sha1(key.encode()).hexdigest()[:12]
                todo.append((key, horizon, config, out))
    print(f"{len(configs) * len(args.horizons)} runs in the grid, {len(todo)} to do, {args.jobs} at a time", flush=True)

    lock, start = Lock(), time.time()
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {pool.submit(run_one, command(args.model, args.data, args.seq_len, h, c, out, args.data_dir), out,
                               args.threads): (key, h, c, out) for key, h, c, out in todo}  # fmt: skip
        for n, future in enumerate(as_completed(futures), 1):
            key, horizon, config, out = futures[future]
            row = {"key": key, "model": args.model, "data": args.data, "seq_len": args.seq_len, "horizon": horizon,
                   "config": config, "run_dir": str(out), **future.result()}  # fmt: skip
            with lock, results.open("a") as f:
                f.write(json.dumps(row) + "\n")
            done[key] = row
            summary = row.get("error") or f"val {row['val_mse']:.4f} test {row['test_mse']:.4f}"
            print(f"[{n}/{len(todo)} {time.time() - start:.0f}s] {key}: {summary}", flush=True)

    text = table([done[key] for key in sorted(grid_keys)])  # this grid's runs only
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")


if __name__ == "__main__":
    main()
