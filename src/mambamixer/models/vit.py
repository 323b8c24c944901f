"""A small Vision Transformer (Dosovitskiy et al., "An Image is Worth 16x16 Words", ICLR 2021),
the attention baseline of the vision benchmark.

    image (batch, in_chans, H, W)
    -> patch projection: conv patch x patch, stride patch      (batch, h * w, d_model), h = H / patch
    -> + learned position embedding, dropout
    -> TransformerEncoder (layers/attention.py)                (batch, h * w, d_model)
    -> head: tokens as an (h, w) grid -> ClassifierHead: mean pool -> LayerNorm -> Linear

Isotropic, so a plain module rather than a HierarchicalBackbone. Pre-norm encoder layers, as
ViT (``norm_first=False`` gives the post-norm layer of the forecasting baselines). One departure
from the original, usual for small data: global average pooling instead of a class token (Beyer
et al., "Better plain ViT baselines for ImageNet-1k", 2022), the LayerNorm after the pooling
(timm's ``fc_norm``) standing in for the final one. ``vit_small`` (1.02M parameters at 10 classes
on 28x28) matches the small ViM2 variant's size.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor, nn

from mambamixer.layers.attention import TransformerEncoder
from mambamixer.layers.classifier_head import ClassifierHead
from mambamixer.models.classifier import ClassifierMixin
from mambamixer.models.pretrained import PretrainedMixin
from mambamixer.models.registry import register_model


@dataclass
class ViTConfig:
    img_size: int = 28  # the learned position embedding fixes the input size
    patch_size: int = 4
    in_chans: int = 1
    num_classes: int = 10  # 0: no classifier, forward returns pooled features
    d_model: int = 144
    n_layers: int = 6
    n_heads: int = 3
    d_ff: int = 288  # feed-forward width (2 x d_model: more depth for the parameter budget)
    norm_first: bool = True  # pre-norm layers (ViT); False: the post-norm encoder of the forecasting baselines
    dropout: float = 0.1  # embedding, residual and feed-forward dropout
    attn_dropout: float = 0.0  # on the attention probabilities


class ViT(PretrainedMixin, ClassifierMixin, nn.Module):
    """Vision Transformer classifier; see the module docstring."""

    config_class = ViTConfig

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        c = self.config = config
        _check_config(c)
        self.grid = c.img_size // c.patch_size
        self.in_chans = c.in_chans
        self.patch_embed = nn.Conv2d(c.in_chans, c.d_model, kernel_size=c.patch_size, stride=c.patch_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid * self.grid, c.d_model))
        self.dropout = nn.Dropout(c.dropout)
        self.encoder = TransformerEncoder(c.n_layers, c.d_model, c.n_heads, c.d_ff, dropout=c.dropout,
                                          attn_dropout=c.attn_dropout, norm="layer", norm_first=c.norm_first)
        self.head = ClassifierHead(c.d_model, c.num_classes)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.apply(_init_weights)

    def check_input(self, x: Tensor) -> None:
        """Clear errors for a wrong rank, dtype, channel count or image size."""
        c = self.config
        want = (c.in_chans, c.img_size, c.img_size)
        if not isinstance(x, Tensor) or x.dim() != 4 or not torch.is_floating_point(x):
            got = f"{tuple(x.shape)} {x.dtype}" if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"ViT expects float images (batch, {c.in_chans}, {c.img_size}, {c.img_size}), got {got}")
        if tuple(x.shape[1:]) != want:
            raise ValueError(f"ViT was built for in_chans={c.in_chans} and img_size={c.img_size} (its position "
                             f"embedding fixes the size), got images (batch, channels, height, width) = "
                             f"{tuple(x.shape)}")

    def forward_features(self, x: Tensor) -> Tensor:
        """(batch, in_chans, img_size, img_size) -> tokens (batch, grid * grid, d_model), row-major."""
        self.check_input(x)
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)  # (batch, grid * grid, d_model)
        return self.encoder(self.dropout(tokens + self.pos_embed))

    def forward_head(self, tokens: Tensor) -> Tensor:
        """(batch, grid * grid, d_model) -> (batch, num_classes)."""
        return self.head(tokens.view(tokens.shape[0], self.grid, self.grid, -1))

    def forward(self, x: Tensor) -> Tensor:
        """(batch, in_chans, img_size, img_size) -> logits (batch, num_classes)."""
        return self.forward_head(self.forward_features(x))

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed"}


def _check_config(c: ViTConfig) -> None:
    if c.img_size < 1 or c.patch_size < 1 or c.img_size % c.patch_size:
        raise ValueError(f"img_size ({c.img_size}) must be a positive multiple of patch_size ({c.patch_size})")
    if c.in_chans < 1 or c.num_classes < 0 or c.n_layers < 1:
        raise ValueError(f"in_chans and n_layers must be positive and num_classes >= 0, got in_chans={c.in_chans} "
                         f"n_layers={c.n_layers} num_classes={c.num_classes}")


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, (nn.Linear, nn.Conv2d)):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def _build(size: dict[str, Any], num_classes: int, in_chans: int, img_size: int, overrides: dict[str, Any]) -> ViT:
    unknown = set(overrides) - {f.name for f in fields(ViTConfig)}
    if unknown:
        raise TypeError(f"unknown ViT overrides: {sorted(unknown)}")
    return ViT(ViTConfig(**{**size, "num_classes": num_classes, "in_chans": in_chans, "img_size": img_size,
                            **overrides}))


@register_model(task="vision")
def vit_small(num_classes: int = 10, in_chans: int = 1, img_size: int = 28, **overrides) -> ViT:
    """Patch 4, d_model 144, 6 layers, 3 heads, feed-forward 288: 1.02M parameters at 10 classes (vim2_femto's size)."""
    size = {"patch_size": 4, "d_model": 144, "n_layers": 6, "n_heads": 3, "d_ff": 288}
    return _build(size, num_classes, in_chans, img_size, overrides)


@register_model(task="vision")
def vit_test(num_classes: int = 10, in_chans: int = 1, img_size: int = 28, **overrides) -> ViT:
    """A tiny size for tests: d_model 32, one layer, 2 heads."""
    size = {"patch_size": 4, "d_model": 32, "n_layers": 1, "n_heads": 2, "d_ff": 64}
    return _build(size, num_classes, in_chans, img_size, overrides)
