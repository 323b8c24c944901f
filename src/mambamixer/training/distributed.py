"""Multi-process training on PyTorch's own engine (``torchrun`` + DistributedDataParallel).

    torchrun --nproc-per-node 2 -m mambamixer forecast --model tsm2 --data ETTh1 --horizon 96

``torchrun`` sets RANK / WORLD_SIZE / LOCAL_RANK; :func:`setup` then joins the process group
(gloo on CPU, NCCL on CUDA, one GPU per rank). Every rank draws the same permutation of the
training set each epoch (:class:`EpochSampler`, seeded by seed and epoch) and takes every
``world_size``-th sample of it, so the union of the ranks' batches is exactly the batch one
process with ``world_size`` times the per-rank batch draws, and DDP's average of the ranks'
mean gradients is that process's mean gradient. Evaluation shards the windows or images by
rank and all-reduces sums, so every item counts once and every rank sees the same metrics
(and takes the same early-stopping decision). Logging, plots and files come from rank 0.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Sampler


@dataclass(frozen=True)
class Context:
    """Where this process sits: ``rank`` of ``world_size`` processes (1 = not distributed).

    ``device`` is where this rank's collectives run (CPU for gloo, its GPU for NCCL).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def setup(device: torch.device) -> tuple[Context, torch.device]:
    """Join the process group when launched by ``torchrun``; ``(Context(), device)`` otherwise.

    Returns this rank's context and device: on CUDA each rank takes the GPU of its LOCAL_RANK.
    Joining happens once per process (later calls reuse the group, as does a group the caller
    created itself); the group is left when the process exits.
    """
    if dist.is_available() and dist.is_initialized():
        rank, world_size = dist.get_rank(), dist.get_world_size()
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
    elif launched_by_torchrun() and int(os.environ["WORLD_SIZE"]) > 1:
        rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        if device.type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        atexit.register(_leave)
    else:
        return Context(device=torch.device("cpu")), device
    if world_size == 1:
        return Context(device=torch.device("cpu")), device
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
    backend = dist.get_backend()
    comm = device if backend == "nccl" else torch.device("cpu")
    return Context(rank=rank, world_size=world_size, local_rank=local_rank, device=comm), device


def _leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: nn.Module, ctx: Context) -> nn.Module:
    """``model`` in DistributedDataParallel when distributed (it must already be on its device).

    A model whose ``skips_parameters`` is true (ViM2 / ViQS with Switch of Scans: the scans no input
    chose get no gradient) is wrapped with ``find_unused_parameters=True``; DDP would otherwise wait
    for their gradients and fail at the next step.
    """
    if not ctx.distributed:
        return model
    device = next(model.parameters()).device
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                   find_unused_parameters=bool(getattr(model, "skips_parameters", False)))


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DDP wrapper (whose attributes, e.g. ``config``, ``aux_loss``, it hides)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def all_reduce_sum(values: Sequence[float], ctx: Context) -> list[float]:
    """Sum float64 values over the ranks (a no-op for one process)."""
    if not ctx.distributed:
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def all_reduce_tensor(t: torch.Tensor, ctx: Context) -> torch.Tensor:
    """The sum of ``t`` over the ranks (a new tensor on ``t``'s device; ``t`` itself for one process)."""
    if not ctx.distributed:
        return t
    out = t.to(ctx.device, copy=True)
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out.to(t.device)


def any_rank(flags: Sequence[bool], ctx: Context) -> list[bool]:
    """For each flag, whether it is set on any rank (keeps every rank's control flow in step)."""
    if not ctx.distributed:
        return [bool(f) for f in flags]
    t = torch.tensor([int(f) for f in flags], dtype=torch.int32, device=ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]


def all_gather_object(obj: Any, ctx: Context) -> list[Any]:
    """Every rank's ``obj``, in rank order (``[obj]`` for one process)."""
    if not ctx.distributed:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, ctx: Context) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not ctx.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(ctx: Context) -> None:
    if ctx.distributed:
        dist.barrier()


def local_batch_size(global_batch: int, ctx: Context) -> int:
    """Each rank's share of ``global_batch`` (``--batch-size`` is the batch of one optimiser step)."""
    if global_batch % ctx.world_size:
        raise ValueError(f"batch size {global_batch} is not divisible by the {ctx.world_size} processes: the "
                         f"batch size is the global batch of one optimiser step, split evenly over the processes")
    return global_batch // ctx.world_size


def mix_seed(*values: int) -> int:
    """One 63-bit seed from several integers (independent streams, unlike ``seed + epoch``)."""
    entropy = [v % 2**63 for v in values]
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0] % 2**63)


def seed_rank(seed: int, ctx: Context) -> None:
    """Give ranks > 0 their own Python/NumPy/torch streams (dropout masks, augmentation).

    Called after the model is built (so that every rank starts from the same weights); rank 0
    keeps the stream a single process would have.
    """
    if ctx.rank == 0:
        return
    import random

    s = mix_seed(seed, ctx.rank)
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)


def shard_range(n: int, ctx: Context) -> range:
    """This rank's contiguous share of ``n`` evaluation items (every item on exactly one rank)."""
    return range(n * ctx.rank // ctx.world_size, n * (ctx.rank + 1) // ctx.world_size)


class EpochSampler(Sampler[int]):
    """Seeded shuffling that is the same in every process and resumable mid-epoch.

    Epoch e yields ``randperm(n, seed=mix(seed, e))[rank::world_size]`` after dropping the tail
    that does not fill a global batch (``drop_last``, when there is at least one full batch;
    otherwise the order is trimmed to a multiple of ``world_size`` so every rank takes the same
    number of steps), then skips the first ``skip_samples`` of this rank (resume). Global batch
    t is positions ``[t * B, (t + 1) * B)`` of the permutation whatever the number of
    processes, so a run may even be resumed with another process count.
    """

    def __init__(self, n: int, seed: int, ctx: Context | None = None, batch_size: int = 1,
                 drop_last: bool = True) -> None:
        self.n, self.seed = n, seed
        self.ctx = ctx or Context()
        global_batch = batch_size * self.ctx.world_size
        usable = n - n % global_batch if drop_last and n >= global_batch else n
        self.usable = usable - usable % self.ctx.world_size
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip_samples: int = 0) -> None:
        """Select the permutation of ``epoch``; the first ``skip_samples`` of this rank are left out."""
        self.epoch, self.skip = epoch, skip_samples

    def indices(self) -> list[int]:
        g = torch.Generator()
        g.manual_seed(mix_seed(self.seed, self.epoch))
        order = torch.randperm(self.n, generator=g)[: self.usable]
        return order[self.ctx.rank :: self.ctx.world_size].tolist()[self.skip :]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices())

    def __len__(self) -> int:
        return max(self.usable // self.ctx.world_size - self.skip, 0)
