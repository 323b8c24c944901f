"""A small synthetic forecasting CSV: runs on it take a second, so resume and DDP tests stay fast."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset

from mambamixer import create_model
from mambamixer.data.forecast import load_forecast_data


def make_series_csv(path: Path, rows: int = 600, n_vars: int = 3) -> Path:
    """Hourly noisy sines; with seq_len 32 and horizon 12 the training split has 368 windows."""
    rng = np.random.default_rng(0)
    t = np.arange(rows)
    frame = pd.DataFrame({"date": pd.date_range("2020-01-01", periods=rows, freq="h"),
                          **{f"v{i}": np.sin(t / (5 + i)) + 0.1 * rng.standard_normal(rows) for i in range(n_vars)}})
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)
    return path


def etth1_validation_losses(name: str, data_dir: Path, steps: int = 41, **overrides) -> tuple[float, float]:
    """MSE of forecaster ``name`` (lookback 96, horizon 24) on 512 ETTh1 validation windows before and
    after ``steps`` AdamW steps (lr 1e-3, batch 32) on every 4th training window; seeded."""
    torch.manual_seed(0)
    data = load_forecast_data("ETTh1", seq_len=96, horizon=24, data_dir=data_dir)
    model = create_model(name, seq_len=96, horizon=24, n_vars=data.n_vars, n_marks=data.n_marks, **overrides)
    train = DataLoader(Subset(data.train, range(0, len(data.train), 4)), batch_size=32, shuffle=True)
    val_x, val_y, val_xm, val_ym = next(iter(DataLoader(data.val, batch_size=512, shuffle=True)))

    def val_loss() -> float:
        model.eval()
        with torch.no_grad():
            return F.mse_loss(model(val_x, val_xm, val_ym), val_y).item()

    before = val_loss()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    for step, (x, y, xm, ym) in enumerate(train):
        loss = F.mse_loss(model(x, xm, ym), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step == steps - 1:
            break
    return before, val_loss()
