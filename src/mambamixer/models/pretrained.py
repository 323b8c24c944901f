"""``save_pretrained`` / ``from_pretrained``, written once for every model family.

A saved model is a folder with ``config.json`` (the model class and its config dataclass) and
``model.safetensors`` (the weights), both written atomically.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, ClassVar

from mambamixer.io import atomic_write_json, load_state_dict, save_state_dict

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


class PretrainedMixin:
    """Mixin for ``nn.Module`` subclasses whose ``__init__`` takes one config dataclass."""

    config_class: ClassVar[type]
    config: Any

    def config_dict(self) -> dict[str, Any]:
        return {"model_class": type(self).__name__, "config": dataclasses.asdict(self.config)}

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        directory = Path(directory)
        save_state_dict(directory / WEIGHTS_NAME, self.state_dict())
        atomic_write_json(directory / CONFIG_NAME, self.config_dict())
        return directory

    @classmethod
    def from_config_dict(cls, blob: dict[str, Any]):
        if blob.get("model_class") != cls.__name__:
            raise ValueError(f"config describes a {blob.get('model_class')!r}, not a {cls.__name__}")
        fields = {f.name for f in dataclasses.fields(cls.config_class)}
        unknown = set(blob["config"]) - fields
        if unknown:
            raise ValueError(f"config has fields unknown to {cls.config_class.__name__}: {sorted(unknown)}")
        return cls(cls.config_class(**blob["config"]))

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike):
        directory = Path(directory)
        try:
            blob = json.loads((directory / CONFIG_NAME).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"cannot read {directory / CONFIG_NAME}: {err}") from err
        model = cls.from_config_dict(blob)
        state = load_state_dict(directory / WEIGHTS_NAME)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise ValueError(f"weights in {directory} do not fit {cls.__name__}: {err}") from err
        return model
