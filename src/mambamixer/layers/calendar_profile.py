"""Calendar profile: a learned per-variate offset for each value of some calendar features.

    profile = CalendarProfile(mark_names=("HourOfDay", "DayOfWeek", "DayOfMonth", "DayOfYear"),
                              features=("HourOfDay",), n_vars=7)
    x = x - profile(x_mark)        # (batch, seq_len, n_vars): the daily profile taken out
    y = backbone(x) + profile(y_mark)   # (batch, horizon, n_vars): and put back on the forecast

For each chosen feature a table of (levels, n_vars) offsets, zero at the start; the profile of a
time step is the sum of its rows in every table (the hour of day's row, the day of week's...).
With ``HourOfDay`` alone on hourly data it is the learned daily cycle of CycleNet's residual
cycle forecasting (Lin et al., NeurIPS 2024); written here as a projection of one-hot calendar
covariates, the auxiliary information that TSM2 mixes in (docs/tsm2.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mambamixer.data.calendar import MARK_LEVELS, mark_levels


class CalendarProfile(nn.Module):
    """Sum of learned per-variate offsets, one table per chosen calendar feature.

    ``mark_names`` names the columns of the marks passed to forward (``time_features`` order);
    ``features`` are the ones that get a table. forward: marks (batch, length, n_marks) ->
    (batch, length, n_vars).
    """

    def __init__(self, mark_names: Sequence[str], features: Sequence[str], n_vars: int) -> None:
        super().__init__()
        mark_names, features = tuple(mark_names), tuple(features)
        missing = [f for f in features if f not in mark_names]
        if not features or missing:
            raise ValueError(f"calendar profile features must be among this data's calendar features "
                             f"{list(mark_names)}, got {list(features)}")  # fmt: skip
        if len(set(features)) != len(features):
            raise ValueError(f"calendar profile features repeat: {list(features)}")
        self.features = features
        self.columns = [mark_names.index(f) for f in features]
        self.tables = nn.ParameterList(nn.Parameter(torch.zeros(MARK_LEVELS[f], n_vars)) for f in features)

    def forward(self, marks: Tensor) -> Tensor:
        out = None
        for name, column, table in zip(self.features, self.columns, self.tables, strict=True):
            rows = table[mark_levels(marks[..., column], name)]  # (batch, length, n_vars)
            out = rows if out is None else out + rows
        return out

    def extra_repr(self) -> str:
        return f"features={list(self.features)}, n_vars={self.tables[0].shape[1]}"
