"""PatchTST (Nie et al., "A Time Series is Worth 64 Words", ICLR 2023), supervised, channel-independent.

Each variate is handled alone by the same network: RevIN, cut the lookback into overlapping
patches (the series is first padded at the end by repeating its last value ``stride`` times),
embed each patch linearly, add a learned positional embedding, run a post-norm Transformer
encoder with BatchNorm and residual attention, flatten all patch tokens and map them linearly to
the horizon.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mambamixer.layers.attention import TransformerEncoder
from mambamixer.layers.normalization import RevIN
from mambamixer.layers.patching import n_patches, patchify
from mambamixer.models.contract import check_forecast_config, check_series
from mambamixer.models.pretrained import PretrainedMixin
from mambamixer.models.registry import register_model


@dataclass
class PatchTSTConfig:
    seq_len: int = 96
    horizon: int = 96
    n_vars: int = 7
    n_marks: int = 0  # calendar covariates: accepted and ignored
    patch_len: int = 16
    stride: int = 8
    pad_end: bool = True  # replicate the last value `stride` times, giving one more patch
    d_model: int = 16
    n_heads: int = 4
    n_layers: int = 3
    d_ff: int = 128
    dropout: float = 0.3  # embedding, attention output, residual and feed-forward dropout
    attn_dropout: float = 0.0  # on the attention probabilities
    head_dropout: float = 0.0
    norm: str = "batch"  # "batch" (the paper) or "layer"
    residual_attention: bool = True  # add the previous layer's attention scores (official code)
    revin: bool = True
    revin_affine: bool = False  # the official scripts' default (--affine 0)

    @property
    def n_patches(self) -> int:
        return n_patches(self.seq_len, self.patch_len, self.stride, self.pad_end)


class PatchTST(PretrainedMixin, nn.Module):
    config_class = PatchTSTConfig

    def __init__(self, config: PatchTSTConfig) -> None:
        super().__init__()
        c = config
        check_forecast_config(c)
        if c.seq_len < c.patch_len:
            raise ValueError(f"seq_len ({c.seq_len}) must be at least patch_len ({c.patch_len})")
        self.config = config
        self.revin = RevIN(c.n_vars, affine=c.revin_affine) if c.revin else None
        self.patch_embed = nn.Linear(c.patch_len, c.d_model)
        self.pos_embed = nn.Parameter(torch.empty(c.n_patches, c.d_model).uniform_(-0.02, 0.02))
        self.dropout = nn.Dropout(c.dropout)
        self.encoder = TransformerEncoder(
            c.n_layers,
            c.d_model,
            c.n_heads,
            c.d_ff,
            dropout=c.dropout,
            attn_dropout=c.attn_dropout,
            proj_dropout=c.dropout,
            norm=c.norm,
            residual_scores=c.residual_attention,
        )
        self.head = nn.Linear(c.d_model * c.n_patches, c.horizon)
        self.head_dropout = nn.Dropout(c.head_dropout)

    def forward(self, x: Tensor, x_mark: Tensor | None = None, y_mark: Tensor | None = None) -> Tensor:
        """x: (batch, seq_len, n_vars) -> (batch, horizon, n_vars); marks are ignored."""
        check_series(self, x)
        c = self.config
        batch, _, n_vars = x.shape
        if self.revin is not None:
            x, stats = self.revin.normalize(x)
        z = patchify(x.transpose(1, 2), c.patch_len, c.stride, c.pad_end)  # (batch, n_vars, n_patches, patch_len)
        z = self.patch_embed(z).reshape(batch * n_vars, c.n_patches, c.d_model)
        z = self.encoder(self.dropout(z + self.pos_embed))  # (batch * n_vars, n_patches, d_model)
        # flatten d_model-major, as the official head does: (batch, n_vars, d_model * n_patches)
        z = z.reshape(batch, n_vars, c.n_patches, c.d_model).transpose(2, 3).flatten(2)
        y = self.head_dropout(self.head(z)).transpose(1, 2)  # (batch, horizon, n_vars)
        if self.revin is not None:
            y = self.revin.denormalize(y, stats)
        return y

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed"}


@register_model(task="forecast")
def patchtst(**overrides) -> PatchTST:
    """The paper's ETTh1 hyperparameters: 3 layers, d_model 16, 4 heads, d_ff 128, dropout 0.3."""
    return PatchTST(PatchTSTConfig(**overrides))


@register_model(task="forecast")
def patchtst_128(**overrides) -> PatchTST:
    """The paper's size for the larger data sets (Weather, Traffic, Electricity), also neuralforecast's
    default PatchTST: 3 layers, d_model 128, 16 heads, d_ff 256, dropout 0.2."""
    return PatchTST(PatchTSTConfig(**{"d_model": 128, "n_heads": 16, "d_ff": 256, "dropout": 0.2, **overrides}))
