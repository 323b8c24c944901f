"""ViM2 / ViQS: parameters and MACs per size, and training speed of the small sizes.

    python benchmarks/vim2.py flops                   # T/S/B of ViM2 and ViQS at 224x224, 1000 classes
    python benchmarks/vim2.py flops --models vim2_femto viqs_femto --size 28 --in-chans 1 --num-classes 10
    OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 python benchmarks/vim2.py speed   # train images/s, batch 128, 28x28

MACs: papers call them FLOPs (fvcore's convention). ``torch.utils.flop_counter`` measures the
matmuls and convolutions (2 FLOPs per MAC; halved here) but not the selective scan, a custom op.
Every scan call is counted where it enters the engine (``selective_scan``'s backend) and added
analytically, as VMamba's fvcore handle does: 9 * L * d_inner * d_state MACs per sequence (the
discretisation, the state update and the output contraction) plus 2 * L * d_inner (D term, gate).
QS-S6 runs two scans per sequence and is counted twice.

Speed: forward + backward + AdamW step on random 28x28 one-channel images, batch 128; the
median of ``--steps`` steps after one warm-up: images per second of wall clock, and images per
second of process CPU time (with one thread, what an idle machine would give; on a shared machine
the wall clock is longer).
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from mambamixer import create_model
from mambamixer.ops import scan as scan_module

SIZES = ["vim2_tiny", "vim2_small", "vim2_base", "viqs_tiny", "viqs_small", "viqs_base"]
PUBLISHED = {"vim2_tiny": 20, "vim2_small": 43, "vim2_base": 74}  # M parameters (v1; no FLOPs published)
SPEED = ["vim2_femto", "viqs_femto", "vim2_femto:switch_of_scans=True",
         "vim2_femto:scan_orders=('row','column')"]  # fmt: skip


@contextmanager
def count_scans(total: list[float]):
    """Add the analytic MACs of every selective scan run inside the block to ``total[0]``."""
    originals = dict(scan_module.BACKENDS)

    def wrap(fn):
        def counted(u, delta, A, *args, **kwargs):
            batch, d_inner, length = u.shape
            total[0] += (9 * length * d_inner * A.shape[1] + 2 * length * d_inner) * batch
            return fn(u, delta, A, *args, **kwargs)

        return counted

    scan_module.BACKENDS.update({name: wrap(fn) for name, fn in originals.items()})
    try:
        yield
    finally:
        scan_module.BACKENDS.update(originals)


def macs(model: torch.nn.Module, x: torch.Tensor) -> tuple[float, float]:
    """(measured matmul/conv MACs, analytic scan MACs) of one forward of x."""
    scans = [0.0]
    counter = FlopCounterMode(display=False)
    with counter, count_scans(scans), torch.no_grad():
        model(x)
    return counter.get_total_flops() / 2, scans[0]


def build(spec: str, **kwargs) -> torch.nn.Module:
    """``name`` or ``name:key=value,key=value`` (values are Python literals)."""
    name, _, rest = spec.partition(":")
    overrides = eval(f"dict({rest})") if rest else {}  # a benchmark's own command line, not user data
    return create_model(name, **kwargs, **overrides)


def flops_table(args: argparse.Namespace) -> None:
    print("| model | params (M) | published params (M) | measured GMACs | + scan GMACs | total GMACs |")
    print("| --- | --- | --- | --- | --- | --- |")
    for spec in args.models or SIZES:
        torch.manual_seed(0)
        model = build(spec, num_classes=args.num_classes, in_chans=args.in_chans).eval()
        params = sum(p.numel() for p in model.parameters()) / 1e6
        measured, scan = macs(model, torch.randn(1, args.in_chans, args.size, args.size))
        published = PUBLISHED.get(spec, "-") if args.size == 224 and args.num_classes == 1000 else "-"
        print(f"| {spec} | {params:.2f} | {published} | {measured / 1e9:.3f} | {scan / 1e9:.3f} | "
              f"{(measured + scan) / 1e9:.3f} |", flush=True)


def speed_table(args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    print(f"device: {device}, threads: torch {torch.get_num_threads()}, bf16: {args.bf16}, "
          f"batch {args.batch} at {args.size}x{args.size}, {args.in_chans} channel(s)")
    print("| model | params | train img/s (wall) | train img per CPU-second | peak GPU MiB |")
    print("| --- | --- | --- | --- | --- |")
    for spec in args.models or SPEED:
        torch.manual_seed(0)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        model = build(spec, num_classes=10, in_chans=args.in_chans).to(device)
        optimiser = torch.optim.AdamW(model.parameters(), lr=1e-3)
        x = torch.randn(args.batch, args.in_chans, args.size, args.size, device=device)
        y = torch.randint(0, 10, (args.batch,), device=device)
        walls, cpus = [], []
        for step in range(args.steps + 1):
            w, c = time.perf_counter(), time.process_time()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
                loss = F.cross_entropy(model(x), y) + model.aux_loss()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if step:  # the first step compiles and allocates
                walls.append(time.perf_counter() - w)
                cpus.append(time.process_time() - c)
        params = sum(p.numel() for p in model.parameters())
        peak = f"{torch.cuda.max_memory_allocated(device) / 2**20:.0f}" if device.type == "cuda" else "-"
        print(f"| {spec} | {params:,} | {args.batch / statistics.median(walls):.0f} | "
              f"{args.batch / statistics.median(cpus):.0f} | {peak} |", flush=True)
        del model, optimiser, x, y, loss  # the next model's peak must not count this one's memory
        if device.type == "cuda":
            torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["flops", "speed"])
    parser.add_argument("--models", nargs="+", default=None)
    parser.add_argument("--size", type=int, default=None, help="image size (224 for flops, 28 for speed)")
    parser.add_argument("--in-chans", type=int, default=None, help="default: 3 for flops, 1 for speed")
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--device", default="cpu", help="speed: cpu or cuda")
    parser.add_argument("--bf16", action="store_true", help="speed: bfloat16 autocast")
    args = parser.parse_args()
    if args.what == "flops":
        args.size, args.in_chans = args.size or 224, args.in_chans or 3
        flops_table(args)
    else:
        args.size, args.in_chans = args.size or 28, args.in_chans or 1
        speed_table(args)


if __name__ == "__main__":
    main()
