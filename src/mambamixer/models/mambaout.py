"""MambaOut (Yu and Wang, "MambaOut: Do We Really Need Mamba for Vision?", arXiv 2405.07992).

The control experiment of the vision comparison: a hierarchical backbone of gated CNN blocks,
which are Mamba blocks without the SSM.

    image (batch, in_chans, H, W)
    -> stem: 3x3 conv stride 2 -> LN -> GELU -> 3x3 conv stride 2 -> LN    (batch, H/4, W/4, dims[0])
    -> 4 stages: [3x3 conv stride 2 + LN, stages 2-4] + depths[i] gated CNN blocks
                                                          (batch, H/s_i, W/s_i, dims[i])
    -> head: global average pool -> LN -> Linear (4x) -> GELU -> LN -> Linear (batch, num_classes)

Every LayerNorm has eps 1e-6 and every conv/linear is initialised truncated-normal (std 0.02) with
zero bias, as in the official code. Sizes and the drop-path rates of the official training
scripts are registered below; ``mambaout_nano`` is a small-image size (28x28 to 64x64 inputs).
Fidelity notes: docs/mambaout_simba.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

from torch import Tensor, nn

from mambamixer.layers.classifier_head import ClassifierHead
from mambamixer.layers.conv_downsample import ConvDownsample
from mambamixer.layers.conv_stem import ConvStem
from mambamixer.layers.drop_path import drop_path_rates
from mambamixer.layers.gated_cnn import GatedCNNBlock
from mambamixer.models.hierarchical import HierarchicalBackbone
from mambamixer.models.pretrained import PretrainedMixin
from mambamixer.models.registry import register_model

_TUPLE_FIELDS = ("depths", "dims", "strides", "out_indices")


@dataclass
class MambaOutConfig:
    depths: tuple[int, ...] = (3, 3, 9, 3)
    dims: tuple[int, ...] = (96, 192, 384, 576)
    num_classes: int = 1000  # 0: no classifier, the head returns pooled features
    in_chans: int = 3
    # stride of the stem (4, 2 or 1), then of each later stage's down-sampling (2 or 1); the
    # product is the total stride, which the input's height and width must be divisible by
    strides: tuple[int, ...] = (4, 2, 2, 2)
    expansion_ratio: float = 8 / 3  # hidden width of a gated CNN block, times dim
    kernel_size: int = 7  # of the depthwise conv
    conv_ratio: float = 1.0  # fraction of dim that goes through the conv (the rest is identity)
    drop_path_rate: float = 0.0  # stochastic depth, rising linearly over all blocks to this value
    head_hidden_ratio: float = 4.0  # MLP head width, times dims[-1]
    head_dropout: float = 0.0
    norm_eps: float = 1e-6
    features_only: bool = False  # True: forward returns the stage maps of out_indices (no classifier)
    out_indices: tuple[int, ...] = (0, 1, 2, 3)

    def __post_init__(self) -> None:
        for name in _TUPLE_FIELDS:  # JSON gives lists back; keep configs comparable after a round trip
            setattr(self, name, tuple(getattr(self, name)))


class MambaOutStage(nn.Module):
    """Optional down-sampling, then gated CNN blocks: (batch, H, W, in_dim) -> (batch, H', W', dim)."""

    def __init__(self, in_dim: int, dim: int, depth: int, stride: int, drop_paths: Sequence[float],
                 config: MambaOutConfig, downsample: bool) -> None:
        super().__init__()
        c = config
        self.downsample = ConvDownsample(in_dim, dim, stride, eps=c.norm_eps) if downsample else nn.Identity()
        self.blocks = nn.Sequential(*(
            GatedCNNBlock(dim, c.expansion_ratio, c.kernel_size, c.conv_ratio, drop_paths[j], eps=c.norm_eps)
            for j in range(depth)
        ))  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(self.downsample(x))


class MambaOut(PretrainedMixin, HierarchicalBackbone):
    """MambaOut classifier or (``features_only``) multi-scale backbone; see the module docstring."""

    config_class = MambaOutConfig

    def __init__(self, config: MambaOutConfig) -> None:
        super().__init__()
        c = self.config = config
        _check_config(c)
        self.stem = ConvStem(c.in_chans, c.dims[0], c.strides[0], eps=c.norm_eps)
        rates = drop_path_rates(c.drop_path_rate, sum(c.depths))
        stages, self.feature_info = [], []
        reduction, first = 1, 0
        for i, (dim, depth, stride) in enumerate(zip(c.dims, c.depths, c.strides, strict=True)):
            in_dim = c.dims[i - 1] if i else dim
            stages.append(MambaOutStage(in_dim, dim, depth, stride, rates[first:first + depth], c, downsample=i > 0))
            first += depth
            reduction *= stride
            self.feature_info.append({"num_chs": dim, "reduction": reduction, "module": f"stages.{i}"})
        self.stages = nn.ModuleList(stages)
        self.head = ClassifierHead(c.dims[-1], c.num_classes, hidden_ratio=c.head_hidden_ratio, drop=c.head_dropout,
                                   eps=c.norm_eps)
        self.apply(_init_weights)
        self._init_backbone(c.in_chans, c.features_only, c.out_indices)

    def no_weight_decay(self) -> set[str]:
        return set()  # only norms and biases are exempt, and the optimiser exempts every 1-D parameter


def _check_config(c: MambaOutConfig) -> None:
    n = len(c.depths)
    if n == 0 or len(c.dims) != n or len(c.strides) != n:
        raise ValueError(f"depths, dims and strides need one entry per stage, got {c.depths}, {c.dims}, {c.strides}")
    if min(c.depths) < 1 or min(c.dims) < 2 or c.in_chans < 1 or c.num_classes < 0:
        raise ValueError(f"depths and dims must be positive, in_chans >= 1, num_classes >= 0; got depths={c.depths} "
                         f"dims={c.dims} in_chans={c.in_chans} num_classes={c.num_classes}")
    if any(s not in (1, 2) for s in c.strides[1:]):
        raise ValueError(f"the down-sampling strides after the stem must be 1 or 2, got {c.strides}")
    if not 0.0 <= c.drop_path_rate < 1.0:
        raise ValueError(f"drop_path_rate must be in [0, 1), got {c.drop_path_rate}")


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def _build(size: dict[str, Any], num_classes: int, in_chans: int, features_only: bool,
           out_indices: Sequence[int], overrides: dict[str, Any]) -> MambaOut:
    unknown = set(overrides) - {f.name for f in fields(MambaOutConfig)}
    if unknown:
        raise TypeError(f"unknown MambaOut overrides: {sorted(unknown)}")
    return MambaOut(MambaOutConfig(**{**size, "num_classes": num_classes, "in_chans": in_chans,
                                      "features_only": features_only, "out_indices": tuple(out_indices),
                                      **overrides}))


# Published ImageNet-1K sizes (paper table 1; drop-path rates from the official training scripts).


@register_model(task="vision")
def mambaout_femto(num_classes: int = 1000, in_chans: int = 3, features_only: bool = False,
                   out_indices: Sequence[int] = (0, 1, 2, 3), **overrides) -> MambaOut:
    """MambaOut-Femto: depths 3-3-9-3, dims 48-96-192-288 (7.3M parameters, 1.2G MACs, 78.9% top-1)."""
    size = {"depths": (3, 3, 9, 3), "dims": (48, 96, 192, 288), "drop_path_rate": 0.025}
    return _build(size, num_classes, in_chans, features_only, out_indices, overrides)


@register_model(task="vision")
def mambaout_kobe(num_classes: int = 1000, in_chans: int = 3, features_only: bool = False,
                  out_indices: Sequence[int] = (0, 1, 2, 3), **overrides) -> MambaOut:
    """MambaOut-Kobe: depths 3-3-15-3 (24 blocks), dims 48-96-192-288 (9.1M, 1.5G, 80.0%)."""
    size = {"depths": (3, 3, 15, 3), "dims": (48, 96, 192, 288), "drop_path_rate": 0.025}
    return _build(size, num_classes, in_chans, features_only, out_indices, overrides)


@register_model(task="vision")
def mambaout_tiny(num_classes: int = 1000, in_chans: int = 3, features_only: bool = False,
                  out_indices: Sequence[int] = (0, 1, 2, 3), **overrides) -> MambaOut:
    """MambaOut-Tiny: depths 3-3-9-3, dims 96-192-384-576 (26.5M, 4.5G, 82.7%)."""
    size = {"depths": (3, 3, 9, 3), "dims": (96, 192, 384, 576), "drop_path_rate": 0.2}
    return _build(size, num_classes, in_chans, features_only, out_indices, overrides)


@register_model(task="vision")
def mambaout_small(num_classes: int = 1000, in_chans: int = 3, features_only: bool = False,
                   out_indices: Sequence[int] = (0, 1, 2, 3), **overrides) -> MambaOut:
    """MambaOut-Small: depths 3-4-27-3, dims 96-192-384-576 (48.5M, 9.0G, 84.1%)."""
    size = {"depths": (3, 4, 27, 3), "dims": (96, 192, 384, 576), "drop_path_rate": 0.4}
    return _build(size, num_classes, in_chans, features_only, out_indices, overrides)


@register_model(task="vision")
def mambaout_base(num_classes: int = 1000, in_chans: int = 3, features_only: bool = False,
                  out_indices: Sequence[int] = (0, 1, 2, 3), **overrides) -> MambaOut:
    """MambaOut-Base: depths 3-4-27-3, dims 128-256-512-768 (84.8M, 15.8G, 84.2%)."""
    size = {"depths": (3, 4, 27, 3), "dims": (128, 256, 512, 768), "drop_path_rate": 0.6}
    return _build(size, num_classes, in_chans, features_only, out_indices, overrides)


@register_model(task="vision")
def mambaout_nano(num_classes: int = 1000, in_chans: int = 3, features_only: bool = False,
                  out_indices: Sequence[int] = (0, 1, 2, 3), **overrides) -> MambaOut:
    """Small-image size (not in the paper): Femto's depths, dims 32-64-96-128, total stride 4 (strides
    2-2-1-1), so 28x28 Fashion-MNIST runs at 14x14 then 7x7: 1.11M parameters at 10 classes."""
    size = {"depths": (2, 2, 6, 2), "dims": (32, 64, 96, 128), "strides": (2, 2, 1, 1), "drop_path_rate": 0.0}
    return _build(size, num_classes, in_chans, features_only, out_indices, overrides)
