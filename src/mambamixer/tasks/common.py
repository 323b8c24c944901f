"""Helpers every task shares: argument checks, the output folder, device choice, peak memory,
and finding a run's checkpoint (``mambamixer evaluate`` dispatches on its task)."""

from __future__ import annotations

import os
import resource
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from mambamixer.training.checkpoint import read_run


def check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def data_label(data: str) -> str:
    """A short name for a dataset argument: a file or folder path gives its stem, a name stays."""
    if os.sep in data or data.lower().endswith(".csv"):
        return Path(data.rstrip(os.sep)).stem or "data"
    return data


def check_out_possible(out: Path) -> None:
    """Fail early, without creating anything, when ``out`` clearly cannot be written."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"output path {out} exists and is not a folder")
    parent = out
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"cannot create output folder {out}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"cannot create output folder {out}: {parent} is not writable")


def prepare_out(out: Path) -> None:
    """Create ``out`` and prove a file can be written there."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as err:
        raise ValueError(f"cannot write to output folder {out}: {err.strerror or err}") from err


def pick_device(device: str | torch.device | None) -> torch.device:
    """``device`` if given, else CUDA when available, else CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def peak_memory_mb(device: torch.device) -> float:
    """CUDA: the peak of allocated tensors; CPU: the process's max resident set (data and Python included)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def find_checkpoint(run_dir: str | os.PathLike) -> Path:
    """The checkpoint folder of a run folder (``RUN/checkpoint``), or ``run_dir`` itself if it is one."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise FileNotFoundError(f"no run folder at {run_dir}")
    return run_dir / "checkpoint" if (run_dir / "checkpoint").is_dir() else run_dir


def run_task(run_dir: str | os.PathLike) -> str:
    """The task (``"forecast"`` or ``"classify"``) that wrote a run folder; old runs without one are forecasts."""
    return str(read_run(find_checkpoint(run_dir)).get("task", "forecast"))
