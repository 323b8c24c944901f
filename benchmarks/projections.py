"""The stacked scans' projections (delta and x_proj of ``SelectiveMixer._stacked_scan``), old way against new.

    OMP_NUM_THREADS=1 python benchmarks/projections.py [--batch 32] [--repeats 7]

At the three token-mixer stages of ``vim2_femto`` on 28x28 images (grids 14x14, 7x7, 4x4; d_inner 32,
96, 256; four scan orders; d_state 4), forward + backward of:

- delta: each order's dt_proj (width, rank) applied to its dt rows, as the block-diagonal
  (K width, K rank) matrix expanded over the batch (``bmm``; the library until 2026-11-23)
  against the (K, width, rank) @ (batch, K, rank, length) broadcast product (now);
- x_proj: (K (rank + 2 d_state), width) @ u (batch, width, length) channel-first, as one GEMM per
  sample (``bmm``, the old way at every length) against ``selective_mixer._matmul`` (now: that at
  32 tokens or more, else one GEMM on u folded to (width, batch length)).

Times are the best of ``--repeats`` rounds, the old and new ways alternating, so that a load on
the machine hits both alike; the ratio is old / new of the same run.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable

import torch

from mambamixer.layers.selective_mixer import _matmul

STAGES = [(32, (14, 14)), (96, (7, 7)), (256, (4, 4))]  # (d_inner, grid) of vim2_femto's token mixers


def round_ms(fn: Callable[[], None], inner: int = 10) -> float:
    """Mean milliseconds of one call of fn over ``inner`` calls."""
    start = time.perf_counter()
    for _ in range(inner):
        fn()
    return (time.perf_counter() - start) / inner * 1e3


def stage_cases(width: int, grid: tuple[int, int], batch: int, k_orders: int,
                d_state: int) -> list[tuple[str, Callable[[], None], Callable[[], None]]]:  # fmt: skip
    """(label, old way, new way) for the delta and x_proj projections of one stage, forward + backward."""
    length, rank = grid[0] * grid[1], math.ceil(width / 16)
    weights = [torch.randn(width, rank, requires_grad=True) for _ in range(k_orders)]
    dt = torch.randn(batch, k_orders, rank, length, requires_grad=True)
    grad_delta = torch.randn(batch, k_orders * width, length)
    w_x = torch.randn(k_orders * (rank + 2 * d_state), width, requires_grad=True)
    u = torch.randn(batch, width, length, requires_grad=True)
    grad_x = torch.randn(batch, w_x.shape[0], length)

    def delta_old() -> None:
        w = torch.block_diag(*weights).expand(batch, -1, -1)
        torch.bmm(w, dt.reshape(batch, k_orders * rank, length)).backward(grad_delta)

    def delta_new() -> None:
        torch.matmul(torch.stack(weights), dt).view(batch, k_orders * width, length).backward(grad_delta)

    def x_old() -> None:
        torch.bmm(w_x.expand(batch, -1, -1), u).backward(grad_x)

    def x_new() -> None:
        _matmul(w_x, u).backward(grad_x)

    return [("delta", delta_old, delta_new), ("x_proj", x_old, x_new)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=32, help="images per process (32: a batch-64 DDP run)")
    p.add_argument("--orders", type=int, default=4)
    p.add_argument("--d-state", type=int, default=4)
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args()
    torch.manual_seed(0)
    k_orders, n, batch = args.orders, args.d_state, args.batch
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), batch {batch}, {k_orders} orders, "
          f"d_state {n}; forward + backward, ms (best of {args.repeats})\n")  # fmt: skip
    print("| projection | d_inner | grid | old (bmm) | new | old / new |")
    print("| --- | --- | --- | --- | --- | --- |")
    for width, grid in STAGES:
        for label, old, new in stage_cases(width, grid, batch, k_orders, n):
            old(), new()  # warm-up
            t_old, t_new = math.inf, math.inf
            for _ in range(args.repeats):  # alternate, keep the best round of each
                t_old = min(t_old, round_ms(old))
                t_new = min(t_new, round_ms(new))
            print(f"| {label} | {width} | {grid[0]}x{grid[1]} | {t_old:.2f} | {t_new:.2f} | {t_old / t_new:.2f}x |")


if __name__ == "__main__":
    main()
