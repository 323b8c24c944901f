"""Milliseconds per training step of one model under DDP, as a Fashion-MNIST run takes it.

    OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 torchrun --standalone --nproc-per-node 2 benchmarks/ddp_step.py \
        --model vim2_femto:switch_of_scans=true

Each process: forward + backward of ``classification_loss`` on its 32 random 28x28 images, the
per-step flag all-reduce of ``fit``, the fused AdamW step, wrapped in DDP as ``distributed.wrap``
wraps it (gloo on the CPU). Prints rank 0's mean over ``--steps`` steps after a warm-up. To compare
two versions of the library, run it once with each on ``PYTHONPATH``, alternating, in the same
session (the machine's speed drifts by several percent over minutes).
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.distributed as dist
from train_step import parse_model  # benchmarks/ is the script's folder, so on sys.path

from mambamixer import create_model
from mambamixer.tasks.classify import classification_loss
from mambamixer.training import distributed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="vim2_femto", help="registry name, optionally ':key=value,...'")
    p.add_argument("--batch", type=int, default=32, help="images per process and step")
    p.add_argument("--steps", type=int, default=40)
    args = p.parse_args()
    name, overrides = parse_model(args.model)
    torch.set_num_threads(1)
    ctx, device = distributed.setup(torch.device("cpu"))
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_chans=1, stem="conv", drop_path_rate=0.1, **overrides)
    net = distributed.wrap(model, ctx)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    torch.manual_seed(ctx.rank)
    x, y = torch.randn(args.batch, 1, 28, 28), torch.randint(0, 10, (args.batch,))

    def step() -> None:
        loss = classification_loss(net, x, y, label_smoothing=0.1)
        distributed.any_rank([False, False], ctx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss.item()

    for _ in range(5):
        step()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    ms = (time.perf_counter() - start) / args.steps * 1e3
    if ctx.is_main:
        unused = getattr(net, "find_unused_parameters", False)
        print(f"{args.model}: {ms:.1f} ms per step, {ctx.world_size} process(es), {args.batch} images each, "
              f"find_unused_parameters={unused}")
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
