"""How much the ``drop_last=True`` test loader of the Autoformer/PatchTST code bases moves test MSE.

    python benchmarks/drop_last.py runs/tsm2-ETTh1-96-96 runs/patchtst-ETTh1-96-96 --data-dir ../shared/data

Many published long-horizon tables were computed by a test loader that drops the last partial
batch: with batch size B, the last ``n % B`` test windows (the latest ones in time) never count.
This reloads finished forecasting runs (``mambamixer forecast`` folders), predicts every test
window once, and reports the test MSE over all windows (this library's protocol) beside the MSE
the same predictions give when the last partial batch is dropped, for the batch sizes those code
bases use. It needs no training: each run is one pass over its test windows.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from mambamixer.tasks.forecast import load_forecast_run, predict_batch

BATCH_SIZES = (32, 64, 128, 256)


@torch.no_grad()
def window_errors(run_dir: Path, data_dir: str | None) -> tuple[dict, torch.Tensor]:
    """(run.json, per-window test MSE (n_windows,) in time order) of one run folder."""
    _, net, run, fd = load_forecast_run(run_dir, data_dir)
    net.eval()
    errors = []
    for batch in DataLoader(fd.test, batch_size=256, shuffle=False):
        pred, y = predict_batch(net, batch)
        errors.append((pred.float() - y).double().square().mean(dim=(1, 2)))
    return run, torch.cat(errors)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="forecast run folders")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=list(BATCH_SIZES))
    args = parser.parse_args()

    sizes = args.batch_sizes
    header = " | ".join(f"drop_last, batch {b}" for b in sizes)
    print(f"| run | windows | test MSE (all windows) | {header} |")
    print("|" + " --- |" * (3 + len(sizes)))
    for run_dir in args.runs:
        run, errors = window_errors(Path(run_dir), args.data_dir)
        n, full = len(errors), errors.mean().item()
        cells = []
        for b in sizes:
            kept = n - n % b if n >= b else n
            mse = errors[:kept].mean().item()
            cells.append(f"{mse:.4f} ({mse / full - 1:+.1%}, {n - kept} dropped)")
        name = f"{run['model_name']} {run['data']} L={run['seq_len']} H={run['horizon']}"
        print(f"| {name} | {n} | {full:.4f} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
