"""ViM2 and ViQS: MambaMixer for images (MambaMixer paper, section 4, and its later revision).

    image (batch, in_chans, H, W)
    -> stem: (p x p) conv, stride p, LayerNorm                        (batch, H/p, W/p, dims[0])
             (``stem="conv"``: two overlapping 3x3 convs, layers/conv_stem.py)
    -> 4 stages, each: [patch merging, stages 2-4] then MambaMixer blocks over the patch grid
         token mixer:   Linear d -> 2 (2d) (x, gate z) -> 3x3 depthwise conv on the grid -> SiLU
                        -> S6 along each scan order (row, column and their reverses) -> sum
                        -> LayerNorm -> * SiLU(z) -> Linear 2d -> d
         channel mixer: per token, Linear d -> 2 w (x, gate z) -> SiLU -> bidirectional S6 across
                        the w channels (w / 16 steps of 16 channels) -> * SiLU(z) -> Linear w -> d
         every mixer pre-norm and residual; the input of each mixer a learned weighted average of
         all earlier outputs of its stage (DenseFormer), started as a plain residual stack
    -> head: global average pool -> LayerNorm -> Linear                  (batch, num_classes)

ViQS is the same network with every S6 replaced by the quasi-separable QS-S6 (one parameter set
per bidirectional scan): its token mixers scan ('row', 'column') each both ways, its channel
mixers scan once both ways. ``switch_of_scans=True`` lets a router pick, per image and per token
mixer, the top-k of a larger set of scans (layers/switch_of_scans.py); ``model.aux_loss()`` is
then the load-balancing loss to add to the training loss.

Sizes: the MambaMixer v1 scales table (T, S, B) and small-image sizes for 28x28 / 32x32 inputs
(``*_femto``). Every choice the papers leave open is listed in docs/vision.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor, nn

from mambamixer.layers.channel_mixer import ChannelMixer
from mambamixer.layers.classifier_head import ClassifierHead
from mambamixer.layers.conv_stem import ConvStem
from mambamixer.layers.drop_path import drop_path_rates
from mambamixer.layers.mamba_mixer import MambaMixer
from mambamixer.layers.patch_embed import PatchEmbed, PatchMerging
from mambamixer.layers.scan_order import ORDERS_2D
from mambamixer.layers.switch_of_scans import balance_loss
from mambamixer.layers.token_mixer import TokenMixer
from mambamixer.models.hierarchical import HierarchicalBackbone
from mambamixer.models.pretrained import PretrainedMixin
from mambamixer.models.registry import register_model

CROSS_SCAN = ("row", "row_reverse", "column", "column_reverse")  # VMamba's four directions
SOS_CANDIDATES = ORDERS_2D  # row, column, snake, diagonal and the reverse of each
SOS_CANDIDATES_QS = ("row", "column", "snake", "diagonal")  # a QS scan already runs both ways
_TUPLE_FIELDS = ("dims", "depths", "channel_widths", "channel_counts", "strides", "scan_orders", "sos_candidates",
                 "out_indices")  # fmt: skip


@dataclass
class ViM2Config:
    """ViM2 / ViQS. The defaults are ViM2-T."""

    dims: tuple[int, ...] = (96, 192, 384, 768)
    depths: tuple[int, ...] = (2, 2, 6, 2)  # token mixers per stage
    channel_widths: tuple[int, ...] = (192, 384, 768, 768)  # d_inner of each stage's channel mixers
    channel_counts: tuple[int, ...] = (1, 1, 3, 1)  # channel mixers per stage, each after depth/count token mixers
    strides: tuple[int, ...] = (4, 2, 2, 2)  # stem patch size, then per later stage 2 (patch merging) or 1 (width only)
    stem: str = "patch"  # "patch": one (p x p) conv, stride p (the paper); "conv": two overlapping 3x3 convs
    num_classes: int = 1000  # 0: no classifier, the head returns the pooled, normalised features
    in_chans: int = 3
    d_state: int = 16
    expand: float = 2  # token mixer: d_inner = expand * dim
    d_conv: int = 3  # the token mixer's 2D depthwise conv kernel
    scan_orders: tuple[str, ...] = CROSS_SCAN  # token-mixer scans, summed (ignored with switch_of_scans)
    channel_group: int = 16  # channels per step of the channel mixer's scan across channels
    out_norm: bool = True  # LayerNorm on the token mixer's summed scans, before the gate (VMamba)
    quasi_separable: bool = False  # True: ViQS (QS-S6 everywhere)
    switch_of_scans: bool = False
    sos_top_k: int = 2
    sos_candidates: tuple[str, ...] | None = None  # None: SOS_CANDIDATES (SOS_CANDIDATES_QS for ViQS)
    sos_balance_weight: float = 0.01  # aux_loss() = weight * mean balance loss over the routers
    weighted_average: bool = True  # False: plain residual stack in every stage (the ablation)
    drop_rate: float = 0.0  # dropout on every mixer's output
    drop_path_rate: float = 0.0  # stochastic depth, rising linearly over all mixers
    head_dropout: float = 0.0
    features_only: bool = False
    out_indices: tuple[int, ...] = (0, 1, 2, 3)

    def __post_init__(self) -> None:
        for name in _TUPLE_FIELDS:  # JSON gives lists back
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, tuple(value))

    @property
    def token_scans(self) -> tuple[str, ...]:
        """The scan orders each token mixer holds parameters for."""
        if not self.switch_of_scans:
            return self.scan_orders
        return self.sos_candidates or (SOS_CANDIDATES_QS if self.quasi_separable else SOS_CANDIDATES)


class ViM2Stage(nn.Module):
    """Optional patch merging, then MambaMixer blocks: (batch, H, W, in_dim) -> (batch, H', W', dim)."""

    def __init__(self, in_dim: int, dim: int, stride: int, index: int, drop_paths: Sequence[float],
                 config: ViM2Config) -> None:  # fmt: skip
        super().__init__()
        c = config
        depth, count, width = c.depths[index], c.channel_counts[index], c.channel_widths[index]
        self.downsample = PatchMerging(in_dim, dim, downsample=stride == 2) if index > 0 else nn.Identity()

        def token_mixer() -> TokenMixer:
            return TokenMixer(dim, scan_orders=c.token_scans, d_state=c.d_state, expand=c.expand, d_conv=c.d_conv,
                              conv_2d=True, quasi_separable=c.quasi_separable, out_norm=c.out_norm,
                              sos_top_k=c.sos_top_k if c.switch_of_scans else None)  # fmt: skip

        def channel_mixer() -> ChannelMixer:
            return ChannelMixer(dim, channel_group=c.channel_group, quasi_separable=c.quasi_separable, d_inner=width,
                                d_state=c.d_state, d_conv=0)  # fmt: skip

        self.mixer = MambaMixer(
            count or depth, dim, token_mixer, channel_mixer if count else None,
            dropout=c.drop_rate, weighted_average=c.weighted_average,
            token_mixers_per_block=depth // count if count else 1, drop_path=drop_paths,
        )  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        x = self.downsample(x)
        batch, height, width, dim = x.shape
        y = self.mixer(x.reshape(batch, height * width, dim), grid=(height, width))  # row-major tokens
        return y.reshape(batch, height, width, dim)


class ViM2(PretrainedMixin, HierarchicalBackbone):
    """ViM2 / ViQS classifier, or (``features_only``) multi-scale backbone; see the module docstring."""

    config_class = ViM2Config

    def __init__(self, config: ViM2Config) -> None:
        super().__init__()
        c = self.config = config
        _check_config(c)
        if c.stem == "patch":
            self.stem = PatchEmbed(c.in_chans, c.dims[0], c.strides[0])
        else:
            self.stem = ConvStem(c.in_chans, c.dims[0], c.strides[0])
        n_mixers = [d + n for d, n in zip(c.depths, c.channel_counts, strict=True)]
        rates = drop_path_rates(c.drop_path_rate, sum(n_mixers))
        stages, self.feature_info = [], []
        reduction, first = 1, 0
        for i, (dim, stride) in enumerate(zip(c.dims, c.strides, strict=True)):
            in_dim = c.dims[i - 1] if i else dim
            stages.append(ViM2Stage(in_dim, dim, stride, i, rates[first : first + n_mixers[i]], c))
            first += n_mixers[i]
            reduction *= stride
            self.feature_info.append({"num_chs": dim, "reduction": reduction, "module": f"stages.{i}"})
        self.stages = nn.ModuleList(stages)
        self.head = ClassifierHead(c.dims[-1], c.num_classes, drop=c.head_dropout)
        self.input_multiple = c.strides[0]  # patch merging pads odd grids
        self._init_backbone(c.in_chans, c.features_only, c.out_indices)

    def aux_loss(self) -> Tensor:
        """The Switch-of-Scans load-balancing loss of the latest forward, already weighted.

        ``sos_balance_weight`` times the mean over the routers of n_candidates * sum_c f_c P_c; a
        zero tensor without Switch of Scans. Add it to the task loss:
        ``loss = F.cross_entropy(model(x), y) + model.aux_loss()``.
        """
        if not self.config.switch_of_scans:
            return self.head.fc.weight.new_zeros(()) if hasattr(self.head, "fc") else torch.zeros(())
        return self.config.sos_balance_weight * balance_loss(self)

    def no_weight_decay(self) -> set[str]:
        """A_log, D, dt_bias and the weighted-average weights (their optimiser hints)."""
        return {name for name, p in self.named_parameters() if getattr(p, "_no_weight_decay", False)}


def _check_config(c: ViM2Config) -> None:
    n = len(c.dims)
    lengths = {len(getattr(c, f)) for f in ("dims", "depths", "channel_widths", "channel_counts", "strides")}
    if n == 0 or lengths != {n}:
        raise ValueError(
            f"dims, depths, channel_widths, channel_counts and strides need one entry per stage, got "
            f"{c.dims}, {c.depths}, {c.channel_widths}, {c.channel_counts}, {c.strides}"
        )
    if min(c.depths) < 1 or min(c.dims) < 1 or min(c.channel_counts) < 0 or c.in_chans < 1 or c.num_classes < 0:
        raise ValueError(
            f"depths and dims must be positive, channel_counts >= 0, in_chans >= 1, num_classes >= 0; "
            f"got depths={c.depths} dims={c.dims} channel_counts={c.channel_counts}"
        )
    for depth, count, width in zip(c.depths, c.channel_counts, c.channel_widths, strict=True):
        if count and (depth % count or width % c.channel_group):
            raise ValueError(
                f"each stage needs depth divisible by its channel-mixer count and a channel width "
                f"divisible by channel_group={c.channel_group}; got depth {depth}, count {count}, "
                f"width {width}"
            )
    if c.strides[0] < 1 or any(s not in (1, 2) for s in c.strides[1:]):
        raise ValueError(f"strides: a stem patch size >= 1, then 1 or 2 per later stage; got {c.strides}")
    if c.stem not in ("patch", "conv") or (c.stem == "conv" and c.strides[0] not in (1, 2, 4)):
        raise ValueError(f"stem must be 'patch' or 'conv' (the conv stem with stride 1, 2 or 4); got stem={c.stem!r} "
                         f"with stride {c.strides[0]}")
    if c.switch_of_scans and not 1 <= c.sos_top_k <= len(c.token_scans):
        raise ValueError(f"sos_top_k must be in [1, {len(c.token_scans)}] (the candidate scans), got {c.sos_top_k}")
    if not 0.0 <= c.drop_path_rate < 1.0:
        raise ValueError(f"drop_path_rate must be in [0, 1), got {c.drop_path_rate}")


def _build(size: dict[str, Any], num_classes: int, in_chans: int, features_only: bool,
           out_indices: Sequence[int], overrides: dict[str, Any]) -> ViM2:  # fmt: skip
    unknown = set(overrides) - {f.name for f in fields(ViM2Config)}
    if unknown:
        raise TypeError(f"unknown ViM2 overrides: {sorted(unknown)}")
    return ViM2(
        ViM2Config(
            **{
                **size,
                "num_classes": num_classes,
                "in_chans": in_chans,
                "features_only": features_only,
                "out_indices": tuple(out_indices),
                **overrides,
            }
        )
    )


# Sizes. T, S, B: the MambaMixer v1 scales table (published 20M / 43M / 74M; see docs/vision.md for
# the counts measured here). ViQS: the same sizes on QS-S6.

_T = {"dims": (96, 192, 384, 768), "depths": (2, 2, 6, 2), "channel_widths": (192, 384, 768, 768),
      "channel_counts": (1, 1, 3, 1), "drop_path_rate": 0.2}  # fmt: skip
_S = {**_T, "depths": (2, 2, 18, 2), "channel_counts": (1, 1, 9, 1), "drop_path_rate": 0.3}
_B = {**_S, "dims": (128, 256, 512, 1024), "channel_widths": (256, 512, 1024, 1024), "drop_path_rate": 0.5}
# Small images (28x28 Fashion-MNIST, 32x32 CIFAR): a 2x2 stem and two patch mergings, so 28x28 runs at
# 14x14 (one token mixer, no channel mixer: scanning 196 tokens' channels is the dearest part), 7x7 (2 token
# mixers, 1 channel mixer) and 4x4 (the 7x7 grid padded, as Swin; 2 + 1). The widest stage sits on the
# fewest tokens, which puts 1.1M parameters (the benchmark's 1-3M band) at the cost of the earlier 0.5M
# two-stage size. Token mixers expand 1, d_state 4: on CPU the scans cost about as much as the matmuls
# (docs/vision.md has the measurements behind these choices).
_FEMTO = {"dims": (32, 96, 256), "depths": (1, 2, 2), "channel_widths": (64, 192, 512), "channel_counts": (0, 1, 1),
          "strides": (2, 2, 2), "expand": 1, "d_state": 4}  # fmt: skip
_QS = {"quasi_separable": True, "scan_orders": ("row", "column")}


@register_model(task="vision")
def vim2_tiny(num_classes: int = 1000, in_chans: int = 3, features_only: bool = False,
              out_indices: Sequence[int] = (0, 1, 2, 3), **overrides) -> ViM2:  # fmt: skip
    """ViM2-T: dims 96-192-384-768, token mixers 2-2-6-2, channel mixers 1-1-3-1 (published 20M, 82.7%)."""
    return _build(_T, num_classes, in_chans, features_only, out_indices, overrides)


@register_model(task="vision")
def vim2_small(num_classes: int = 1000, in_chans: int = 3, features_only: bool = False,
               out_indices: Sequence[int] = (0, 1, 2, 3), **overrides) -> ViM2:  # fmt: skip
    """ViM2-S: dims 96-192-384-768, token mixers 2-2-18-2, channel mixers 1-1-9-1 (published 43M, 83.7%)."""
    return _build(_S, num_classes, in_chans, features_only, out_indices, overrides)


@register_model(task="vision")
def vim2_base(num_classes: int = 1000, in_chans: int = 3, features_only: bool = False,
              out_indices: Sequence[int] = (0, 1, 2, 3), **overrides) -> ViM2:  # fmt: skip
    """ViM2-B: dims 128-256-512-1024, token mixers 2-2-18-2, channel mixers 1-1-9-1 (published 74M, 83.9%)."""
    return _build(_B, num_classes, in_chans, features_only, out_indices, overrides)


@register_model(task="vision")
def vim2_femto(num_classes: int = 1000, in_chans: int = 3, features_only: bool = False,
               out_indices: Sequence[int] = (0, 1, 2), **overrides) -> ViM2:  # fmt: skip
    """Small-image ViM2 (not in the paper) for 28x28 / 32x32: dims 32-96-256, strides 2-4-8 (1.14M at 10 classes)."""
    return _build(_FEMTO, num_classes, in_chans, features_only, out_indices, overrides)


@register_model(task="vision")
def viqs_tiny(num_classes: int = 1000, in_chans: int = 3, features_only: bool = False,
              out_indices: Sequence[int] = (0, 1, 2, 3), **overrides) -> ViM2:  # fmt: skip
    """ViQS-T: ViM2-T on QS-S6 (no published size or result)."""
    return _build({**_T, **_QS}, num_classes, in_chans, features_only, out_indices, overrides)


@register_model(task="vision")
def viqs_small(num_classes: int = 1000, in_chans: int = 3, features_only: bool = False,
               out_indices: Sequence[int] = (0, 1, 2, 3), **overrides) -> ViM2:  # fmt: skip
    """ViQS-S: ViM2-S on QS-S6."""
    return _build({**_S, **_QS}, num_classes, in_chans, features_only, out_indices, overrides)


@register_model(task="vision")
def viqs_base(num_classes: int = 1000, in_chans: int = 3, features_only: bool = False,
              out_indices: Sequence[int] = (0, 1, 2, 3), **overrides) -> ViM2:  # fmt: skip
    """ViQS-B: ViM2-B on QS-S6."""
    return _build({**_B, **_QS}, num_classes, in_chans, features_only, out_indices, overrides)


@register_model(task="vision")
def viqs_femto(num_classes: int = 1000, in_chans: int = 3, features_only: bool = False,
               out_indices: Sequence[int] = (0, 1, 2), **overrides) -> ViM2:  # fmt: skip
    """Small-image ViQS: vim2_femto on QS-S6."""
    return _build({**_FEMTO, **_QS}, num_classes, in_chans, features_only, out_indices, overrides)
