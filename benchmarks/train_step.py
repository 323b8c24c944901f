"""Training-step variants of one model, interleaved in one process: optimiser kernel and precision, sizes,
scan backends or causal-conv implementations.

    OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 python benchmarks/train_step.py --batch 32
    OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 python benchmarks/train_step.py --model vim2_femto:switch_of_scans=true
    OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 python benchmarks/train_step.py --sizes d_state=4 d_state=2 d_state=1
    python benchmarks/train_step.py --device cuda --bf16 --model vim2_tiny --image-size 224 --in-chans 3 --batch 64 \\
        --backends cuda triton chunked
    python benchmarks/train_step.py --device cuda --bf16 --model tsm2_512:horizon=96,n_vars=7 --backends triton chunked
    python benchmarks/train_step.py --device cuda --bf16 --model tsm2_512:horizon=96,n_vars=7 \\
        --convs library conv1d causal_conv1d_fn

One forward + backward + AdamW step on random inputs (images of ``--image-size`` for a vision model,
(batch, seq_len, n_vars) windows and an MSE loss for a forecaster), for each variant: ``for-loop``
(PyTorch's default update on the CPU, one parameter at a time: the library's optimiser until 2026-11-23)
or ``fused`` (one fused kernel, now the default of ``build_optimizer``), under bfloat16 autocast or in
float32. The other variant sets use the fused step (under bfloat16 autocast with ``--bf16``):
``--sizes`` the model with each set of overrides (comma-separated ``key=value``); ``--backends`` each
scan backend (``MAMBAMIXER_SCAN_BACKEND``); ``--convs`` each causal conv of the selective mixers:
``library`` (``ops.causal_conv1d``'s dispatch: on CUDA, shifted copies in PyTorch), ``conv1d``
(PyTorch's depthwise ``F.conv1d``), ``causal_conv1d_fn`` (the causal-conv1d package, when installed).
Every variant has its own copy of the model (same initial weights); rounds of ``--steps`` steps
alternate between the variants, and the best round of each is kept, so a load that comes and goes
on a shared machine hits them alike. Ratios are against the first variant of the same run. On CUDA,
the peak memory of one step above what was allocated before it is given too.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import time
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

import mambamixer.layers.selective_mixer as selective_mixer
from mambamixer.cli import key_value
from mambamixer.models.registry import create_model, model_task
from mambamixer.ops.scan import BACKEND_ENV
from mambamixer.tasks.classify import build_vision_model, classification_loss

VARIANTS = {  # name: (fused optimiser, bfloat16 autocast)
    "for-loop, bf16": (False, True),
    "fused, bf16": (True, True),
    "fused, fp32": (True, False),
}

try:
    from causal_conv1d import causal_conv1d_fn
except ImportError:
    causal_conv1d_fn = None


def parse_model(spec: str) -> tuple[str, dict]:
    """'name:key=value,key=value' -> (name, overrides); values parsed as ``--set`` parses them."""
    name, _, rest = spec.partition(":")
    return name, dict(key_value(item) for item in filter(None, rest.split(",")))


def _conv1d(x, weight, bias=None, activation=None, time_dim=-1, reverse=False):
    """The mixers' causal conv as PyTorch's depthwise F.conv1d (left-padded), in ``ops.causal_conv1d``'s signature."""
    token_major = time_dim in (1, -2)
    x = x.transpose(1, 2) if token_major else x  # (batch, d, length)
    x = x.flip(-1) if reverse else x
    out = F.conv1d(F.pad(x, (weight.shape[1] - 1, 0)), weight[:, None], bias, groups=weight.shape[0])
    out = F.silu(out) if activation == "silu" else out
    out = out.flip(-1) if reverse else out
    return out.transpose(1, 2) if token_major else out


def _causal_conv1d_package(x, weight, bias=None, activation=None, time_dim=-1, reverse=False):
    """The mixers' causal conv through the causal-conv1d package (channel-last input read in place)."""
    token_major = time_dim in (1, -2)
    x = x.transpose(1, 2) if token_major else x  # (batch, d, length); token-major: stride 1 along d
    x = x.flip(-1) if reverse else x
    out = causal_conv1d_fn(x, weight, bias, activation=activation)
    out = out.flip(-1) if reverse else out
    return out.transpose(1, 2) if token_major else out


CONVS: dict[str, Callable | None] = {
    "library": selective_mixer.causal_conv1d,
    "conv1d": _conv1d,
    "causal_conv1d_fn": _causal_conv1d_package if causal_conv1d_fn else None,
}


@contextlib.contextmanager
def scan_backend(name: str | None) -> Iterator[None]:
    """``MAMBAMIXER_SCAN_BACKEND`` set to ``name`` inside the block (unchanged for None)."""
    old = os.environ.get(BACKEND_ENV)
    if name is not None:
        os.environ[BACKEND_ENV] = name
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(BACKEND_ENV, None)
        else:
            os.environ[BACKEND_ENV] = old


@contextlib.contextmanager
def conv_impl(name: str | None) -> Iterator[None]:
    """The selective mixers' causal conv replaced by ``CONVS[name]`` inside the block."""
    original = selective_mixer.causal_conv1d
    if name is not None:
        if CONVS.get(name) is None:
            raise SystemExit(f"conv {name!r} is not available (known: {', '.join(CONVS)}; causal_conv1d_fn needs "
                             "pip install causal-conv1d)")  # fmt: skip
        selective_mixer.causal_conv1d = CONVS[name]
    try:
        yield
    finally:
        selective_mixer.causal_conv1d = original


