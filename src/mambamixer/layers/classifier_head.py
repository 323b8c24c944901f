"""Classification head shared by the vision backbones."""

from __future__ import annotations

from torch import Tensor, nn


class ClassifierHead(nn.Module):
    """Global average pool -> LayerNorm -> optional MLP -> Linear.

    (batch, H, W, dim) channels-last -> (batch, num_classes). ``hidden_ratio`` adds MambaOut's
    MLP head (Linear dim -> ratio*dim, GELU, LayerNorm, dropout); ``None`` gives the plain
    Swin/VMamba head. ``eps`` is that of both LayerNorms (MambaOut uses 1e-6).
    """

    def __init__(self, dim: int, num_classes: int, hidden_ratio: float | None = None, drop: float = 0.0,
                 eps: float = 1e-5) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=eps)
        if hidden_ratio is None:
            self.mlp = nn.Identity()
            width = dim
        else:
            width = int(hidden_ratio * dim)
            self.mlp = nn.Sequential(nn.Linear(dim, width), nn.GELU(), nn.LayerNorm(width, eps=eps))
        self.drop = nn.Dropout(drop)
        self.width = width
        self.fc = nn.Linear(width, num_classes) if num_classes > 0 else nn.Identity()

    def reset(self, num_classes: int) -> None:
        """A new final Linear to ``num_classes`` (truncated normal, std 0.02; zero bias), on the device
        and in the dtype of the head; ``num_classes=0`` leaves the pooled, normalised features."""
        ref = self.norm.weight
        self.fc = nn.Linear(self.width, num_classes, device=ref.device, dtype=ref.dtype) if num_classes > 0 else (
            nn.Identity())
        if isinstance(self.fc, nn.Linear):
            nn.init.trunc_normal_(self.fc.weight, std=0.02)
            nn.init.zeros_(self.fc.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.drop(self.mlp(self.norm(x.mean(dim=(1, 2))))))
