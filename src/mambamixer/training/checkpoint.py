"""Checkpoints: a folder that describes itself and rebuilds its model by registered name.

    checkpoint/
      model.safetensors   weights (save_pretrained)
      config.json         {"model_class": ..., "config": {...}} (save_pretrained)
      run.json            {"model_name": ..., task config and hyper-parameters}

Every file is written atomically through :mod:`mambamixer.io`; ``run.json`` is written last.

Beside it, a run folder holds ``train_state.pt``: what ``--resume`` needs to continue a run
exactly (the last weights, the best weights, optimiser, epoch and step, early-stopping
counters, history, every RNG state), written with ``torch.save`` to a temporary file and
renamed, read back with ``torch.load(weights_only=True)`` only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mambamixer.io import atomic_write, atomic_write_json, load_state_dict
from mambamixer.models.pretrained import CONFIG_NAME, WEIGHTS_NAME
from mambamixer.models.registry import create_model

RUN_NAME = "run.json"
STATE_NAME = "train_state.pt"
STATE_FORMAT = 1  # bump when the layout of train_state.pt changes
STATE_KEYS = ("format", "model", "optimizer", "epoch", "step", "step_in_epoch", "best_val", "best_epoch",
              "bad_epochs", "history", "rng", "finished")


def save_checkpoint(directory: str | os.PathLike, model: nn.Module, run: dict[str, Any]) -> Path:
    """Save ``model`` with ``save_pretrained`` plus ``run.json``; ``run["model_name"]`` is required."""
    if not run.get("model_name"):
        raise ValueError("run must name the registered model ('model_name') to be reloadable")
    if not hasattr(model, "save_pretrained"):
        raise TypeError(f"{type(model).__name__} has no save_pretrained (add PretrainedMixin)")
    directory = Path(directory)
    model.save_pretrained(directory)
    atomic_write_json(directory / RUN_NAME, run)
    return directory


def _read_json(path: Path) -> dict[str, Any]:
    try:
        blob = json.loads(path.read_text())
    except FileNotFoundError as err:
        raise ValueError(f"checkpoint file {path} is missing") from err
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot read {path}: {err}") from err
    if not isinstance(blob, dict):
        raise ValueError(f"{path} does not hold a JSON object")
    return blob


def read_run(directory: str | os.PathLike) -> dict[str, Any]:
    """The ``run.json`` of a checkpoint folder."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ValueError(f"no checkpoint folder at {directory}")
    run = _read_json(directory / RUN_NAME)
    if not isinstance(run.get("model_name"), str):
        raise ValueError(f"{directory / RUN_NAME} does not name a model ('model_name')")
    return run


def read_config(directory: str | os.PathLike) -> dict[str, Any]:
    """The ``config.json`` of a saved model: ``{"model_class": ..., "config": {...}}``."""
    path = Path(directory) / CONFIG_NAME
    blob = _read_json(path)
    if not isinstance(blob.get("config"), dict):
        raise ValueError(f"{path} has no 'config' object")
    return blob


def load_checkpoint(directory: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model of a checkpoint folder (on CPU, in eval mode); returns ``(model, run)``.

    A missing, truncated, corrupt or mismatched checkpoint raises ``ValueError``.
    """
    directory = Path(directory)
    run = read_run(directory)
    blob = read_config(directory)
    config = blob["config"]
    name = run["model_name"]
    try:
        model = create_model(name, **config)
    except TypeError as err:
        raise ValueError(f"the config in {directory} does not fit model {name!r}: {err}") from err
    if blob.get("model_class") not in (None, type(model).__name__):
        raise ValueError(f"{directory / CONFIG_NAME} describes a {blob['model_class']}, "
                         f"but model {name!r} builds a {type(model).__name__}")
    state = load_state_dict(directory / WEIGHTS_NAME)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"the weights in {directory} do not fit model {name!r}: {err}") from err
    model.eval()
    return model, run


def plain(obj: Any) -> Any:
    """``obj`` as JSON would give it back (str subclasses, paths and tuples become str and lists), so
    that a training state's metadata loads with ``weights_only=True`` and compares as written."""
    return json.loads(json.dumps(obj, default=str))


def save_train_state(path: str | os.PathLike, blob: dict[str, Any]) -> Path:
    """Write a training state (``torch.save``) to a temporary file and rename it onto ``path``."""
    return atomic_write(path, lambda tmp: torch.save(blob, tmp))


def load_train_state(path: str | os.PathLike) -> dict[str, Any]:
    """Read a training state with ``torch.load(weights_only=True)`` (no code runs on load).

    A missing, truncated, corrupt or foreign file raises ``ValueError`` naming ``path``.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"nothing to resume: no training state at {path} (it is written at the end of each epoch "
                         f"and when a run is interrupted)")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # zip, pickle and unpickler-allow-list errors all mean an unusable file
        lines = str(err).splitlines() or [type(err).__name__]
        reason = next((ln.strip() for ln in lines if "WeightsUnpickler error" in ln), lines[0])
        raise ValueError(f"training state {path} is truncated, corrupt or not a plain tensor file "
                         f"({reason})") from err
    if not isinstance(blob, dict) or blob.get("format") != STATE_FORMAT:
        raise ValueError(f"{path} is not a mambamixer training state (format {STATE_FORMAT})")
    missing = [k for k in STATE_KEYS if k not in blob]
    if missing:
        raise ValueError(f"training state {path} lacks {missing}")
    return blob