Run = tuple[torch.nn.Module, torch.optim.Optimizer, bool, "str | None", "str | None"]  # + bf16, backend, conv


def build_runs(args: argparse.Namespace, build: Callable[[dict], torch.nn.Module]) -> dict[str, Run]:
    """label: (model, optimiser, bf16 autocast, scan backend, conv) for each variant; one copy of the
    model each, with the same initial weights."""
    runs = {}
    if args.sizes:
        for spec in args.sizes:
            model = build(parse_model(":" + spec)[1])
            runs[spec] = (model, torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True), args.bf16, None, None)
        return runs
    base = build({})
    if args.backends or args.convs:
        for label in args.backends or args.convs:
            model = copy.deepcopy(base)
            backend, conv = (label, None) if args.backends else (None, label)
            runs[label] = (model, torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True), args.bf16, backend, conv)
        return runs
    for label, (fused, autocast) in VARIANTS.items():
        model = copy.deepcopy(base)
        runs[label] = (model, torch.optim.AdamW(model.parameters(), lr=1e-3, fused=fused or None), autocast, None, None)
    return runs


def measure(runs: dict[str, Run], step: Callable[[str], None], device: torch.device, args) -> tuple[dict, dict]:
    """Best samples/s of each variant over interleaved rounds, and (on CUDA) one step's peak memory in
    MiB above what was allocated before it."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    peak = {}
    for label in runs:  # warm-up: numba / Triton compilation, allocator
        for _ in range(2):
            step(label)
        if device.type == "cuda":
            sync()
            before = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            step(label)
            sync()
            peak[label] = (torch.cuda.max_memory_allocated(device) - before) / 2**20
    best = dict.fromkeys(runs, 0.0)
    for _ in range(args.rounds):
        for label in runs:
            sync()
            start = time.perf_counter()
            for _ in range(args.steps):
                step(label)
            sync()
            best[label] = max(best[label], args.batch * args.steps / (time.perf_counter() - start))
    return best, peak


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="vim2_femto", help="registry name, optionally ':key=value,...'")
    p.add_argument("--batch", type=int, default=32, help="samples per step (32: one process of a batch-64 DDP run)")
    p.add_argument("--steps", type=int, default=8, help="steps per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--image-size", type=int, default=28, help="vision models: square image side")
    p.add_argument("--in-chans", type=int, default=1, help="vision models: image channels")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast for --sizes, --backends and --convs")
    variants = p.add_mutually_exclusive_group()
    variants.add_argument("--sizes", nargs="+", default=None, metavar="KEY=VALUE[,...]",
                          help="compare the model under these overrides instead of the step variants")
    variants.add_argument("--backends", nargs="+", default=None, help="compare these scan backends")
    variants.add_argument("--convs", nargs="+", default=None, choices=list(CONVS), help="compare these causal convs")
    args = p.parse_args()
    torch.manual_seed(0)
    device = torch.device(args.device)
    name, overrides = parse_model(args.model)
    forecast = model_task(name) == "forecast"

    def build(extra: dict) -> torch.nn.Module:
        if forecast:
            return create_model(name, **overrides, **extra).to(device)
        small = {"stem": "conv"} if args.image_size < 64 else {}  # the small-image stem
        return build_vision_model(name, 10, args.in_chans, args.image_size,
                                  {**small, "drop_path_rate": 0.1, **overrides, **extra}).to(device)  # fmt: skip

    runs = build_runs(args, build)
    if forecast:
        cfg = next(iter(runs.values()))[0].config
        x = torch.randn(args.batch, cfg.seq_len, cfg.n_vars, device=device)
        y = torch.randn(args.batch, cfg.horizon, cfg.n_vars, device=device)
    else:
        x = torch.randn(args.batch, args.in_chans, args.image_size, args.image_size, device=device)
        y = torch.randint(0, 10, (args.batch,), device=device)

    def step(label: str) -> None:
        model, opt, bf16, backend, conv = runs[label]
        with scan_backend(backend), conv_impl(conv), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            # cross-entropy + the model's aux loss (SoS balancing), or the forecast MSE
            loss = F.mse_loss(model(x).float(), y) if forecast else classification_loss(model, x, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
        opt.step()

    best, peak = measure(runs, step, device, args)
    first = next(iter(best.values()))
    print(f"{args.model}, input {'x'.join(map(str, x.shape[1:]))}, batch {args.batch}, device {device}, "
          f"bf16 {args.bf16}, {torch.get_num_threads()} thread(s), best of {args.rounds} rounds of {args.steps} steps")
    print("| variant | params | train samples/s | vs first | step peak MiB |\n| --- | --- | --- | --- | --- |")
    for label, rate in best.items():
        params = sum(p.numel() for p in runs[label][0].parameters())
        mem = f"{peak[label]:,.0f}" if label in peak else "-"
        print(f"| {label} | {params:,} | {rate:.1f} | {rate / first:.2f}x | {mem} |", flush=True)


if __name__ == "__main__":
    main()
