"""PNG figures of a run, drawn with matplotlib's Agg canvas (no display, no global pyplot state).

matplotlib is imported inside the functions so importing the training core stays light.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

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
                         best_epoch: int | None = None, title: str | None = None,
                         metrics: Sequence[str] = ()) -> Path:
    """Train (and validation) loss per epoch; a dashed line marks the best epoch.

    ``metrics`` names further history entries (e.g. ``"val_top1"``) drawn in a second panel.
    """
    from matplotlib.ticker import MaxNLocator

    fig = _figure(10.0 if metrics else 6.0, 4.0)
    axes = fig.subplots(1, 2 if metrics else 1, squeeze=False)[0]
    epochs = [h["epoch"] for h in history]
    ax = axes[0]
    ax.plot(epochs, [h["train_loss"] for h in history], "o-", label="train loss")
    if any(h.get("val_loss") is not None for h in history):
        ax.plot(epochs, [h.get("val_loss") for h in history], "s-", label="validation loss")
    ax.set_ylabel("loss")
    for key in metrics:
        axes[1].plot(epochs, [h.get(key) for h in history], "s-", label=key.replace("_", " "))
    if metrics:
        axes[1].set_ylabel("metric")
    for ax in axes:
        if best_epoch:
            ax.axvline(best_epoch, color="grey", linestyle="--", label=f"best epoch ({best_epoch})")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    if metrics:
        fig.suptitle(title or "training curves")
    else:
        axes[0].set_title(title or "training curves")
    return _save(fig, path)


def plot_confusion_matrix(matrix: np.ndarray, classes: Sequence[str], path: str | os.PathLike,
                          title: str | None = None) -> Path:
    """Row-normalised confusion matrix (rows: true class, columns: predicted), counts written in the cells.

    ``matrix``: (classes, classes) counts. Cell numbers are left out beyond 30 classes.
    """
    n = len(classes)
    counts = np.asarray(matrix)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    side = min(max(4.0, 0.45 * n + 2.0), 30.0)
    fig = _figure(side + 1.0, side)
    ax = fig.add_subplot()
    im = ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, fraction=0.046, label="fraction of the true class")
    if n <= 30:
        ticks = np.arange(n)
        ax.set_xticks(ticks, [str(c) for c in classes], rotation=60, ha="right", fontsize=8)
        ax.set_yticks(ticks, [str(c) for c in classes], fontsize=8)
        for i in range(n):
            for j in range(n):
                if counts[i, j]:
                    ax.text(j, i, str(int(counts[i, j])), ha="center", va="center", fontsize=7,
                            color="white" if rates[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or "confusion matrix")
    return _save(fig, path)


def plot_image_grid(images: np.ndarray, true: Sequence[int], pred: Sequence[int], classes: Sequence[str],
                    path: str | os.PathLike, title: str | None = None, columns: int = 8) -> Path:
    """Images with their predicted and true labels; wrong predictions titled in red.

    ``images``: (n, height, width) grey or (n, height, width, 3) colour, values in [0, 1].
    Drawn as one mosaic in a single axes (32 separate axes take seconds to render).
    """
    images = np.clip(np.asarray(images, dtype=np.float32), 0.0, 1.0)
    if images.ndim == 3:
        images = np.repeat(images[..., None], 3, axis=3)
    n, h, w, _ = images.shape
    cols = min(columns, n)
    rows = -(-n // cols)
    pad, band = max(1, w // 8), h * 0.6  # between cells; space for the two label lines above each cell
    cell_h, cell_w = h + band + pad, w + pad
    mosaic = np.ones((int(np.ceil(rows * cell_h)), cols * cell_w, 3), dtype=np.float32)
    fig = _figure(1.6 * cols, 1.6 * cols * mosaic.shape[0] / mosaic.shape[1] + 0.5)
    ax = fig.add_subplot()
    for k in range(n):
        r, c = divmod(k, cols)
        top, left = int(round(r * cell_h + band)), c * cell_w
        mosaic[top:top + h, left:left + w] = images[k]
        ax.text(left + w / 2, top - band * 0.1, f"pred {classes[pred[k]]}\ntrue {classes[true[k]]}", ha="center",
                va="bottom", fontsize=7, color="black" if pred[k] == true[k] else "tab:red")
    ax.imshow(mosaic, interpolation="nearest")
    ax.axis("off")
    if title:
        ax.set_title(title)
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


def plot_future(history: pd.DataFrame, future: pd.DataFrame, path: str | os.PathLike, title: str | None = None) -> Path:
    """One panel per column: the recent ``history`` and the ``future`` forecast after it, against
    their timestamps (both DataFrames indexed by dates, in the data's units)."""
    columns = list(future.columns)
    fig = _figure(9.0, 1.9 * len(columns) + 0.6)
    axes = fig.subplots(len(columns), 1, squeeze=False, sharex=True)
    for ax, name in zip(axes[:, 0], columns, strict=True):
        ax.plot(history.index, history[name].to_numpy(), color="tab:gray", lw=1, label="history")
        joined = pd.concat([history[name].iloc[-1:], future[name]])  # the forecast line starts at the last value
        ax.plot(joined.index, joined.to_numpy(), color="tab:orange", lw=1.3, label="forecast")
        ax.axvline(history.index[-1], color="black", lw=0.5)
        ax.set_ylabel(str(name), fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0][0].legend(fontsize=7, loc="upper left")
    if title:
        fig.suptitle(title)
    return _save(fig, path)
