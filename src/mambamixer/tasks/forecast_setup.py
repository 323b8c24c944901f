"""The seeded model and the training loader of a forecasting run, shared by the run and its refit."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from mambamixer.data.forecast import ForecastData
from mambamixer.models.registry import create_model
from mambamixer.training import distributed
from mambamixer.training.distributed import Context, EpochSampler
from mambamixer.training.seed import seed_everything


def seeded_forecaster(model: str, fd: ForecastData, overrides: dict[str, Any], seed: int, ctx: Context,
                      dev: torch.device) -> nn.Module:  # fmt: skip
    """``model`` for ``fd``'s shapes, initialised from ``seed`` (the same weights on every rank, each
    rank then on its own dropout stream), on ``dev``; a bad override raises ``ValueError``."""
    seed_everything(seed)
    try:
        net = create_model(model, seq_len=fd.seq_len, horizon=fd.horizon, n_vars=fd.n_vars, n_marks=fd.n_marks,
                           **overrides)
    except TypeError as err:
        raise ValueError(f"bad model override for {model!r}: {err}") from err
    distributed.seed_rank(seed, ctx)
    return net.to(dev)


def training_loader(windows: Dataset, seed: int, ctx: Context, local_batch: int, dev: torch.device) -> DataLoader:
    """Batches of ``windows`` for training: shuffled by (seed, epoch), sharded by rank, the shuffled
    remainder dropped (never on val/test). The loader's own generator keeps its per-epoch seed draw
    off the global RNG (which resume restores step-exactly)."""
    sampler = EpochSampler(len(windows), seed, ctx, local_batch, drop_last=True)  # type: ignore[arg-type]
    return DataLoader(windows, batch_size=local_batch, sampler=sampler, generator=torch.Generator(),
                      pin_memory=dev.type == "cuda")
