"""PNG figures of a run, drawn with matplotlib's Agg canvas (no display, no global pyplot state).

matplotlib is imported inside the functions so importing the training core stays light.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mambamixer.io import atomic_write


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: str | os.PathLike) -> Path:
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))


def plot_training_curves(history: Sequence[dict[str, Any]], path: str | os.PathLike,
                         best_epoch: int | None = None, title: str | None = None) -> Path:
    """Train (and validation) loss per epoch; a dashed line marks the best epoch."""
    fig = _figure(6.0, 4.0)
    ax = fig.add_subplot()
    epochs = [h["epoch"] for h in history]
    ax.plot(epochs, [h["train_loss"] for h in history], "o-", label="train loss")
    if any(h.get("val_loss") is not None for h in history):
        ax.plot(epochs, [h.get("val_loss") for h in history], "s-", label="validation loss")
    if best_epoch:
        ax.axvline(best_epoch, color="grey", linestyle="--", label=f"best epoch ({best_epoch})")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title(title or "training curves")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def plot_forecast(lookback: np.ndarray, truth: np.ndarray, forecast: np.ndarray, path: str | os.PathLike,
                  columns: Sequence[str] | None = None, window_ids: Sequence[int] | None = None,
                  title: str | None = None) -> Path:
    """A grid of forecasts: one row per window, one column per variate.

    ``lookback``: (windows, seq_len, variates); ``truth`` and ``forecast``: (windows, horizon,
    variates), all on the same (standardised) scale.
    """
    n_windows, seq_len, n_vars = lookback.shape
    horizon = truth.shape[1]
    fig = _figure(3.2 * n_vars + 0.5, 2.4 * n_windows + 0.5)
    axes = fig.subplots(n_windows, n_vars, squeeze=False)
    past = np.arange(-seq_len, 0)
    future = np.arange(horizon)
    for r in range(n_windows):
        for c in range(n_vars):
            ax = axes[r][c]
            ax.plot(past, lookback[r, :, c], color="tab:gray", lw=1, label="lookback")
            ax.plot(future, truth[r, :, c], color="tab:blue", lw=1, label="truth")
            ax.plot(future, forecast[r, :, c], color="tab:orange", lw=1.2, label="forecast")
            ax.axvline(0, color="black", lw=0.5)
            name = columns[c] if columns is not None else f"variate {c}"
            window = f"window {window_ids[r]}" if window_ids is not None else f"window {r}"
            ax.set_title(f"{name}, {window}", fontsize=9)
            ax.tick_params(labelsize=7)
    axes[0][0].legend(fontsize=7, loc="upper left")
    if title:
        fig.suptitle(title)
    return _save(fig, path)
