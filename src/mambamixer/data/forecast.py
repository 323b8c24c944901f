"""Long-horizon forecasting benchmarks under the standard (Time-Series-Library) protocol.

    data = load_forecast_data("ETTh1", seq_len=96, horizon=96)
    x, y, x_mark, y_mark = data.train[0]   # (96, 7), (96, 7), (96, 4), (96, 4) float32

Protocol ("M" setting, every variate is input and target):

- ETTh1/ETTh2: train/val/test = the first 12/4/4 months, row borders [0, 8640, 11520, 14400];
  ETTm1/ETTm2: the same months at 15 minutes, borders x4. Every other file: 70/10/20 by time,
  ``num_train = int(0.7 n)``, ``num_test = int(0.2 n)``, ``num_val = n - num_train - num_test``.
- Val and test windows start ``seq_len`` rows before their border, so the first target of
  each split is its first row.
- Every variate is standardised with the mean and (population) std of the training rows only.
- Window ``i`` of a split starting at row ``s``: ``x = rows[s+i : s+i+seq_len]``,
  ``y = rows[s+i+seq_len : s+i+seq_len+horizon]``; a split of ``m`` rows has
  ``m - seq_len - horizon + 1`` windows.
- Calendar covariates are Time-Series-Library's ``timeF`` features, each in [-0.5, 0.5].

See docs/data.md for the data folder, downloads and the missing-values policy.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from mambamixer.data.calendar import FREQ_FEATURES, MARK_LEVELS
from mambamixer.data.download import fetch, resolve_data_dir
from mambamixer.data.series_csv import infer_calendar_freq, read_series

__all__ = [
    "BENCHMARKS",
    "BenchmarkSpec",
    "ForecastData",
    "ForecastWindows",
    "get_benchmark",
    "list_benchmarks",
    "load_forecast_data",
    "resolve_dataset_file",
    "time_features",
]

logger = logging.getLogger(__name__)

EMBEDDED_DIR = Path(__file__).resolve().parent / "embedded"
SPLIT_KINDS = ("ett_hour", "ett_minute", "ratio")

_ETT_URL = "https://raw.githubusercontent.com/zhouhaoyi/ETDataset/main/ETT-small/{}"
# Public mirror of the Autoformer / Time-Series-Library dataset bundle.
_TSLIB_URL = "https://huggingface.co/datasets/thuml/Time-Series-Library/resolve/main/{}"


@dataclass(frozen=True)
class BenchmarkSpec:
    """One standard benchmark file: where it comes from and how it is split."""

    name: str
    filename: str
    freq: str  # calendar-feature frequency: 'h', 't' (minutes), 'd', 'w'
    split: str  # 'ett_hour', 'ett_minute' or 'ratio'
    url: str
    # Accepted sha256 digests of the file (None: unknown, downloads are not verified).
    sha256: tuple[str, ...] | None
    subdir: str  # folder of the file in the Time-Series-Library ``dataset/`` layout
    aliases: tuple[str, ...] = ()


# exchange_rate.csv and national_illness.csv: the mirror publishes them with CRLF line endings;
# the same bytes with LF line endings (as in git checkouts, and in the shared test data) are
# the first digest. Both digests were checked to be the same content (LF -> CRLF conversion).
_BENCHMARK_LIST = (
    BenchmarkSpec(
        "ETTh1", "ETTh1.csv", "h", "ett_hour", _ETT_URL.format("ETTh1.csv"),
        ("f18de3ad269cef59bb07b5438d79bb3042d3be49bdeecf01c1cd6d29695ee066",), "ETT-small",
    ),
    BenchmarkSpec("ETTh2", "ETTh2.csv", "h", "ett_hour", _ETT_URL.format("ETTh2.csv"), None, "ETT-small"),
    BenchmarkSpec(
        "ETTm1", "ETTm1.csv", "t", "ett_minute", _ETT_URL.format("ETTm1.csv"),
        ("6ce1759b1a18e3328421d5d75fadcb316c449fcd7cec32820c8dafda71986c9e",), "ETT-small",
    ),
    BenchmarkSpec("ETTm2", "ETTm2.csv", "t", "ett_minute", _ETT_URL.format("ETTm2.csv"), None, "ETT-small"),
    BenchmarkSpec(
        "Weather", "weather.csv", "t", "ratio", _TSLIB_URL.format("weather/weather.csv"),
        ("34ee981d07313e51da2a50bb600072c8ae4a69cb4b0651f4cb93a069d7a2ba63",), "weather",
    ),
    BenchmarkSpec(
        "Exchange", "exchange_rate.csv", "d", "ratio", _TSLIB_URL.format("exchange_rate/exchange_rate.csv"),
        (
            "d55e7aa2641009814a18ba3279431b13f6d413b0eab195b9ff21988d8cf94e97",
            "48b4d9d3d508f5104162e85b9a6042e3557fde11aa9f2944eba8c0d0efc89842",
        ),
        "exchange_rate", ("exchange_rate", "exchange-rate", "exchangerate"),
    ),
    BenchmarkSpec(
        "ILI", "national_illness.csv", "w", "ratio", _TSLIB_URL.format("illness/national_illness.csv"),
        (
            "8594cecb98c6f2f9dc014eca11c4d5d1e38ad5ce6ed0592d4abe65b146fce395",
            "93601f64d2566dc796ca4305adad8b8560c2db1a1ff04543c3bd813a7263570a",
        ),
        "illness", ("illness", "national_illness", "national-illness"),
    ),
    BenchmarkSpec(
        "Electricity", "electricity.csv", "h", "ratio", _TSLIB_URL.format("electricity/electricity.csv"),
        None, "electricity", ("ecl",),
    ),
    BenchmarkSpec(
        "Traffic", "traffic.csv", "h", "ratio", _TSLIB_URL.format("traffic/traffic.csv"), None, "traffic"
    ),
)
BENCHMARKS: dict[str, BenchmarkSpec] = {spec.name: spec for spec in _BENCHMARK_LIST}


def _build_aliases() -> dict[str, BenchmarkSpec]:
    table: dict[str, BenchmarkSpec] = {}
    for spec in _BENCHMARK_LIST:
        stem = spec.filename.rsplit(".", 1)[0]
        for alias in (spec.name, spec.filename, stem, *spec.aliases):
            table[alias.lower()] = spec
    return table


_ALIASES = _build_aliases()


def list_benchmarks() -> list[str]:
    """Canonical names of the built-in benchmarks."""
    return list(BENCHMARKS)


def get_benchmark(name: str) -> BenchmarkSpec | None:
    """The benchmark called ``name`` (case-insensitive, aliases allowed), else ``None``."""
    return _ALIASES.get(str(name).strip().lower())


def _known_names() -> str:
    extra = sorted({a for a in _ALIASES if a not in {s.name.lower() for s in _BENCHMARK_LIST}})
    return f"{', '.join(BENCHMARKS)} (case-insensitive; also {', '.join(extra)})"


# ---------------------------------------------------------------------------------------------
# Calendar covariates (Time-Series-Library ``timeF``)
# ---------------------------------------------------------------------------------------------

# The 0-based level of each feature (data/calendar.py); the feature is level / (levels - 1) - 0.5.
_LEVELS: dict[str, Callable[[pd.DatetimeIndex], np.ndarray]] = {
    "SecondOfMinute": lambda i: i.second.to_numpy(np.float64),
    "MinuteOfHour": lambda i: i.minute.to_numpy(np.float64),
    "HourOfDay": lambda i: i.hour.to_numpy(np.float64),
    "DayOfWeek": lambda i: i.day_of_week.to_numpy(np.float64),
    "DayOfMonth": lambda i: i.day.to_numpy(np.float64) - 1,
    "DayOfYear": lambda i: i.day_of_year.to_numpy(np.float64) - 1,
    "MonthOfYear": lambda i: i.month.to_numpy(np.float64) - 1,
    "WeekOfYear": lambda i: i.isocalendar().week.to_numpy(dtype=np.float64) - 1,
}
_FREQ_ALIASES = {"min": "t", "minute": "t", "hour": "h", "day": "d", "week": "w", "month": "m", "sec": "s"}


def _normalise_freq(freq: str) -> str:
    key = str(freq).strip().lower()
    key = _FREQ_ALIASES.get(key, key)
    if key not in FREQ_FEATURES:
        raise ValueError(f"unknown frequency {freq!r}: expected one of {sorted(FREQ_FEATURES)}")
    return key


def time_features(dates: pd.DatetimeIndex | Sequence, freq: str) -> tuple[np.ndarray, list[str]]:
    """Calendar covariates ``(n, n_marks)`` float32 in [-0.5, 0.5] and their names."""
    idx = pd.DatetimeIndex(dates)
    names = list(FREQ_FEATURES[_normalise_freq(freq)])
    if not names:
        return np.zeros((len(idx), 0), np.float32), names
    feats = np.stack([_LEVELS[n](idx) / float(MARK_LEVELS[n] - 1) - 0.5 for n in names], axis=1)
    return np.ascontiguousarray(feats, dtype=np.float32), names


# ---------------------------------------------------------------------------------------------
# Datasets
# ---------------------------------------------------------------------------------------------

class ForecastWindows(Dataset):
    """Sliding windows over one split; item ``i`` is ``(x, y, x_mark, y_mark)``.

    Shapes: ``x (seq_len, n_vars)``, ``y (horizon, n_vars)``, ``x_mark (seq_len, n_marks)``,
    ``y_mark (horizon, n_marks)``, float32 tensors that share memory with the split's arrays
    (``torch.from_numpy`` of slices, no copy): do not modify them in place.
    """

    def __init__(
        self, data: np.ndarray, marks: np.ndarray, seq_len: int, horizon: int, *, split: str, start: int
    ) -> None:
        if data.shape[0] != marks.shape[0]:
            raise ValueError(f"data has {data.shape[0]} rows but marks have {marks.shape[0]}")
        self.data = data  # (rows, n_vars) float32, standardised
        self.marks = marks  # (rows, n_marks) float32
        self.seq_len = seq_len
        self.horizon = horizon
        self.split = split
        self.start = start  # absolute row of data[0] in the file
        self._len = max(0, data.shape[0] - seq_len - horizon + 1)

    @property
    def first_target_row(self) -> int:
        """Absolute file row of the first target of window 0."""
        return self.start + self.seq_len

    @property
    def stop(self) -> int:
        """Absolute file row one past the split's last row."""
        return self.start + self.data.shape[0]

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        i = int(i)
        if i < 0:
            i += self._len
        if not 0 <= i < self._len:
            raise IndexError(f"window {i} out of range for the {self.split} split of {self._len} windows")
        mid, end = i + self.seq_len, i + self.seq_len + self.horizon
        return (
            torch.from_numpy(self.data[i:mid]),
            torch.from_numpy(self.data[mid:end]),
            torch.from_numpy(self.marks[i:mid]),
            torch.from_numpy(self.marks[mid:end]),
        )

    def __repr__(self) -> str:
        return (
            f"ForecastWindows(split={self.split!r}, rows=[{self.start}, {self.stop}), windows={self._len}, "
            f"seq_len={self.seq_len}, horizon={self.horizon})"
        )


