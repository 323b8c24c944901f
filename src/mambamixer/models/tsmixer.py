"""TSMixer (Chen, Li, Arik, Yoder, Pfister, "TSMixer: An All-MLP Architecture for Time Series
Forecasting", TMLR 2023), the basic multivariate model with reversible instance normalisation.

    x (batch, seq_len, n_vars)
    -> RevIN (per instance and variate, over time)
    -> n_blocks x [time mixing:    norm over (time, variate) -> Linear(seq_len -> seq_len) + ReLU
                                    on each variate's series -> dropout -> + residual,
                   feature mixing: norm over (time, variate) -> Linear(n_vars -> ff_dim) + ReLU
                                    -> dropout -> Linear(ff_dim -> n_vars) -> dropout -> + residual
                                    on each time step]
    -> Linear(seq_len -> horizon) on each variate's series -> RevIN de-normalisation

The norm is the official code's BatchNormalization(axis=[-2, -1]) (statistics per (time step,
variate) over the batch), or LayerNorm over the (time, variate) plane with ``norm="layer"``.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from mambamixer.layers.normalization import RevIN
from mambamixer.models.contract import check_forecast_config, check_series
from mambamixer.models.pretrained import PretrainedMixin
from mambamixer.models.registry import register_model


@dataclass
class TSMixerConfig:
    seq_len: int = 96
    horizon: int = 96
    n_vars: int = 7
    n_marks: int = 0  # calendar covariates: accepted and ignored (the basic TSMixer has none)
    # the official scripts' ETTm2 configuration, also neuralforecast's defaults
    n_blocks: int = 2
    ff_dim: int = 64
    dropout: float = 0.9
    norm: str = "batch"  # "batch" (the official default) or "layer"
    revin_affine: bool = True


class PlaneNorm(nn.Module):
    """Normalisation over the (time, variate) plane of (batch, seq_len, n_vars): BatchNorm with
    statistics per (time step, variate) over the batch, or LayerNorm over the whole plane."""

    def __init__(self, kind: str, seq_len: int, n_vars: int) -> None:
        super().__init__()
        if kind not in ("batch", "layer"):
            raise ValueError(f"TSMixerConfig.norm must be 'batch' or 'layer', got {kind!r}")
        self.norm = nn.BatchNorm1d(seq_len * n_vars) if kind == "batch" else nn.LayerNorm([seq_len, n_vars])

    def forward(self, x: Tensor) -> Tensor:
        if isinstance(self.norm, nn.BatchNorm1d):  # its features are the flattened plane
            return self.norm(x.flatten(1)).view_as(x)
        return self.norm(x)


class MixerBlock(nn.Module):
    """One TSMixer block: an MLP over time, then an MLP over variates, each residual.
    (batch, seq_len, n_vars) -> same."""

    def __init__(self, c: TSMixerConfig) -> None:
        super().__init__()
        self.time_norm = PlaneNorm(c.norm, c.seq_len, c.n_vars)
        self.time_linear = nn.Linear(c.seq_len, c.seq_len)
        self.feature_norm = PlaneNorm(c.norm, c.seq_len, c.n_vars)
        self.feature_mlp = nn.Sequential(
            nn.Linear(c.n_vars, c.ff_dim), nn.ReLU(), nn.Dropout(c.dropout), nn.Linear(c.ff_dim, c.n_vars),
        )  # fmt: skip
        self.dropout = nn.Dropout(c.dropout)

    def forward(self, x: Tensor) -> Tensor:
        mixed = self.time_linear(self.time_norm(x).transpose(1, 2)).relu().transpose(1, 2)
        x = x + self.dropout(mixed)
        return x + self.dropout(self.feature_mlp(self.feature_norm(x)))


class TSMixer(PretrainedMixin, nn.Module):
    config_class = TSMixerConfig

    def __init__(self, config: TSMixerConfig) -> None:
        super().__init__()
        check_forecast_config(config)
        c = self.config = config
        if c.n_blocks < 1 or c.ff_dim < 1 or not 0.0 <= c.dropout < 1.0:
            raise ValueError(f"TSMixerConfig needs n_blocks >= 1, ff_dim >= 1 and 0 <= dropout < 1, got "
                             f"{c.n_blocks}, {c.ff_dim}, {c.dropout}")  # fmt: skip
        self.revin = RevIN(c.n_vars, affine=c.revin_affine)
        self.blocks = nn.Sequential(*(MixerBlock(c) for _ in range(c.n_blocks)))
        self.head = nn.Linear(c.seq_len, c.horizon)

    def forward(self, x: Tensor, x_mark: Tensor | None = None, y_mark: Tensor | None = None) -> Tensor:
        """x: (batch, seq_len, n_vars) -> (batch, horizon, n_vars); marks are ignored."""
        check_series(self, x)
        z, stats = self.revin.normalize(x)
        y = self.head(self.blocks(z).transpose(1, 2)).transpose(1, 2)
        return self.revin.denormalize(y, stats)


@register_model(task="forecast")
def tsmixer(**overrides) -> TSMixer:
    """TSMixer with RevIN: 2 blocks, ff_dim 64, dropout 0.9, BatchNorm (the official ETTm2 script)."""
    return TSMixer(TSMixerConfig(**overrides))
