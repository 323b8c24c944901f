"""The MambaMixer stack: token mixer then channel mixer per block, joined by weighted averaging.

Wiring (paper-notes): with y^(0) the embedded input and y_T^(i), y_C^(i) the outputs of block
i's token and channel mixers,
    x_T^(l) = sum_{i<l} alpha_{l,i} y_T^(i) + sum_{i<l} beta_{l,i} y_C^(i)
    x_C^(l) = sum_{i<=l} theta_{l,i} y_T^(i) + sum_{i<l} gamma_{l,i} y_C^(i)
(y^(0) counts in both sums; it gets one weight). Every mixer is pre-norm and residual:
y = x + Dropout(Mixer(Norm(x))). Listing the outputs in the order they are produced,
[y^(0), y_T^(1), y_C^(1), y_T^(2), ...], each mixer's input is a learnable weighted sum of the
list so far, initialised one-hot on the newest entry: the stack starts as a plain residual
network. The stack's output is one more weighted average over every output.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import Tensor, nn

from mambamixer.layers.drop_path import drop_path as _drop_path
from mambamixer.layers.weighted_average import WeightedAverage


class MambaMixer(nn.Module):
    """(..., d_model) -> (..., d_model), any leading shape the mixers understand.

    ``token_mixer()`` / ``channel_mixer()`` build one mixer each (modules mapping a tensor to a
    tensor of the same shape); ``channel_mixer=None`` gives token-mixer-only blocks.
    ``weighted_average=False`` gives the plain residual stack (the ablation).
    ``token_mixers_per_block`` token mixers precede each channel mixer (ViM2's stages have twice as
    many token mixers as channel mixers). ``drop_path`` is the stochastic-depth rate of every
    mixer's branch, one number or one per mixer.
    """

    def __init__(
        self,
        n_blocks: int,
        d_model: int,
        token_mixer: Callable[[], nn.Module],
        channel_mixer: Callable[[], nn.Module] | None = None,
        dropout: float = 0.0,
        weighted_average: bool = True,
        norm: Callable[[int], nn.Module] = nn.LayerNorm,
        token_mixers_per_block: int = 1,
        drop_path: float | Sequence[float] = 0.0,
    ) -> None:
        super().__init__()
        self.use_weighted_average = weighted_average
        mixers, self.is_token_mixer = [], []
        for _ in range(n_blocks):
            for _ in range(token_mixers_per_block):
                mixers.append(token_mixer())
                self.is_token_mixer.append(True)
            if channel_mixer is not None:
                mixers.append(channel_mixer())
                self.is_token_mixer.append(False)
        self.mixers = nn.ModuleList(mixers)
        self.norms = nn.ModuleList(norm(d_model) for _ in mixers)
        self.dropout = nn.Dropout(dropout)
        single = isinstance(drop_path, (int, float))
        rates = [float(drop_path)] * len(mixers) if single else [float(p) for p in drop_path]
        if len(rates) != len(mixers) or any(not 0.0 <= p < 1.0 for p in rates):
            raise ValueError(f"drop_path must be one rate in [0, 1) or one per mixer ({len(mixers)}), got {drop_path}")
        self.drop_path = rates
        # averages[k] forms the input of mixer k from the k + 1 outputs before it; the last forms the output.
        n = len(mixers)
        self.averages = nn.ModuleList(WeightedAverage(k + 1) for k in range(n + 1)) if weighted_average else None

    def forward(self, x: Tensor, **token_mixer_kwargs) -> Tensor:
        """``token_mixer_kwargs`` (e.g. ``grid`` for 2D scans) go to the token mixers only."""
        outputs = [x]
        for k, (mixer, norm) in enumerate(zip(self.mixers, self.norms, strict=True)):
            h = self.averages[k](outputs) if self.averages is not None else outputs[-1]
            kwargs = token_mixer_kwargs if self.is_token_mixer[k] else {}
            branch = _drop_path(self.dropout(mixer(norm(h), **kwargs)), self.drop_path[k], self.training)
            outputs.append(h + branch)
        return self.averages[-1](outputs) if self.averages is not None else outputs[-1]
