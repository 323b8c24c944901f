"""DLinear (Zeng et al., "Are Transformers Effective for Time Series Forecasting?", AAAI 2023).

The lookback is split into a trend (moving average with replicate padding at both ends) and a
seasonal remainder; each part is mapped from seq_len to horizon by one linear layer over time,
and the two forecasts are summed. The maps are shared across variates unless ``individual``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mambamixer.models.contract import check_forecast_config, check_series
from mambamixer.models.pretrained import PretrainedMixin
from mambamixer.models.registry import register_model


@dataclass
class DLinearConfig:
    seq_len: int = 96
    horizon: int = 96
    n_vars: int = 7
    n_marks: int = 0  # calendar covariates: accepted and ignored
    kernel_size: int = 25  # moving-average window of the trend (odd)
    individual: bool = False  # one pair of linear maps per variate instead of shared ones


def moving_average(x: Tensor, kernel_size: int) -> Tensor:
    """Trend by a centred moving average, edges padded by repeating the first/last value.

    x: (batch, length, n_vars) -> (batch, length, n_vars).
    """
    pad = (kernel_size - 1) // 2
    x = torch.cat([x[:, :1].expand(-1, pad, -1), x, x[:, -1:].expand(-1, pad, -1)], dim=1)
    return F.avg_pool1d(x.transpose(1, 2), kernel_size, stride=1).transpose(1, 2)


class TimeLinear(nn.Module):
    """Linear map over time, (batch, n_vars, in_len) -> (batch, n_vars, out_len).

    One weight shared by all variates, or one per variate (``individual``). Weights start at
    1/in_len (each output step is the lookback mean), as in the official code.
    """

    def __init__(self, in_len: int, out_len: int, n_vars: int, individual: bool) -> None:
        super().__init__()
        n = n_vars if individual else 1
        bound = in_len**-0.5  # nn.Linear's default bias init
        self.weight = nn.Parameter(torch.full((n, in_len, out_len), 1.0 / in_len))
        self.bias = nn.Parameter(torch.empty(n, out_len).uniform_(-bound, bound))

    def forward(self, x: Tensor) -> Tensor:
        # (batch, n_vars, 1, in_len) @ (n or 1, in_len, out_len) -> (batch, n_vars, 1, out_len)
        return (x.unsqueeze(-2) @ self.weight).squeeze(-2) + self.bias


class DLinear(PretrainedMixin, nn.Module):
    config_class = DLinearConfig

    def __init__(self, config: DLinearConfig) -> None:
        super().__init__()
        check_forecast_config(config)
        if config.kernel_size < 1 or config.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd number, got {config.kernel_size}")
        self.config = config
        c = config
        self.seasonal = TimeLinear(c.seq_len, c.horizon, c.n_vars, c.individual)
        self.trend = TimeLinear(c.seq_len, c.horizon, c.n_vars, c.individual)

    def forward(self, x: Tensor, x_mark: Tensor | None = None, y_mark: Tensor | None = None) -> Tensor:
        """x: (batch, seq_len, n_vars) -> (batch, horizon, n_vars); marks are ignored."""
        check_series(self, x)
        trend = moving_average(x, self.config.kernel_size)
        seasonal = x - trend
        # (batch, n_vars, seq_len) -> (batch, n_vars, horizon) for each part
        y = self.seasonal(seasonal.transpose(1, 2)) + self.trend(trend.transpose(1, 2))
        return y.transpose(1, 2)


@register_model(task="forecast")
def dlinear(**overrides) -> DLinear:
    """DLinear, kernel 25, maps shared across variates (the paper's default)."""
    return DLinear(DLinearConfig(**overrides))
