"""Checkpoints: a folder that describes itself and rebuilds its model by registered name.

    checkpoint/
      model.safetensors   weights (save_pretrained)
      config.json         {"model_class": ..., "config": {...}} (save_pretrained)
      run.json            {"model_name": ..., task config and hyper-parameters}

Every file is written atomically through :mod:`mambamixer.io`; ``run.json`` is written last.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from torch import nn

from mambamixer.io import atomic_write_json, load_state_dict
from mambamixer.models.pretrained import CONFIG_NAME, WEIGHTS_NAME
from mambamixer.models.registry import create_model

RUN_NAME = "run.json"


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


def load_checkpoint(directory: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model of a checkpoint folder (on CPU, in eval mode); returns ``(model, run)``.

    A missing, truncated, corrupt or mismatched checkpoint raises ``ValueError``.
    """
    directory = Path(directory)
    run = read_run(directory)
    blob = _read_json(directory / CONFIG_NAME)
    config = blob.get("config")
    if not isinstance(config, dict):
        raise ValueError(f"{directory / CONFIG_NAME} has no 'config' object")
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
