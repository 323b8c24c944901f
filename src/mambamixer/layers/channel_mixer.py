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
    """

    def __init__(self, d_features: int, channel_axis: int = -1, **mixer_kwargs) -> None:
        super().__init__()
        self.channel_axis = channel_axis
        self.mixer = SelectiveMixer(d_features, scan_orders=("forward", "reverse"), **mixer_kwargs)

    def forward(self, x: Tensor) -> Tensor:
        if self.channel_axis in (-1, x.dim() - 1):
            return self._mix_along(x.transpose(-1, -2), -2).transpose(-1, -2)
        return self._mix_along(x, self.channel_axis)

    def _mix_along(self, x: Tensor, axis: int) -> Tensor:
        """Mix along ``axis`` of x (..., d_features), folding every other axis into the batch."""
        moved = x.movedim(axis, -2)
        shape = moved.shape
        y = self.mixer(moved.reshape(-1, *shape[-2:]))
        return y.reshape(shape).movedim(-2, axis)
