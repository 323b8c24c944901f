"""iTransformer (Liu et al., "iTransformer: Inverted Transformers Are Effective for Time Series
Forecasting", ICLR 2024).

The Transformer is applied on the inverted dimension: every variate's whole lookback is embedded
as one token (a linear map seq_len -> d_model), so attention mixes variates and the feed-forward
network acts on each variate's series representation. Calendar covariates, when given, become
extra tokens through the same embedding. The n_vars variate tokens are projected to the horizon;
the covariate tokens are dropped. Series are normalised per instance (RevIN without affine, as the
non-stationary normalisation of the official code).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mambamixer.layers.attention import TransformerEncoder
from mambamixer.layers.normalization import RevIN
from mambamixer.models.contract import check_forecast_config, check_series
from mambamixer.models.pretrained import PretrainedMixin
from mambamixer.models.registry import register_model


@dataclass
class ITransformerConfig:
    seq_len: int = 96
    horizon: int = 96
    n_vars: int = 7
    n_marks: int = 0  # calendar covariate columns, each embedded as one extra token
    d_model: int = 256
    n_heads: int = 8
    n_layers: int = 2
    d_ff: int = 256
    dropout: float = 0.1  # embedding, attention probabilities, residual and feed-forward dropout
    use_norm: bool = True  # instance normalisation of the inputs, undone on the outputs


class ITransformer(PretrainedMixin, nn.Module):
    config_class = ITransformerConfig

    def __init__(self, config: ITransformerConfig) -> None:
        super().__init__()
        c = config
        check_forecast_config(c)
        self.config = config
        self.revin = RevIN(c.n_vars, affine=False) if c.use_norm else None
        self.embed = nn.Linear(c.seq_len, c.d_model)
        self.dropout = nn.Dropout(c.dropout)
        self.encoder = TransformerEncoder(
            c.n_layers,
            c.d_model,
            c.n_heads,
            c.d_ff,
            dropout=c.dropout,
            attn_dropout=c.dropout,
            norm="layer",
            final_norm=True,
        )
        self.head = nn.Linear(c.d_model, c.horizon)

    def forward(self, x: Tensor, x_mark: Tensor | None = None, y_mark: Tensor | None = None) -> Tensor:
        """x: (batch, seq_len, n_vars), x_mark: (batch, seq_len, n_marks) -> (batch, horizon, n_vars).

        ``x_mark`` is used when ``n_marks > 0`` and it is given; without it the model attends over
        the variate tokens only (as the official code does). ``y_mark`` is ignored.
        """
        check_series(self, x)
        n_vars = self.config.n_vars
        if self.revin is not None:
            x, stats = self.revin.normalize(x)
        tokens = x
        if self.config.n_marks > 0 and x_mark is not None:
            if x_mark.shape[-1] != self.config.n_marks:
                raise ValueError(f"x_mark has {x_mark.shape[-1]} columns, n_marks is {self.config.n_marks}")
            tokens = torch.cat([x, x_mark.to(x.dtype)], dim=-1)  # (batch, seq_len, n_vars + n_marks)
        z = self.dropout(self.embed(tokens.transpose(1, 2)))  # (batch, tokens, d_model)
        z = self.encoder(z)
        y = self.head(z)[:, :n_vars].transpose(1, 2)  # (batch, horizon, n_vars)
        if self.revin is not None:
            y = self.revin.denormalize(y, stats)
        return y


@register_model(task="forecast")
def itransformer(**overrides) -> ITransformer:
    """The official ETTh1 script at lookback 96: 2 layers, d_model 256, d_ff 256, 8 heads, dropout 0.1."""
    return ITransformer(ITransformerConfig(**overrides))
