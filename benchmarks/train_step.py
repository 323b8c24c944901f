"""Training-step variants of one model, interleaved in one process: optimiser kernel and precision, or sizes.

    OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 python benchmarks/train_step.py --batch 32
    OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 python benchmarks/train_step.py --model vim2_femto:switch_of_scans=true
    OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 python benchmarks/train_step.py --sizes d_state=4 d_state=2 d_state=1

One forward + backward + AdamW step on random 28x28 one-channel images, for each variant:
``for-loop`` (PyTorch's default update on the CPU, one parameter at a time: the library's
optimiser until 2026-11-23) or ``fused`` (one fused kernel, now the default of
``build_optimizer``), under bfloat16 autocast or in float32. With ``--sizes``, the variants are instead the model with
each set of overrides (comma-separated ``key=value``), every one with the fused float32 step.
Every variant has its own copy of the model (same initial weights); rounds of ``--steps`` steps
alternate between the variants, and the best round of each is kept, so a load that comes and goes
on a shared machine hits them alike. Ratios are against the first variant of the same run.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from mambamixer import create_model
from mambamixer.cli import key_value
from mambamixer.tasks.classify import classification_loss

VARIANTS = {  # name: (fused optimiser, bfloat16 autocast)
    "for-loop, bf16": (False, True),
    "fused, bf16": (True, True),
    "fused, fp32": (True, False),
}


def parse_model(spec: str) -> tuple[str, dict]:
    """'name:key=value,key=value' -> (name, overrides); values parsed as ``--set`` parses them."""
    name, _, rest = spec.partition(":")
    return name, dict(key_value(item) for item in filter(None, rest.split(",")))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="vim2_femto", help="registry name, optionally ':key=value,...'")
    p.add_argument("--batch", type=int, default=32, help="images per step (32: one process of a batch-64 DDP run)")
    p.add_argument("--steps", type=int, default=8, help="steps per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--sizes", nargs="+", default=None, metavar="KEY=VALUE[,...]",
                   help="compare the model under these overrides (fused AdamW, float32) instead of the step variants")
    args = p.parse_args()
    torch.manual_seed(0)
    name, overrides = parse_model(args.model)

    def build(extra: dict) -> torch.nn.Module:
        return create_model(name, num_classes=10, in_chans=1, stem="conv", drop_path_rate=0.1, **overrides, **extra)

    runs, bf16 = {}, {}
    if args.sizes:
        for spec in args.sizes:
            model = build(parse_model(":" + spec)[1])
            runs[spec], bf16[spec] = (model, torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)), False
    else:
        base = build({})
        for label, (fused, autocast) in VARIANTS.items():
            model = copy.deepcopy(base)
            runs[label] = (model, torch.optim.AdamW(model.parameters(), lr=1e-3, fused=fused or None))
            bf16[label] = autocast
    x, y = torch.randn(args.batch, 1, 28, 28), torch.randint(0, 10, (args.batch,))

    def step(label: str) -> None:
        model, opt = runs[label]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16[label]):
            loss = classification_loss(model, x, y)  # cross-entropy + the model's aux loss (SoS balancing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    best = dict.fromkeys(runs, 0.0)
    for label in runs:  # warm-up: numba compilation, allocator
        for _ in range(2):
            step(label)
    for _ in range(args.rounds):
        for label in runs:
            start = time.perf_counter()
            for _ in range(args.steps):
                step(label)
            best[label] = max(best[label], args.batch * args.steps / (time.perf_counter() - start))
    first = next(iter(best.values()))
    print(f"{args.model}, batch {args.batch}, {torch.get_num_threads()} thread(s), best of {args.rounds} rounds")
    print("| variant | params | train img/s | vs first |\n| --- | --- | --- | --- |")
    for label, rate in best.items():
        params = sum(p.numel() for p in runs[label][0].parameters())
        print(f"| {label} | {params:,} | {rate:.1f} | {rate / first:.2f}x |")


if __name__ == "__main__":
    main()
