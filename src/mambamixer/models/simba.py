"""SiMBA (Patro and Agneeswaran, "SiMBA: Simplified Mamba-based Architecture for Vision and
Multivariate Time series", arXiv 2403.15360): Mamba for the tokens, EinFFT for the channels.

One block serves both tasks:

    x = x + Mamba(LN(x))       sequence mixing: the existing SelectiveMixer (Mamba's block)
    x = x + EinFFT(LN(x))      channel mixing in the frequency domain (layers/einfft.py)

Vision (``simba_s``, ``simba_b``, ``simba_l``, ``simba_nano``), as the authors' released
classification code:

    image (batch, in_chans, H, W)
    -> stem: 7x7 conv s2 -> BN/ReLU -> (3x3 conv -> BN/ReLU) x 2 -> 3x3 conv s2 -> LN   (batch, H/4, W/4, dims[0])
    -> 4 stages: [3x3 conv s2 + LN, stages 2-4] + SiMBA blocks over the row-major tokens (+ LN, stages 1-3)
    -> head: a mean-pooled class token refined by one more SiMBA block -> LN -> Linear

Forecasting (``simba``), on the PatchTST code base as the paper did: RevIN, each variate cut
into patches and embedded alone (channel independence), SiMBA blocks over the patches of each
series, a flatten-linear head to the horizon, RevIN de-normalisation.

The choices the paper leaves open are in docs/mambaout_simba.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor, nn

from mambamixer.layers.classifier_head import ClassifierHead
from mambamixer.layers.conv_downsample import ConvDownsample
from mambamixer.layers.drop_path import DropPath, drop_path_rates
from mambamixer.layers.einfft import EinFFT
from mambamixer.layers.normalization import RevIN
from mambamixer.layers.patching import n_patches, patchify
from mambamixer.layers.scan_order import ORDERS_1D
from mambamixer.layers.selective_mixer import SelectiveMixer
from mambamixer.models.contract import check_forecast_config, check_series
from mambamixer.models.hierarchical import HierarchicalBackbone
from mambamixer.models.pretrained import PretrainedMixin
from mambamixer.models.registry import register_model


@dataclass
class SiMBAConfig:
    """SiMBA for images. The defaults are SiMBA-S."""

    dims: tuple[int, ...] = (64, 128, 320, 448)
    depths: tuple[int, ...] = (3, 4, 6, 3)
    stem_hidden: int = 32  # width of the stem's three convs before its projection to dims[0]
    num_classes: int = 1000  # 0: no classifier, the head returns the refined class token
    in_chans: int = 3
    # stride of the stem (4, 2 or 1), then of each later stage's down-sampling (2 or 1)
    strides: tuple[int, ...] = (4, 2, 2, 2)
    d_state: int = 64  # Mamba, as released: d_state 64, d_conv 4, expand 2
    d_conv: int = 4
    expand: float = 2
    scan_orders: tuple[str, ...] = ("forward",)  # over the row-major tokens; ("forward", "reverse"): bidirectional
    einfft_blocks: int = 4
    sparsity_threshold: float = 0.01  # EinFFT's soft-shrinkage
    einfft_activation: str = "relu"
    fft_over_blocks: bool = False  # True: the released code's 2D FFT over tokens and channel blocks
    drop_path_rate: float = 0.0
    head_dropout: float = 0.0
    norm_eps: float = 1e-5
    features_only: bool = False
    out_indices: tuple[int, ...] = (0, 1, 2, 3)

    def __post_init__(self) -> None:
        for name in ("dims", "depths", "strides", "scan_orders", "out_indices"):  # JSON gives lists back
            setattr(self, name, tuple(getattr(self, name)))


@dataclass
class SiMBAForecastConfig:
    """SiMBA for multivariate forecasting, channel-independent over patches (PatchTST code base)."""

    seq_len: int = 96
    horizon: int = 96
    n_vars: int = 7
    n_marks: int = 0  # calendar covariates: accepted and ignored (the paper uses none)
    patch_len: int = 16
    stride: int = 8
    pad_end: bool = True  # replicate the last value `stride` times, giving one more patch (PatchTST)
    d_model: int = 32
    n_blocks: int = 2
    d_state: int = 16
    d_conv: int = 4
    expand: float = 2
    scan_orders: tuple[str, ...] = ("forward",)  # causal over the patches
    einfft_blocks: int = 4
    sparsity_threshold: float = 0.01
    einfft_activation: str = "relu"
    fft_over_blocks: bool = False
    dropout: float = 0.2  # on the embedded patches and on each block's two branches
    head_dropout: float = 0.0
    norm_eps: float = 1e-5
    revin_affine: bool = True

    def __post_init__(self) -> None:
        self.scan_orders = tuple(self.scan_orders)

    @property
    def n_patches(self) -> int:
        return n_patches(self.seq_len, self.patch_len, self.stride, self.pad_end)


# ------------------------------------------------------------------------------------------- blocks


class SiMBABlock(nn.Module):
    """x + Mamba(LN(x)), then x + EinFFT(LN(x)): (batch, length, dim) -> (batch, length, dim).

    ``config`` is either config above; the block reads only the mixing fields they share.
    """

    def __init__(self, dim: int, config: SiMBAConfig | SiMBAForecastConfig, drop_path: float = 0.0,
                 dropout: float = 0.0) -> None:
        super().__init__()
        c = config
        self.norm1 = nn.LayerNorm(dim, eps=c.norm_eps)
        self.mamba = SelectiveMixer(dim, d_state=c.d_state, expand=c.expand, d_conv=c.d_conv, scan_orders=c.scan_orders)
        self.norm2 = nn.LayerNorm(dim, eps=c.norm_eps)
        self.einfft = EinFFT(dim, c.einfft_blocks, c.sparsity_threshold, c.einfft_activation,
                             fft_over_blocks=c.fft_over_blocks)
        self.drop = nn.Sequential(nn.Dropout(dropout), DropPath(drop_path))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop(self.mamba(self.norm1(x)))
        return x + self.drop(self.einfft(self.norm2(x)))


def _check_mixing(c: SiMBAConfig | SiMBAForecastConfig, dims: Sequence[int]) -> None:
    bad = [d for d in dims if d % c.einfft_blocks]
    if c.einfft_blocks < 1 or bad:
        raise ValueError(f"every width must be divisible by einfft_blocks={c.einfft_blocks}; {bad} are not")
    unknown = [o for o in c.scan_orders if o not in ORDERS_1D]
    if not c.scan_orders or unknown:
        raise ValueError(f"SiMBA scans its tokens in 1D orders {ORDERS_1D}; got scan_orders={c.scan_orders}")
    if c.d_state < 1 or c.d_conv < 1 or c.expand <= 0:
        raise ValueError(f"d_state, d_conv and expand must be positive, got {c.d_state}, {c.d_conv}, {c.expand}")


# ------------------------------------------------------------------------------------------- vision


class SiMBAStem(nn.Module):
    """(batch, C, H, W) -> (batch, H/stride, W/stride, dim): 7x7 conv (stride 2), two 3x3 convs, each
    with BatchNorm and ReLU, then a 3x3 projection (stride 2) and LayerNorm. ``stride`` 4, 2 or 1."""

    def __init__(self, in_chans: int, hidden: int, dim: int, stride: int = 4, eps: float = 1e-5) -> None:
        super().__init__()
        if stride not in (1, 2, 4):
            raise ValueError(f"SiMBA's stem stride must be 1, 2 or 4, got {stride}")
        s1, s2 = {4: (2, 2), 2: (2, 1), 1: (1, 1)}[stride]
        layers: list[nn.Module] = []
        for i, (k, s) in enumerate(((7, s1), (3, 1), (3, 1))):
            layers += [nn.Conv2d(in_chans if i == 0 else hidden, hidden, k, stride=s, padding=k // 2, bias=False),
                       nn.BatchNorm2d(hidden), nn.ReLU(inplace=True)]
        self.convs = nn.Sequential(*layers)
        self.proj = nn.Conv2d(hidden, dim, kernel_size=3, stride=s2, padding=1)
        self.norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.proj(self.convs(x)).permute(0, 2, 3, 1))


class SiMBAStage(nn.Module):
    """Optional down-sampling, SiMBA blocks over the row-major tokens, optional LayerNorm:
    (batch, H, W, in_dim) -> (batch, H', W', dim)."""

    def __init__(self, in_dim: int, dim: int, depth: int, stride: int, drop_paths: Sequence[float],
                 config: SiMBAConfig, downsample: bool, final_norm: bool) -> None:
        super().__init__()
        self.downsample = ConvDownsample(in_dim, dim, stride, eps=config.norm_eps) if downsample else nn.Identity()
        self.blocks = nn.Sequential(*(SiMBABlock(dim, config, drop_path=p) for p in drop_paths[:depth]))
        # the last stage's norm is the head's LayerNorm, as in the released code (norm4 after the class block)
        self.norm = nn.LayerNorm(dim, eps=config.norm_eps) if final_norm else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        x = self.downsample(x)
        batch, height, width, dim = x.shape
        x = self.norm(self.blocks(x.reshape(batch, height * width, dim)))  # tokens (batch, H*W, dim)
        return x.reshape(batch, height, width, dim)


class SiMBAHead(nn.Module):
    """(batch, H, W, dim) -> (batch, num_classes): the mean of the tokens, appended as a class token,
    goes through one more SiMBA block with them; its output feeds the shared ClassifierHead.

    The class token comes last so that a forward (causal) scan reaches it after every image token.
    """

    def __init__(self, dim: int, config: SiMBAConfig) -> None:
        super().__init__()
        self.block = SiMBABlock(dim, config)
        self.classifier = ClassifierHead(dim, config.num_classes, drop=config.head_dropout, eps=config.norm_eps)

    def forward(self, x: Tensor) -> Tensor:
        tokens = x.flatten(1, 2)  # (batch, H*W, dim)
        tokens = torch.cat([tokens, tokens.mean(dim=1, keepdim=True)], dim=1)
        cls = self.block(tokens)[:, -1]  # (batch, dim)
        return self.classifier(cls[:, None, None, :])  # a 1x1 map: the head's pooling leaves it unchanged


class SiMBA(PretrainedMixin, HierarchicalBackbone):
    """SiMBA classifier or (``features_only``) multi-scale backbone; see the module docstring."""

    config_class = SiMBAConfig

    def __init__(self, config: SiMBAConfig) -> None:
        super().__init__()
        c = self.config = config
        n = len(c.depths)
        if n == 0 or len(c.dims) != n or len(c.strides) != n:
            raise ValueError(f"depths, dims and strides need one entry per stage, got {c.depths}, {c.dims}, "
                             f"{c.strides}")
        if min(c.depths) < 1 or c.in_chans < 1 or c.num_classes < 0 or c.stem_hidden < 1:
            raise ValueError("depths, stem_hidden and in_chans must be positive and num_classes >= 0")
        if any(s not in (1, 2) for s in c.strides[1:]):
            raise ValueError(f"the down-sampling strides after the stem must be 1 or 2, got {c.strides}")
        if not 0.0 <= c.drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {c.drop_path_rate}")
        _check_mixing(c, c.dims)
        self.stem = SiMBAStem(c.in_chans, c.stem_hidden, c.dims[0], c.strides[0], eps=c.norm_eps)
        rates = drop_path_rates(c.drop_path_rate, sum(c.depths))
        stages, self.feature_info = [], []
        reduction, first = 1, 0
        for i, (dim, depth, stride) in enumerate(zip(c.dims, c.depths, c.strides, strict=True)):
            stages.append(SiMBAStage(c.dims[i - 1] if i else dim, dim, depth, stride, rates[first:first + depth], c,
                                     downsample=i > 0, final_norm=i < n - 1))
            first += depth
            reduction *= stride
            self.feature_info.append({"num_chs": dim, "reduction": reduction, "module": f"stages.{i}"})
        self.stages = nn.ModuleList(stages)
        self.head = SiMBAHead(c.dims[-1], c)
        self._init_weights()
        self._init_backbone(c.in_chans, c.features_only, c.out_indices)

    def _init_weights(self) -> None:
        # Convs: He-normal over fan-out; the classifier: truncated normal, zero bias (the released
        # code). Mamba keeps its own initialisation (the released code re-initialises its
        # Linear layers too, zeroing the dt bias; see docs/mambaout_simba.md).
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
                nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        fc = self.head.classifier.fc
        if isinstance(fc, nn.Linear):
            nn.init.trunc_normal_(fc.weight, std=0.02)
            nn.init.zeros_(fc.bias)

    def no_weight_decay(self) -> set[str]:
        return {name for name, p in self.named_parameters() if getattr(p, "_no_weight_decay", False)}


# --------------------------------------------------------------------------------------- forecasting


class SiMBAForecaster(PretrainedMixin, nn.Module):
    """(batch, seq_len, n_vars) -> (batch, horizon, n_vars); see the module docstring."""

    config_class = SiMBAForecastConfig

    def __init__(self, config: SiMBAForecastConfig) -> None:
        super().__init__()
        c = self.config = config
        check_forecast_config(c)
        for name in ("patch_len", "stride", "d_model", "n_blocks"):
            if getattr(c, name) < 1:
                raise ValueError(f"SiMBAForecastConfig.{name} must be >= 1, got {getattr(c, name)}")
        _check_mixing(c, (c.d_model,))
        self.revin = RevIN(c.n_vars, affine=c.revin_affine)
        self.patch_embed = nn.Linear(c.patch_len, c.d_model)
        self.embed_dropout = nn.Dropout(c.dropout)
        self.blocks = nn.Sequential(*(SiMBABlock(c.d_model, c, dropout=c.dropout) for _ in range(c.n_blocks)))
        self.norm = nn.LayerNorm(c.d_model, eps=c.norm_eps)
        self.head = nn.Sequential(nn.Flatten(-2), nn.Dropout(c.head_dropout), nn.Linear(c.n_patches * c.d_model,
                                                                                        c.horizon))

    def forward(self, x: Tensor, x_mark: Tensor | None = None, y_mark: Tensor | None = None) -> Tensor:
        """x (batch, seq_len, n_vars) -> (batch, horizon, n_vars); the calendar marks are ignored."""
        c = self.config
        check_series(self, x)
        batch = x.shape[0]
        x, stats = self.revin.normalize(x)
        z = patchify(x.transpose(1, 2), c.patch_len, c.stride, c.pad_end)  # (batch, n_vars, n_patches, patch_len)
        z = self.embed_dropout(self.patch_embed(z)).flatten(0, 1)  # one series per row: (batch * n_vars, n_patches, d)
        z = self.norm(self.blocks(z)).unflatten(0, (batch, c.n_vars))  # (batch, n_vars, n_patches, d_model)
        y = self.head(z).transpose(1, 2)  # (batch, horizon, n_vars)
        return self.revin.denormalize(y, stats)

    def no_weight_decay(self) -> set[str]:
        return {name for name, p in self.named_parameters() if getattr(p, "_no_weight_decay", False)}


# ----------------------------------------------------------------------------------------- builders


def _build_vision(size: dict[str, Any], num_classes: int, in_chans: int, features_only: bool,
                  out_indices: Sequence[int], overrides: dict[str, Any]) -> SiMBA:
    unknown = set(overrides) - {f.name for f in fields(SiMBAConfig)}
    if unknown:
        raise TypeError(f"unknown SiMBA overrides: {sorted(unknown)}")
    return SiMBA(SiMBAConfig(**{**size, "num_classes": num_classes, "in_chans": in_chans,
                                "features_only": features_only, "out_indices": tuple(out_indices), **overrides}))


# Sizes of the authors' released classification config (EinFFT channel mixing).


@register_model(task="vision")
def simba_s(num_classes: int = 1000, in_chans: int = 3, features_only: bool = False,
            out_indices: Sequence[int] = (0, 1, 2, 3), **overrides) -> SiMBA:
    """SiMBA-S: dims 64-128-320-448, depths 3-4-6-3, stem 32 (published 15.3M, 2.4G, 81.7%)."""
    size = {"dims": (64, 128, 320, 448), "depths": (3, 4, 6, 3), "stem_hidden": 32}
    return _build_vision(size, num_classes, in_chans, features_only, out_indices, overrides)


@register_model(task="vision")
def simba_b(num_classes: int = 1000, in_chans: int = 3, features_only: bool = False,
            out_indices: Sequence[int] = (0, 1, 2, 3), **overrides) -> SiMBA:
    """SiMBA-B: dims 64-128-320-512, depths 3-4-12-3, stem 64 (published 22.8M, 5.2G, 83.5%)."""
    size = {"dims": (64, 128, 320, 512), "depths": (3, 4, 12, 3), "stem_hidden": 64}
    return _build_vision(size, num_classes, in_chans, features_only, out_indices, overrides)


@register_model(task="vision")
def simba_l(num_classes: int = 1000, in_chans: int = 3, features_only: bool = False,
            out_indices: Sequence[int] = (0, 1, 2, 3), **overrides) -> SiMBA:
    """SiMBA-L: dims 96-192-384-512, depths 3-6-18-3, stem 64 (published 36.6M, 9.6G, 84.4%)."""
    size = {"dims": (96, 192, 384, 512), "depths": (3, 6, 18, 3), "stem_hidden": 64}
    return _build_vision(size, num_classes, in_chans, features_only, out_indices, overrides)


@register_model(task="vision")
def simba_nano(num_classes: int = 1000, in_chans: int = 3, features_only: bool = False,
               out_indices: Sequence[int] = (0, 1, 2, 3), **overrides) -> SiMBA:
    """Small-image size (not in the paper): dims 32-64-96-128, depths 2-2-4-2, d_state 16, total stride
    4 (strides 2-2-1-1), so 28x28 Fashion-MNIST runs at 14x14 then 7x7: 1.01M parameters at 10 classes."""
    size = {"dims": (32, 64, 96, 128), "depths": (2, 2, 4, 2), "stem_hidden": 16, "strides": (2, 2, 1, 1),
            "d_state": 16}
    return _build_vision(size, num_classes, in_chans, features_only, out_indices, overrides)


@register_model(task="forecast")
def simba(**overrides) -> SiMBAForecaster:
    """SiMBA for forecasting: patches of 16 (stride 8) per variate, d_model 32, 2 blocks, d_state 16."""
    return SiMBAForecaster(SiMBAForecastConfig(**overrides))
