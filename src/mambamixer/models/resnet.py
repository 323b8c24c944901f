"""A small ResNet (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016), the
convolutional baseline of the vision benchmark, in its CIFAR form: a 3x3 stem without pooling,
then stages of basic blocks (two 3x3 convs with BatchNorm, identity or 1x1-projection shortcut).

    image (batch, in_chans, H, W)
    -> stem: 3x3 conv stride strides[0] -> BN -> ReLU          (batch, H/s0, W/s0, dims[0])
    -> stages[i]: depths[i] basic blocks, the first with stride strides[i] (i > 0)
                                                              (batch, H/s_i, W/s_i, dims[i])
    -> head: global average pool -> LayerNorm -> Linear        (batch, num_classes)

It is a :class:`HierarchicalBackbone`, so it is channels-last between stages like the other
vision families (each stage permutes to channels-first for its convs and back). The head is the
shared ``ClassifierHead``, whose LayerNorm after pooling the original ResNet does not have.
``resnet_small`` (about 2.1M parameters at 10 classes) matches the small ViM2 variant's size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

from torch import Tensor, nn

from mambamixer.layers.classifier_head import ClassifierHead
from mambamixer.models.hierarchical import HierarchicalBackbone
from mambamixer.models.pretrained import PretrainedMixin
from mambamixer.models.registry import register_model


@dataclass
class ResNetConfig:
    depths: tuple[int, ...] = (2, 2, 2)
    dims: tuple[int, ...] = (56, 112, 224)
    # stride of the stem, then of each later stage's first block (1 or 2); the product is the
    # total stride, which the input's height and width must be divisible by
    strides: tuple[int, ...] = (1, 2, 2)
    num_classes: int = 10  # 0: no classifier, the head returns pooled features
    in_chans: int = 1
    img_size: int = 28  # the input size it was built for (convolutions take any multiple of the total stride)
    features_only: bool = False
    out_indices: tuple[int, ...] = (0, 1, 2)

    def __post_init__(self) -> None:
        for name in ("depths", "dims", "strides", "out_indices"):  # JSON gives lists back
            setattr(self, name, tuple(getattr(self, name)))


class BasicBlock(nn.Module):
    """conv3x3(stride) -> BN -> ReLU -> conv3x3 -> BN, plus the shortcut, then ReLU.

    (batch, in_dim, H, W) -> (batch, dim, H/stride, W/stride), channels-first.
    """

    def __init__(self, in_dim: int, dim: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_dim, dim, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(dim)
        self.conv2 = nn.Conv2d(dim, dim, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(dim)
        self.act = nn.ReLU(inplace=True)
        self.shortcut = nn.Identity() if stride == 1 and in_dim == dim else nn.Sequential(
            nn.Conv2d(in_dim, dim, 1, stride=stride, bias=False), nn.BatchNorm2d(dim))

    def forward(self, x: Tensor) -> Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        return self.act(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNetStem(nn.Module):
    """(batch, in_chans, H, W) -> (batch, H/stride, W/stride, dim) channels-last."""

    def __init__(self, in_chans: int, dim: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chans, dim, 3, stride=stride, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(dim)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x))).permute(0, 2, 3, 1)


class ResNetStage(nn.Module):
    """(batch, H, W, in_dim) -> (batch, H/stride, W/stride, dim), channels-last at both ends."""

    def __init__(self, in_dim: int, dim: int, depth: int, stride: int) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*(BasicBlock(in_dim if j == 0 else dim, dim, stride if j == 0 else 1)
                                      for j in range(depth)))

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class ResNet(PretrainedMixin, HierarchicalBackbone):
    """ResNet classifier or (``features_only``) multi-scale backbone; see the module docstring."""

    config_class = ResNetConfig

    def __init__(self, config: ResNetConfig) -> None:
        super().__init__()
        c = self.config = config
        _check_config(c)
        self.stem = ResNetStem(c.in_chans, c.dims[0], c.strides[0])
        stages, self.feature_info = [], []
        reduction = c.strides[0]
        for i, (dim, depth) in enumerate(zip(c.dims, c.depths, strict=True)):
            stride = c.strides[i] if i > 0 else 1
            reduction *= stride
            stages.append(ResNetStage(c.dims[i - 1] if i else dim, dim, depth, stride))
            self.feature_info.append({"num_chs": dim, "reduction": reduction, "module": f"stages.{i}"})
        self.stages = nn.ModuleList(stages)
        self.head = ClassifierHead(c.dims[-1], c.num_classes)
        self.apply(_init_weights)
        self._init_backbone(c.in_chans, c.features_only, c.out_indices)
        if c.img_size % self.total_stride:
            raise ValueError(f"img_size {c.img_size} is not divisible by the total stride {self.total_stride} "
                             f"(strides {c.strides})")

    def no_weight_decay(self) -> set[str]:
        return set()  # BatchNorm and LayerNorm parameters are 1-D, which the optimiser exempts anyway


def _check_config(c: ResNetConfig) -> None:
    n = len(c.depths)
    if n == 0 or len(c.dims) != n or len(c.strides) != n:
        raise ValueError(f"depths, dims and strides need one entry per stage, got {c.depths}, {c.dims}, {c.strides}")
    if min(c.depths) < 1 or min(c.dims) < 1 or c.in_chans < 1 or c.num_classes < 0 or c.img_size < 1:
        raise ValueError(f"depths, dims, in_chans and img_size must be positive and num_classes >= 0; got "
                         f"depths={c.depths} dims={c.dims} in_chans={c.in_chans} num_classes={c.num_classes} "
                         f"img_size={c.img_size}")
    if any(s not in (1, 2) for s in c.strides):
        raise ValueError(f"ResNet strides must be 1 or 2, got {c.strides}")


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    elif isinstance(module, BasicBlock):
        # zero-init the last BN of each residual branch: every block starts as the identity
        # (Goyal et al. 2017), which steadies the first steps of a short schedule
        nn.init.zeros_(module.bn2.weight)


def _build(size: dict[str, Any], num_classes: int, in_chans: int, img_size: int, features_only: bool,
           out_indices: Sequence[int] | None, overrides: dict[str, Any]) -> ResNet:
    unknown = set(overrides) - {f.name for f in fields(ResNetConfig)}
    if unknown:
        raise TypeError(f"unknown ResNet overrides: {sorted(unknown)}")
    n = len(overrides.get("depths", size["depths"]))
    return ResNet(ResNetConfig(**{**size, "num_classes": num_classes, "in_chans": in_chans, "img_size": img_size,
                                  "features_only": features_only,
                                  "out_indices": tuple(range(n)) if out_indices is None else tuple(out_indices),
                                  **overrides}))


@register_model(task="vision")
def resnet_small(num_classes: int = 10, in_chans: int = 1, img_size: int = 28, features_only: bool = False,
                 out_indices: Sequence[int] | None = None, **overrides) -> ResNet:
    """Basic blocks 2-2-2, widths 40-80-160, strides 1-2-2: 1.09M parameters at 10 classes (vim2_femto's size)."""
    size = {"depths": (2, 2, 2), "dims": (40, 80, 160), "strides": (1, 2, 2)}
    return _build(size, num_classes, in_chans, img_size, features_only, out_indices, overrides)


@register_model(task="vision")
def resnet_test(num_classes: int = 10, in_chans: int = 1, img_size: int = 28, features_only: bool = False,
                out_indices: Sequence[int] | None = None, **overrides) -> ResNet:
    """A tiny size for tests: one block per stage, widths 8-16-32."""
    size = {"depths": (1, 1, 1), "dims": (8, 16, 32), "strides": (1, 2, 2)}
    return _build(size, num_classes, in_chans, img_size, features_only, out_indices, overrides)
