"""Run under ``torchrun --nproc-per-node 2`` by test_distributed.py: several short CLI runs in one
launch (starting the processes is what costs), their exit codes written to ``OUT/exit_codes.json``.

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/ddp_driver.py OUT CSV FOLDER
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from mambamixer.cli import main
from mambamixer.training.trainer import STOP_AFTER_ENV


def forecast_args(model: str, csv: str, out: Path, *extra: str) -> list[str]:
    return ["forecast", "--model", model, "--data", csv, "--horizon", "12", "--seq-len", "32", "--epochs", "2",
            "--batch-size", "16", "--patience", "0", "--out", str(out), "--quiet", *extra]


CLASSIFY = ["classify", "--model", "vit_test", "--data", "digits", "--epochs", "2", "--batch-size", "16", "--lr",
            "3e-3", "--warmup-epochs", "0", "--limit-train", "128", "--limit-eval", "64", "--quiet"]
SOS_TINY = ("--set", "switch_of_scans=true", "--set", "dims=[8,16,32]", "--set", "channel_widths=[16,32,64]",
            "--set", "depths=[1,1,1]", "--set", "channel_counts=[0,1,1]")
TSM2_TINY = ("--set", "d_model=16", "--set", "n_blocks=1")  # dropout 0.2 stays on: per-rank RNG streams


def folder_tta_args(folder: str, out: Path) -> list[str]:
    """A one-epoch ImageFolder run scored with flip test-time augmentation (equal on one process and two)."""
    return ["classify", "--model", "vit_test", "--data", folder, "--epochs", "1", "--batch-size", "8",
            "--warmup-epochs", "0", "--no-augment", "--set", "dropout=0", "--set", "patch_size=2", "--tta", "flip",
            "--quiet", "--out", str(out)]


def folder_stream_args(folder: str, out: Path) -> list[str]:
    """A two-epoch run of the streamed ImageFolder, one DataLoader worker a process (equal on one process and two)."""
    return ["classify", "--model", "vit_test", "--data", folder, "--img-size", "8", "--data-mode", "stream",
            "--workers", "1", "--epochs", "2", "--batch-size", "8", "--warmup-epochs", "0", "--no-augment", "--set",
            "dropout=0", "--set", "patch_size=2", "--quiet", "--out", str(out)]


def run_all(out: Path, csv: str, folder: str) -> dict[str, int]:
    codes = {
        # equivalence with one process: no dropout, no augmentation, no BatchNorm
        "forecast": main(forecast_args("dlinear", csv, out / "forecast")),
        "classify": main([*CLASSIFY, "--no-augment", "--set", "dropout=0", "--out", str(out / "classify")]),
        # Switch of Scans: 8 images a process, 2 of 8 scans each, so most steps leave a scan unchosen
        "switch_of_scans": main([*CLASSIFY, "--model", "vim2_femto", "--out", str(out / "switch_of_scans"),
                                 *SOS_TINY]),
        # test-time augmentation on each rank's share of the test images, the sums all-reduced
        "tta": main(folder_tta_args(folder, out / "tta")),
        # the streamed ImageFolder: each rank decodes only its shard
        "stream": main(folder_stream_args(folder, out / "stream")),
        # exact resume across processes, with dropout
        "uninterrupted": main(forecast_args("tsm2", csv, out / "uninterrupted", *TSM2_TINY)),
    }
    os.environ[STOP_AFTER_ENV] = "30"  # epoch 2, step 7 (23 steps an epoch)
    codes["stopped"] = main(forecast_args("tsm2", csv, out / "resumed", *TSM2_TINY))
    del os.environ[STOP_AFTER_ENV]
    codes["resumed"] = main(forecast_args("tsm2", csv, out / "resumed", *TSM2_TINY, "--resume"))
    return codes


if __name__ == "__main__":
    out_dir, data, images = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    result = run_all(out_dir, data, images)
    if os.environ.get("RANK") == "0":
        (out_dir / "exit_codes.json").write_text(json.dumps(result))
