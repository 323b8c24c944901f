"""Selective Channel Mixer: bidirectional S6 across the channel axis."""

from __future__ import annotations

from torch import Tensor, nn

from mambamixer.layers.selective_mixer import SelectiveMixer


class ChannelMixer(nn.Module):
    """Bidirectional selective mixing along a channel axis (channels have no order).

    ``channel_axis`` is the axis scanned over; the last axis holds the features of each step
    and is left out of the scan. For (batch, tokens, channels) with ``channel_axis=-1`` the input
    is transposed first (the MLP-Mixer construction: the sequence is the channels, each step's
    features are the tokens, so ``d_features`` = number of tokens). For TSM2's
    (batch, variates, patches, d_model) with ``channel_axis=1`` the scan runs over variates with
    d_model features per step.

    ``channel_group=g`` is the per-token layout of the vision models: for (..., d_features) every
    token on its own goes through Linear d_features -> 2 d_inner (x and gate), x's d_inner channels
    are scanned as d_inner / g steps of g channels, then gate and Linear back; nothing depends on
    the number of tokens. ``quasi_separable=True`` replaces the forward and reverse scans by one
    QS-S6 (both directions, one parameter set).
    """

    def __init__(self, d_features: int, channel_axis: int = -1, channel_group: int | None = None,
                 quasi_separable: bool = False, **mixer_kwargs) -> None:  # fmt: skip
        super().__init__()
        self.channel_axis, self.channel_group = channel_axis, channel_group
        orders = ("forward",) if quasi_separable else ("forward", "reverse")
        self.mixer = SelectiveMixer(d_features, scan_orders=orders, quasi_separable=quasi_separable,
                                    channel_group=channel_group, **mixer_kwargs)  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        if self.channel_group is not None:  # tokens are independent: fold them all into one axis
            return self.mixer(x.reshape(1, -1, x.shape[-1])).reshape(x.shape)
        if self.channel_axis in (-1, x.dim() - 1):
            return self._mix_along(x.transpose(-1, -2), -2).transpose(-1, -2)
        return self._mix_along(x, self.channel_axis)

    def _mix_along(self, x: Tensor, axis: int) -> Tensor:
        """Mix along ``axis`` of x (..., d_features), folding every other axis into the batch."""
        moved = x.movedim(axis, -2)
        shape = moved.shape
        y = self.mixer(moved.reshape(-1, *shape[-2:]))
        return y.reshape(shape).movedim(-2, axis)
