"""Reading a series file: a CSV of timestamps and numeric variates, checked and with its gaps
handled, and the step between its timestamps (to continue the series past its last row).

    series = read_series("my.csv", missing="ffill")
    series.dates, series.values, series.columns     # DatetimeIndex (n,), (n, k) float64, k names
    future_dates(series.dates, 24)                  # the next 24 timestamps at the series' step

Every check raises ``ValueError`` with one line naming the file, what was expected and what was
found (docs/data.md, "Input checks and missing values").
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

MISSING_POLICIES = ("error", "ffill", "interpolate")


@dataclass(frozen=True)
class Series:
    """A series file's rows: ``dates (n,)``, ``values (n, k)`` float64, finite, and the column names."""

    path: Path
    date_column: str
    dates: pd.DatetimeIndex
    values: np.ndarray
    columns: list[str]


def infer_calendar_freq(dates: pd.DatetimeIndex) -> str:
    """Calendar-feature frequency key (``time_features``) from the median step between timestamps."""
    if len(dates) < 2:
        return "h"
    seconds = float(np.median(np.diff(dates.to_numpy().astype("datetime64[s]").astype(np.int64))))
    if seconds < 60:
        return "s"
    if seconds < 3600:
        return "t"
    if seconds < 86400:
        return "h"
    if seconds < 7 * 86400:
        return "d"
    if seconds < 28 * 86400:
        return "w"
    return "m"



