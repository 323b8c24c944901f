"""A small synthetic forecasting CSV: runs on it take a second, so resume and DDP tests stay fast."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def make_series_csv(path: Path, rows: int = 600, n_vars: int = 3) -> Path:
    """Hourly noisy sines; with seq_len 32 and horizon 12 the training split has 368 windows."""
    rng = np.random.default_rng(0)
    t = np.arange(rows)
    frame = pd.DataFrame({"date": pd.date_range("2020-01-01", periods=rows, freq="h"),
                          **{f"v{i}": np.sin(t / (5 + i)) + 0.1 * rng.standard_normal(rows) for i in range(n_vars)}})
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)
    return path
