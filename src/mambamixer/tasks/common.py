"""Helpers every task shares: argument checks, the output folder, resuming, device choice, peak
memory, and finding a run's checkpoint (``mambamixer evaluate`` dispatches on its task)."""

from __future__ import annotations

import os
import resource
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from mambamixer.training.checkpoint import STATE_NAME, load_checkpoint, load_train_state, plain, read_run

# Settings a resumed run may change: where it runs, where the data lives, and how the test set is scored
# (test-time augmentation), not what it trains.
RESUME_MAY_DIFFER = ("device", "processes", "torch_version", "data_dir", "data_file", "tta")


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


def prepare_out(out: Path, note: bool = False) -> None:
    """Create ``out`` and prove a file can be written there; with ``note``, say when a previous run's
    training state there is about to be replaced (a fresh start, not a resume)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as err:
        raise ValueError(f"cannot write to output folder {out}: {err.strerror or err}") from err
    if note and (out / STATE_NAME).is_file():
        print(f"note: starting afresh; {out / STATE_NAME} of the previous run will be replaced "
              f"(--resume continues it instead)", file=sys.stderr)


def check_resumable(out: Path) -> None:
    """Fail early when there is no training state in ``out`` to resume from."""
    if not (out / STATE_NAME).is_file():
        raise ValueError(f"nothing to resume: {out / STATE_NAME} does not exist (a run writes it at the end of "
                         f"each epoch and when interrupted); drop --resume to start a new run")


def _differences(then: dict[str, Any], now: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(then) | set(now)):
        a, b = then.get(key), now.get(key)
        if (not prefix and key in RESUME_MAY_DIFFER) or a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key} {a!r} then, {b!r} now")
    return out


def resume_state(out: Path, run: dict[str, Any], name: str = STATE_NAME) -> dict[str, Any]:
    """The training state ``out / name``, after checking that it was written by a run with the settings
    of ``run`` (model, data, shapes, seed, hyper-parameters); anything else raises ``ValueError``."""
    path = out / name
    blob = load_train_state(path)
    meta = blob.get("meta")
    then = meta.get("run") if isinstance(meta, dict) else None
    if not isinstance(then, dict):
        raise ValueError(f"{path} does not record the settings of the run that wrote it")
    diff = _differences(then, plain(run))
    if diff:
        raise ValueError(f"cannot resume from {path}: it was written by a run with other settings "
                         f"({'; '.join(diff)}); give the same arguments, or drop --resume to start afresh")
    return blob


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
    if (run_dir / "checkpoint").is_dir():
        return run_dir / "checkpoint"
    if run_dir.is_dir() and not any((run_dir / name).exists() for name in ("run.json", "config.json")):
        raise ValueError(f"{run_dir} is not a run folder: it holds no checkpoint/ (a run of `mambamixer forecast` "
                         f"or `classify` writes one) and is not a checkpoint folder itself")
    return run_dir


def run_task(run_dir: str | os.PathLike) -> str:
    """The task (``"forecast"`` or ``"classify"``) that wrote a run folder; old runs without one are forecasts."""
    return str(read_run(find_checkpoint(run_dir)).get("task", "forecast"))


def load_run_checkpoint(run_dir: str | os.PathLike, task: str, what: str,
                        required: tuple[str, ...]) -> tuple[Path, torch.nn.Module, dict[str, Any]]:  # fmt: skip
    """``(checkpoint folder, model, run.json)`` of a run written by ``task``, with ``required`` keys present.

    ``what`` names the task in the error for a run of another task; old runs without a task are forecasts.
    """
    ckpt = find_checkpoint(run_dir)
    net, run = load_checkpoint(ckpt)
    if run.get("task", "forecast") != task:
        raise ValueError(f"{ckpt} is a {run.get('task', 'forecast')} run, not {what}")
    for key in required:
        if key not in run:
            raise ValueError(f"{ckpt / 'run.json'} lacks {key!r}")
    return ckpt, net, run
