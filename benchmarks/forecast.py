"""Long-horizon forecasting benchmark: every model, dataset and horizon, measured in one harness.

    python benchmarks/forecast.py                                  # the full grid (hours on a CPU)
    python benchmarks/forecast.py --models tsm2 dlinear --datasets ETTh1 --horizons 96
    python benchmarks/forecast.py --seq-len 512 --datasets ETTh1 --models tsm2_512 patchtst

Each (model, dataset, seq_len, horizon, seed) runs `mambamixer forecast` in its own process (so
peak memory is that run's own) with the model's default training recipe, and its metrics.json
is collected into ``--results`` (JSON lines; finished runs are skipped when re-run). The table
printed at the end (and written as Markdown with ``--markdown``) has test MSE/MAE, parameters,
seconds per epoch and peak memory, with the published figures of paper-notes beside ours.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

# Published test MSE / MAE at lookback 96 (iTransformer's table and SiMBA's own), and the MambaMixer
# paper's TSM2 table at lookback 512 (MSE only). Source: shared/docs/paper-notes.md.
PUBLISHED_96 = {
    ("ETTh1", 96): {"itransformer": (0.386, 0.405), "patchtst": (0.414, 0.419), "dlinear": (0.386, 0.400)},
    ("ETTh1", 192): {"itransformer": (0.441, 0.436), "patchtst": (0.460, 0.445), "dlinear": (0.437, 0.432)},
    ("ETTh1", 336): {"itransformer": (0.487, 0.458), "patchtst": (0.501, 0.466), "dlinear": (0.481, 0.459)},
    ("ETTh1", 720): {"itransformer": (0.503, 0.491), "patchtst": (0.500, 0.488), "dlinear": (0.519, 0.516)},
    ("Exchange", 96): {"itransformer": (0.086, 0.206), "patchtst": (0.088, 0.205), "dlinear": (0.088, 0.218)},
}
# SiMBA's own table (lookback 96, PatchTST code base), test MSE / MAE per dataset and horizon.
PUBLISHED_SIMBA_96 = {
    "ETTh1": {96: (0.379, 0.395), 192: (0.432, 0.424), 336: (0.473, 0.443), 720: (0.483, 0.469)},
    "ETTm1": {96: (0.324, 0.360), 192: (0.363, 0.382), 336: (0.395, 0.405), 720: (0.451, 0.437)},
    "ETTm2": {96: (0.177, 0.263), 192: (0.245, 0.306), 336: (0.304, 0.343), 720: (0.400, 0.399)},
    "Weather": {96: (0.176, 0.219), 192: (0.222, 0.260), 336: (0.275, 0.297), 720: (0.350, 0.349)},
    "Electricity": {96: (0.165, 0.253), 192: (0.173, 0.262), 336: (0.188, 0.277), 720: (0.214, 0.305)},
    "Traffic": {96: (0.468, 0.268), 192: (0.413, 0.317), 336: (0.529, 0.284), 720: (0.564, 0.297)},
}
PUBLISHED_TSM2_512 = {
    "ETTh1": {96: 0.375, 192: 0.398, 336: 0.419, 720: 0.422},
    "Exchange": {96: 0.163, 192: 0.229, 336: 0.383, 720: 0.999},
}
DEFAULT_MODELS = ["tsm2", "simba", "dlinear", "patchtst", "itransformer"]


def run_key(model: str, data: str, seq_len: int, horizon: int, seed: int) -> str:
    return f"{model}/{data}/{seq_len}/{horizon}/{seed}"


def load_results(path: Path) -> dict[str, dict]:
    if not path.exists():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {row["key"]: row for row in rows}


def run_one(model: str, data: str, seq_len: int, horizon: int, seed: int, args) -> dict:
    out = Path(args.runs) / run_key(model, data, seq_len, horizon, seed).replace("/", "-")
    cmd = [sys.executable, "-m", "mambamixer", "forecast", "--model", model, "--data", data, "--horizon",
           str(horizon), "--seq-len", str(seq_len), "--seed", str(seed), "--out", str(out), "--quiet"]  # fmt: skip
    if args.data_dir:
        cmd += ["--data-dir", args.data_dir]
    if args.epochs:
        cmd += ["--epochs", str(args.epochs)]
    subprocess.run(cmd, check=True)
    metrics = json.loads((out / "metrics.json").read_text())
    return {
        "key": run_key(model, data, seq_len, horizon, seed),
        "model": model, "data": data, "seq_len": seq_len, "horizon": horizon, "seed": seed,
        "test_mse": metrics["test_mse"], "test_mae": metrics["test_mae"], "val_mse": metrics["val_mse"],
        "n_params": metrics["n_params"], "seconds_per_epoch": metrics["seconds_per_epoch"],
        "epochs_run": metrics["epochs_run"], "peak_memory_mb": metrics["peak_memory_mb"],
    }  # fmt: skip


def published(model: str, data: str, seq_len: int, horizon: int) -> str:
    if model.startswith("tsm2") and seq_len == 512 and horizon in PUBLISHED_TSM2_512.get(data, {}):
        return f"{PUBLISHED_TSM2_512[data][horizon]:.3f} / -"
    if model == "simba" and seq_len == 96 and horizon in PUBLISHED_SIMBA_96.get(data, {}):
        mse, mae = PUBLISHED_SIMBA_96[data][horizon]
        return f"{mse:.3f} / {mae:.3f}"
    if seq_len == 96 and model in PUBLISHED_96.get((data, horizon), {}):
        mse, mae = PUBLISHED_96[(data, horizon)][model]
        return f"{mse:.3f} / {mae:.3f}"
    return "-"


def table(rows: list[dict]) -> str:
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["data"], r["seq_len"], r["horizon"], r["model"]), []).append(r)
    lines = ["| dataset | lookback | horizon | model | test MSE | test MAE | seeds | published MSE / MAE | params "
             "| s/epoch | peak MB |", "|" + " --- |" * 11]  # fmt: skip
    for (data, seq_len, horizon, model), rs in sorted(groups.items()):
        mse = sum(r["test_mse"] for r in rs) / len(rs)
        mae = sum(r["test_mae"] for r in rs) / len(rs)
        spe = sum(r["seconds_per_epoch"] for r in rs) / len(rs)
        peak = max(r["peak_memory_mb"] for r in rs)
        lines.append(f"| {data} | {seq_len} | {horizon} | {model} | {mse:.4f} | {mae:.4f} | {len(rs)} | "
                     f"{published(model, data, seq_len, horizon)} | {rs[0]['n_params']:,} | {spe:.1f} | {peak:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    parser.add_argument("--datasets", nargs="+", default=["ETTh1", "Exchange"])
    parser.add_argument("--horizons", nargs="+", type=int, default=[96, 192, 336, 720])
    parser.add_argument("--seq-len", type=int, default=96)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--epochs", type=int, default=None, help="override every model's default")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--runs", default="runs/benchmark", help="folder for the run folders")
    parser.add_argument("--results", default="runs/benchmark/results.jsonl")
    parser.add_argument("--markdown", default=None, help="also write the table to this file")
    args = parser.parse_args()

    results_path = Path(args.results)
    results_path.parent.mkdir(parents=True, exist_ok=True)
    done = load_results(results_path)
    for data in args.datasets:
        for horizon in args.horizons:
            for model in args.models:
                for seed in args.seeds:
                    key = run_key(model, data, args.seq_len, horizon, seed)
                    if key in done:
                        continue
                    print(f"running {key}", flush=True)
                    row = run_one(model, data, args.seq_len, horizon, seed, args)
                    done[key] = row
                    with results_path.open("a") as fh:
                        fh.write(json.dumps(row) + "\n")
                    print(f"  test MSE {row['test_mse']:.4f}  MAE {row['test_mae']:.4f}  "
                          f"{row['seconds_per_epoch']:.1f} s/epoch", flush=True)  # fmt: skip
    rows = [r for r in done.values() if r["seq_len"] == args.seq_len and r["data"] in args.datasets
            and r["model"] in args.models and r["horizon"] in args.horizons]  # fmt: skip
    text = table(rows)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")


if __name__ == "__main__":
    main()
