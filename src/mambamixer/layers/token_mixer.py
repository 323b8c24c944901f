"""Selective Token Mixer: S6 across the token axis."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from mambamixer.layers.selective_mixer import SelectiveMixer


class TokenMixer(nn.Module):
    """Mixes tokens of (..., tokens, d_model) -> (..., tokens, d_model).

    Leading axes are folded into the batch. ``bidirectional=False`` gives a causal mixer (token
    t sees tokens <= t); ``True`` adds a reversed scan; ``scan_orders`` overrides both (2D orders
    for image grids).
    """

    def __init__(self, d_model: int, bidirectional: bool = False, scan_orders: Sequence[str] | None = None,
                 **mixer_kwargs) -> None:  # fmt: skip
        super().__init__()
        if scan_orders is None:
            scan_orders = ("forward", "reverse") if bidirectional else ("forward",)
        self.mixer = SelectiveMixer(d_model, scan_orders=scan_orders, **mixer_kwargs)

    def forward(self, x: Tensor, grid: tuple[int, int] | None = None) -> Tensor:
        lead = x.shape[:-2]
        y = self.mixer(x.reshape(-1, *x.shape[-2:]), grid)
        return y.reshape(*lead, *y.shape[-2:])