@dataclass
class ForecastData:
    """The three splits of a forecasting dataset plus the scaler fitted on the train rows."""

    name: str
    train: ForecastWindows
    val: ForecastWindows
    test: ForecastWindows
    columns: list[str]
    mean: np.ndarray  # (n_vars,) float32, training rows only
    std: np.ndarray  # (n_vars,) float32, population std, zeros replaced by 1
    seq_len: int
    horizon: int
    freq: str
    mark_names: list[str]
    split_kind: str
    path: Path
    n_rows: int  # rows in the file
    dates: pd.DatetimeIndex = field(repr=False)  # timestamps of the rows used (up to the test end)

    @property
    def n_vars(self) -> int:
        return len(self.columns)

    @property
    def n_marks(self) -> int:
        return len(self.mark_names)

    @property
    def splits(self) -> dict[str, ForecastWindows]:
        return {"train": self.train, "val": self.val, "test": self.test}

    def _stats_like(self, arr: np.ndarray | torch.Tensor) -> tuple:
        if arr.shape[-1] != self.n_vars:
            raise ValueError(
                f"expected an array (..., {self.n_vars}) of {self.name}'s variates, got {tuple(arr.shape)}"
            )
        if isinstance(arr, torch.Tensor):
            dtype = arr.dtype if arr.is_floating_point() else torch.float32
            return (
                torch.as_tensor(self.mean, dtype=dtype, device=arr.device),
                torch.as_tensor(self.std, dtype=dtype, device=arr.device),
            )
        return self.mean, self.std

    def transform(self, arr: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """Standardise raw values ``(..., n_vars)`` with the training mean/std."""
        mean, std = self._stats_like(arr)
        return (arr - mean) / std

    def inverse_transform(self, arr: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """Map standardised values ``(..., n_vars)`` (numpy or torch) back to the file's units."""
        mean, std = self._stats_like(arr)
        return arr * std + mean

    def describe(self) -> str:
        """A short human-readable summary of the file, splits and windows."""
        lines = [
            f"{self.name}: {self.path} ({self.n_rows} rows x {self.n_vars} variates, freq {self.freq!r}, "
            f"split {self.split_kind})",
            f"  seq_len {self.seq_len}, horizon {self.horizon}; {self.n_marks} calendar covariates"
            + (f" ({', '.join(self.mark_names)})" if self.mark_names else ""),
        ]
        for split in self.splits.values():
            lines.append(
                f"  {split.split:<5} rows [{split.start}, {split.stop}) -> {len(split)} windows, "
                f"first target row {split.first_target_row}"
            )
        lines.append("  standardised with the train rows' mean/std (inverse_transform maps back)")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------

def _benchmark_file(spec: BenchmarkSpec, data_dir: str | os.PathLike | None, download: bool) -> Path:
    root = resolve_data_dir(data_dir)
    candidates = [root / spec.filename, root / spec.subdir / spec.filename]
    for path in candidates:
        if path.is_file():
            return path
    embedded = EMBEDDED_DIR / spec.filename
    if spec.name == "ETTh1" and embedded.is_file():
        logger.info("ETTh1.csv not in %s: using the copy embedded in the package (%s)", root, embedded)
        return embedded
    looked = ", ".join(str(p) for p in candidates)
    if not download:
        raise FileNotFoundError(
            f"{spec.filename} not found (looked at {looked}); download it from {spec.url} into {root}, "
            f"or point MAMBAMIXER_DATA / --data-dir at a folder that holds it"
        )
    try:
        return fetch(spec.url, root / spec.filename, spec.sha256)
    except FileNotFoundError as err:
        raise FileNotFoundError(
            f"{spec.name}: {spec.filename} is not in the data folder {root} (looked at {looked}) and "
            f"downloading it failed.\n{err}"
        ) from err


def resolve_dataset_file(
    name_or_path: str | os.PathLike, data_dir: str | os.PathLike | None = None, *, download: bool = True
) -> tuple[Path, BenchmarkSpec | None]:
    """The CSV file for a benchmark name or a path, and its benchmark spec (``None`` for user files).

    An existing path is used as is (a file named like a benchmark, e.g. ``.../ETTh1.csv``,
    gets that benchmark's protocol). A benchmark name is looked up in ``data_dir`` (resolved
    by ``resolve_data_dir``), then, for ETTh1, in the copy embedded in the package, then
    downloaded into ``data_dir`` with sha256 verification.
    """
    text = os.fspath(name_or_path)
    path = Path(text).expanduser()
    if path.is_file():
        return path, get_benchmark(path.name)
    spec = get_benchmark(text)
    if spec is not None:
        return _benchmark_file(spec, data_dir, download), spec
    kind = "no such file" if (os.sep in text or text.lower().endswith(".csv")) else "unknown dataset name"
    raise ValueError(f"{kind}: {text!r}; expected an existing CSV file or one of {_known_names()}")


def _borders(split: str, n: int, seq_len: int, horizon: int, path: Path) -> dict[str, tuple[int, int]]:
    """Row ranges ``[start, stop)`` of each split, val/test including their ``seq_len`` look-back."""
    need = seq_len + horizon
    if split in ("ett_hour", "ett_minute"):
        step = 1 if split == "ett_hour" else 4
        b = [0, 12 * 30 * 24 * step, 16 * 30 * 24 * step, 20 * 30 * 24 * step]
        if n < b[3]:
            raise ValueError(
                f"{path}: {n} rows, but the ETT protocol ({split}) uses the first {b[3]} rows "
                f"(train/val/test borders {b}); is the file truncated?"
            )
        sizes = {"train": b[1], "val": b[2] - b[1], "test": b[3] - b[2]}
    else:
        num_train, num_test = int(n * 0.7), int(n * 0.2)
        num_val = n - num_train - num_test
        b = [0, num_train, num_train + num_val, n]
        sizes = {"train": num_train, "val": num_val, "test": num_test}
    ranges = {
        "train": (0, b[1]),
        "val": (b[1] - seq_len, b[2]),
        "test": (b[2] - seq_len, b[3]),
    }
    for name, (lo, hi) in ranges.items():
        rows = hi - lo
        if lo < 0 or rows < need:
            have = sizes[name] if name == "train" else f"{sizes[name]} (+{seq_len} look-back = {rows})"
            raise ValueError(
                f"{path}: too few rows for seq_len={seq_len} + horizon={horizon}: the {name} split has "
                f"{have} rows but needs at least {need}; the file has {n} rows ({split} split: "
                f"borders {b}). Use a shorter seq_len/horizon or a longer series."
            )
    return ranges


def _check_positive_int(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def load_forecast_data(
    name_or_path: str | os.PathLike,
    seq_len: int,
    horizon: int,
    data_dir: str | os.PathLike | None = None,
    missing: str = "error",
    target_cols: Sequence[str] | None = None,
    *,
    freq: str | None = None,
) -> ForecastData:
    """Load a benchmark (``"ETTh1"``, ``"weather"``, ...) or a CSV path as train/val/test windows.

    ``data_dir``: folder of the data files (default ``$MAMBAMIXER_DATA`` or
    ``~/.cache/mambamixer/data``). ``missing``: ``"error"``, ``"ffill"`` or ``"interpolate"``.
    ``target_cols``: keep only these variate columns (default: all, the "M" setting).
    ``freq``: calendar-feature frequency (default: the benchmark's, or inferred from the dates).
    Items of ``.train/.val/.test`` are ``(x (seq_len, n_vars), y (horizon, n_vars),
    x_mark (seq_len, n_marks), y_mark (horizon, n_marks))`` float32 tensors.
    """
    seq_len = _check_positive_int("seq_len", seq_len)
    horizon = _check_positive_int("horizon", horizon)
    path, spec = resolve_dataset_file(name_or_path, data_dir)
    series = read_series(path, missing, target_cols)
    values, dates = series.values, series.dates

    n = len(values)
    split_kind = spec.split if spec is not None else "ratio"
    ranges = _borders(split_kind, n, seq_len, horizon, path)
    end = ranges["test"][1]
    train = values[: ranges["train"][1]]
    mean = train.mean(axis=0)
    std = train.std(axis=0)  # population std (ddof=0), like sklearn's StandardScaler
    std = np.where(std > 0, std, 1.0)
    scaled = np.ascontiguousarray((values[:end] - mean) / std, dtype=np.float32)

    if freq is not None:
        freq_key = _normalise_freq(freq)
    elif spec is not None:
        freq_key = spec.freq
    else:
        freq_key = infer_calendar_freq(dates)
    marks, mark_names = time_features(dates[:end], freq_key)
    splits = {
        name: ForecastWindows(scaled[lo:hi], marks[lo:hi], seq_len, horizon, split=name, start=lo)
        for name, (lo, hi) in ranges.items()
    }
    return ForecastData(
        name=spec.name if spec is not None else path.stem,
        train=splits["train"],
        val=splits["val"],
        test=splits["test"],
        columns=series.columns,
        mean=mean.astype(np.float32),
        std=std.astype(np.float32),
        seq_len=seq_len,
        horizon=horizon,
        freq=freq_key,
        mark_names=mark_names,
        split_kind=split_kind,
        path=path,
        n_rows=n,
        dates=dates[:end],
    )
