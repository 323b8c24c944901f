"""Training cost per epoch of the forecasters, measured side by side in one process.

    python benchmarks/forecast_cost.py                          # lookback 96, horizon 96, ETTh1's shapes
    python benchmarks/forecast_cost.py --seq-len 512 --models tsm2_512 patchtst
    python benchmarks/forecast_cost.py --models tsm2 tsm2:channel_mixer=false patchtst   # with overrides
    python benchmarks/forecast_cost.py --models tsm2 tsm2:batch_size=128 patchtst         # another batch size

Each model gets its default recipe's batch size and optimiser; one training step (forward,
backward, optimiser step) on random data of ETTh1's shape is timed in interleaved rounds, so a
busy machine slows every model alike, and the best round of each is kept. Seconds per epoch =
best step time x steps per epoch (ETTh1's training windows / batch size, drop_last). The ratio
column is against the reference model (PatchTST by default) measured in the same run.
"""

from __future__ import annotations

import argparse
import time

import torch

from mambamixer import create_model
from mambamixer.cli import parse_value
from mambamixer.tasks.forecast import training_defaults
from mambamixer.training.trainer import TrainConfig, build_optimizer

ETTH1_TRAIN_ROWS = 8640  # first 12 months, hourly


def make_step(spec: str, seq_len: int, horizon: int, n_vars: int):
    """A closure running one training step of ``spec`` ("name" or "name:key=value,..."), its batch size
    and parameter count. The keys are model config fields, and ``batch_size`` (default: the recipe's)."""
    name, _, rest = spec.partition(":")
    overrides = dict((k, parse_value(v)) for k, v in (kv.split("=", 1) for kv in rest.split(",") if kv))
    hp = training_defaults(name)  # a registered size without its own entry takes its family's
    batch = overrides.pop("batch_size", hp["batch_size"])
    model = create_model(name, seq_len=seq_len, horizon=horizon, n_vars=n_vars, **overrides)
    model.train()
    optimizer = build_optimizer(model, TrainConfig(lr=hp["lr"], optimizer=hp["optimizer"],
                                                   weight_decay=hp["weight_decay"]))  # fmt: skip
    x, y = torch.randn(batch, seq_len, n_vars), torch.randn(batch, horizon, n_vars)

    def step() -> None:
        loss = torch.nn.functional.mse_loss(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step, batch, sum(p.numel() for p in model.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["tsm2", "patchtst", "itransformer", "dlinear", "simba"])
    parser.add_argument("--reference", default="patchtst")
    parser.add_argument("--seq-len", type=int, default=96)
    parser.add_argument("--horizon", type=int, default=96)
    parser.add_argument("--n-vars", type=int, default=7)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per round")
    args = parser.parse_args()

    torch.manual_seed(0)
    steps = {m: make_step(m, args.seq_len, args.horizon, args.n_vars) for m in args.models}
    for step, _, _ in steps.values():  # warm-up (numba compilation, allocator)
        step()
        step()
    best = {m: float("inf") for m in args.models}
    for _ in range(args.rounds):
        for m, (step, _, _) in steps.items():
            t = time.perf_counter()
            for _ in range(args.steps):
                step()
            best[m] = min(best[m], (time.perf_counter() - t) / args.steps)
    windows = ETTH1_TRAIN_ROWS - args.seq_len - args.horizon + 1
    per_epoch = {m: best[m] * (windows // steps[m][1]) for m in args.models}
    ref = per_epoch.get(args.reference)
    print(f"lookback {args.seq_len}, horizon {args.horizon}, {args.n_vars} variates, {windows} training windows, "
          f"{torch.get_num_threads()} threads")
    print("| model | params | batch | ms/step | s/epoch | vs " + args.reference + " |")
    print("| --- | --- | --- | --- | --- | --- |")
    for m in args.models:
        ratio = f"{per_epoch[m] / ref:.2f}x" if ref else "-"
        print(f"| {m} | {steps[m][2]:,} | {steps[m][1]} | {best[m] * 1e3:.1f} | {per_epoch[m]:.1f} | {ratio} |")


if __name__ == "__main__":
    main()
