"""Calendar covariates (Time-Series-Library's ``timeF``): which features each frequency has, and
their integer levels. No pandas here, so models can decode the features they are given.

Feature ``name`` at a time step is ``level / (MARK_LEVELS[name] - 1) - 0.5``, in [-0.5, 0.5],
with level 0-based (hour 0-23, day of month 0-30, ...); ``data/forecast.py: time_features``
computes them from dates, :func:`mark_levels` recovers the levels.
"""

from __future__ import annotations

import torch

# Distinct values of each feature.
MARK_LEVELS: dict[str, int] = {
    "SecondOfMinute": 60, "MinuteOfHour": 60, "HourOfDay": 24, "DayOfWeek": 7, "DayOfMonth": 31,
    "DayOfYear": 366, "MonthOfYear": 12, "WeekOfYear": 53,
}
_DAY = ("DayOfWeek", "DayOfMonth", "DayOfYear")
# Same features and order as Time-Series-Library's time_features(dates, freq).
FREQ_FEATURES: dict[str, tuple[str, ...]] = {
    "s": ("SecondOfMinute", "MinuteOfHour", "HourOfDay", *_DAY),
    "t": ("MinuteOfHour", "HourOfDay", *_DAY),
    "h": ("HourOfDay", *_DAY),
    "d": _DAY,
    "b": _DAY,
    "w": ("DayOfMonth", "WeekOfYear"),
    "m": ("MonthOfYear",),
}


def mark_names_for(n_marks: int) -> tuple[str, ...]:
    """The calendar features behind ``n_marks`` columns of ``time_features`` (every frequency
    has its own count; 'd' and 'b' share theirs and their features)."""
    for names in FREQ_FEATURES.values():
        if len(names) == n_marks:
            return names
    counts = sorted({len(v) for v in FREQ_FEATURES.values()})
    raise ValueError(f"no frequency has {n_marks} calendar features: expected one of {counts}")


def mark_levels(marks: torch.Tensor, name: str) -> torch.Tensor:
    """Integer level (hour 0-23, day of week 0-6, ...) of one calendar feature's values
    (in [-0.5, 0.5]); any shape, returns int64 of the same shape."""
    top = MARK_LEVELS[name] - 1
    return torch.round((marks + 0.5) * top).long().clamp_(0, top)
