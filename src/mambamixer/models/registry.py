"""A timm-style model registry: sizes are registered functions that fill a config.

    model = create_model("tsm2", seq_len=96, horizon=96, n_vars=7)
    list_models(task="forecast")
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable
from typing import TypeVar

from torch import nn

_ENTRYPOINTS: dict[str, Callable[..., nn.Module]] = {}
_TASKS: dict[str, str] = {}
TASKS = ("forecast", "vision")

F = TypeVar("F", bound=Callable[..., nn.Module])


def register_model(task: str) -> Callable[[F], F]:
    """Decorator registering a builder ``fn(**overrides) -> nn.Module`` under its own name."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")

    def wrap(fn: F) -> F:
        name = fn.__name__
        if name in _ENTRYPOINTS:
            raise ValueError(f"model {name!r} is registered twice")
        _ENTRYPOINTS[name] = fn
        _TASKS[name] = task
        return fn

    return wrap


def _ensure_loaded() -> None:
    # Importing the families registers them; done lazily to keep `import mambamixer.ops` light.
    from mambamixer import models  # noqa: F401


def list_models(pattern: str | None = None, task: str | None = None) -> list[str]:
    """Registered model names, sorted; ``pattern`` is a shell-style wildcard."""
    _ensure_loaded()
    names = sorted(n for n in _ENTRYPOINTS if task is None or _TASKS[n] == task)
    return [n for n in names if pattern is None or fnmatch.fnmatch(n, pattern)]


def model_task(name: str) -> str:
    _ensure_loaded()
    _check_name(name)
    return _TASKS[name]


def _check_name(name: str) -> None:
    if name not in _ENTRYPOINTS:
        close = difflib.get_close_matches(name, _ENTRYPOINTS, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown model {name!r}.{hint} Known models: {', '.join(sorted(_ENTRYPOINTS))}")


def create_model(name: str, **overrides) -> nn.Module:
    """Build a registered model; keyword overrides win over the size's defaults."""
    _ensure_loaded()
    _check_name(name)
    return _ENTRYPOINTS[name](**overrides)