def _parse_dates(values: pd.Series) -> tuple[pd.DatetimeIndex, list[int]]:
    """Parse timestamps; returns the index and the positions that failed (NaT)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            parsed = pd.to_datetime(values)
        except (ValueError, TypeError, OverflowError):
            parsed = pd.to_datetime(values, errors="coerce", format="mixed")
    idx = pd.DatetimeIndex(parsed)
    bad = np.flatnonzero(idx.isna()).tolist()
    return idx, bad


def _is_numeric(series: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)


def _find_dates(df: pd.DataFrame, path: Path) -> tuple[str, pd.DatetimeIndex]:
    expected = (
        "expected a CSV with a 'date' column (or a first column of timestamps such as "
        "'2016-07-01 00:00:00') followed by numeric variate columns"
    )
    named = [c for c in df.columns if str(c).strip().lower() == "date"]
    if named:
        col = named[0]
    else:
        col = df.columns[0]
        first = df[col]
        looks_like_dates = False
        if pd.api.types.is_datetime64_any_dtype(first):
            looks_like_dates = True
        elif not _is_numeric(first) and first.notna().any():
            _, bad = _parse_dates(first.dropna().iloc[:1])
            looks_like_dates = not bad
        if not looks_like_dates:
            found = list(map(str, df.columns))
            raise ValueError(f"{path}: no date column; {expected}; found columns {found}")
    dates, bad = _parse_dates(df[col])
    if bad:
        examples = ", ".join(f"line {i + 2}: {df[col].iloc[i]!r}" for i in bad[:3])
        raise ValueError(
            f"{path}: {len(bad)} unparsable timestamp(s) in date column {str(col)!r} ({examples}); "
            f"expected timestamps such as '2016-07-01 00:00:00'"
        )
    return str(col), dates


def _numeric_values(df: pd.DataFrame, path: Path) -> pd.DataFrame:
    bad: list[str] = []
    out = {}
    for col in df.columns:
        series = df[col]
        if _is_numeric(series):
            out[col] = series.astype(np.float64)
            continue
        coerced = pd.to_numeric(series, errors="coerce") if not pd.api.types.is_bool_dtype(series) else None
        if coerced is None or (coerced.isna() & series.notna()).any():
            example = ""
            if coerced is not None:
                first_bad = series[coerced.isna() & series.notna()].iloc[0]
                example = f" (e.g. {first_bad!r})"
            bad.append(f"{col!r}{example}")
        else:
            out[col] = coerced.astype(np.float64)
    if bad:
        raise ValueError(
            f"{path}: non-numeric variate column(s) {', '.join(bad)}; every column after the date column "
            f"must hold numbers"
        )
    return pd.DataFrame(out, index=df.index)


def _handle_missing(values: pd.DataFrame, dates: pd.DatetimeIndex, missing: str, path: Path) -> np.ndarray:
    counts = values.isna().sum()
    counts = counts[counts > 0]
    if len(counts):
        if missing == "error":
            detail = ", ".join(f"{col!r}: {n}" for col, n in counts.items())
            raise ValueError(
                f"{path}: {int(counts.sum())} missing value(s) (NaN) in column(s) {detail}; pass "
                f"missing='ffill' (forward then backward fill) or missing='interpolate' (linear in time)"
            )
        empty = [str(c) for c in values.columns if values[c].isna().all()]
        if empty:
            raise ValueError(f"{path}: column(s) {empty} have no values at all; nothing to fill them from")
        if missing == "ffill":
            values = values.ffill().bfill()
        else:
            values = values.set_axis(dates, axis=0).interpolate(method="time", limit_direction="both")
        logger.info("%s: filled %d missing values with missing=%r", path.name, int(counts.sum()), missing)
    arr = values.to_numpy(dtype=np.float64)
    if not np.isfinite(arr).all():
        cols = [str(c) for c, ok in zip(values.columns, np.isfinite(arr).all(axis=0), strict=True) if not ok]
        raise ValueError(f"{path}: infinite values in column(s) {cols}; expected finite numbers")
    return arr


def read_series(path: str | os.PathLike, missing: str = "error", target_cols: Sequence[str] | None = None) -> Series:
    """Read a CSV of a date column and numeric variates (``target_cols``: keep only these).

    ``missing``: ``"error"`` (NaN cells are an error), ``"ffill"`` (forward then backward fill) or
    ``"interpolate"`` (linear in time).
    """
    path = Path(path)
    try:
        df = pd.read_csv(path, encoding="utf-8", encoding_errors="replace")
    except pd.errors.EmptyDataError as err:
        raise ValueError(f"{path}: empty file; expected a CSV with a 'date' column and numeric variates") from err
    except pd.errors.ParserError as err:
        raise ValueError(f"{path}: not a readable CSV ({err})") from err
    except OSError as err:
        raise ValueError(f"{path}: cannot read the file ({err.strerror or err})") from err
    return series_from_frame(df, path, missing, target_cols)


def series_from_frame(df: pd.DataFrame, path: str | os.PathLike = "the data frame", missing: str = "error",
                      target_cols: Sequence[str] | None = None) -> Series:
    """The checks of :func:`read_series` on a DataFrame already in memory (a ``DatetimeIndex``
    counts as its date column); ``path`` names it in errors."""
    if missing not in MISSING_POLICIES:
        raise ValueError(f"missing must be one of {MISSING_POLICIES}, got {missing!r}")
    path = Path(path)
    if isinstance(df.index, pd.DatetimeIndex):
        df = df.reset_index(names=df.index.name or "date")
    if df.shape[1] < 2:
        raise ValueError(
            f"{path}: {df.shape[1]} column(s) {list(map(str, df.columns))}; expected a 'date' column "
            f"followed by at least one numeric variate column"
        )
    date_col, dates = _find_dates(df, path)
    variates = df.drop(columns=[date_col])
    if target_cols is not None:
        wanted = [target_cols] if isinstance(target_cols, str) else list(target_cols)
        unknown = [c for c in wanted if c not in variates.columns]
        if unknown or not wanted:
            raise ValueError(
                f"{path}: target_cols {unknown or wanted} not among the variate columns "
                f"{list(map(str, variates.columns))}"
            )
        variates = variates[wanted]
    values = _handle_missing(_numeric_values(variates, path), dates, missing, path)
    return Series(path, date_col, dates, values, [str(c) for c in variates.columns])


def infer_step(dates: pd.DatetimeIndex, where: str = "the date column") -> pd.DateOffset:
    """The constant step between ``dates`` (hourly, 15-minute, daily, weekly, month starts...).

    Raises ``ValueError`` when the timestamps are not increasing at one regular step.
    """
    dates = pd.DatetimeIndex(dates)
    if len(dates) < 2:
        raise ValueError(f"{where}: {len(dates)} timestamp(s); at least 2 are needed to tell the series' step")
    steps = dates[1:] - dates[:-1]
    if (steps <= pd.Timedelta(0)).any():
        i = int(np.flatnonzero(steps <= pd.Timedelta(0))[0])
        raise ValueError(f"{where}: timestamps must increase, but {dates[i + 1]} follows {dates[i]}")
    with warnings.catch_warnings():  # pandas 3.1 warns that infer_freq will return an offset; either works below
        warnings.simplefilter("ignore")
        name = pd.infer_freq(dates) if len(dates) >= 3 else None
    if name is not None:
        return pd.tseries.frequencies.to_offset(name)
    unique = steps.unique()
    if len(unique) == 1:
        return pd.tseries.frequencies.to_offset(unique[0])
    common = pd.Series(steps).value_counts()
    shown = ", ".join(f"{step} ({n}x)" for step, n in common.head(3).items())
    raise ValueError(f"{where}: irregular timestamps; expected one constant step between rows, found steps {shown}")


def typical_step(dates: pd.DatetimeIndex) -> str | None:
    """The step of a series as pandas names it (``"h"``, ``"15min"``): :func:`infer_step`'s, or for a
    series with gaps its most common increasing step; ``None`` when it has none."""
    try:
        return step_name(infer_step(dates))
    except ValueError:
        steps = pd.Series(dates[1:] - dates[:-1])
        steps = steps[steps > pd.Timedelta(0)]
        return step_name(pd.tseries.frequencies.to_offset(steps.mode().iloc[0])) if len(steps) else None


def future_dates(dates: pd.DatetimeIndex, periods: int, step: pd.DateOffset | None = None) -> pd.DatetimeIndex:
    """The ``periods`` timestamps after the last of ``dates``, at ``step`` (default: ``infer_step``)."""
    step = infer_step(dates) if step is None else step
    return pd.date_range(start=dates[-1], periods=periods + 1, freq=step)[1:]


def step_name(step: pd.DateOffset) -> str:
    """A step as pandas writes it (``"h"``, ``"15min"``, ``"D"``, ``"W-SUN"``, ``"MS"``)."""
    return step.freqstr
