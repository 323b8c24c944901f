"""Parameters and multiply-accumulates (MACs) of registered vision models at one input size.

    python benchmarks/flops.py                                  # MambaOut and SiMBA sizes at 224x224
    python benchmarks/flops.py --models simba_nano mambaout_nano --size 28 --in-chans 1 --num-classes 10

Papers call MACs "FLOPs" (fvcore's convention); so does the table. ``torch.utils.flop_counter``
measures the matmuls and convolutions (it reports 2 FLOPs per MAC; halved here) but cannot see
three things, which are added analytically and shown in their own columns:
- the selective scan (a custom op): 9 * L * d_inner * d_state per S6 call plus 2 * L * d_inner for
  D and the gate, added as MACs, as VMamba's fvcore handle for the scan does (comparable with the
  vision-Mamba papers' tables rather than a strict MAC count, which would be about half);
- EinFFT's complex products: counted once per complex multiply-accumulate, which costs 4 real
  ones, so 3 more are added per counted complex MAC;
- the FFTs: 5 N log2 N real FLOPs per complex transform of length N (radix-2 estimate), halved.
"""

from __future__ import annotations

import argparse
import math

import torch
from torch.utils.flop_counter import FlopCounterMode

from mambamixer import create_model
from mambamixer.layers.einfft import EinFFT
from mambamixer.layers.s6 import S6

DEFAULT_MODELS = ["mambaout_femto", "mambaout_kobe", "mambaout_tiny", "mambaout_small", "mambaout_base",
                  "simba_s", "simba_b", "simba_l"]  # fmt: skip
# Published (params M, GMACs) at 224: paper-notes (MambaOut table 1; SiMBA's EinFFT rows).
PUBLISHED = {"mambaout_femto": (7.3, 1.2), "mambaout_kobe": (9.1, 1.5), "mambaout_tiny": (26.5, 4.5),
             "mambaout_small": (48.5, 9.0), "mambaout_base": (84.8, 15.8), "simba_s": (15.3, 2.4),
             "simba_b": (22.8, 5.2), "simba_l": (36.6, 9.6)}  # fmt: skip


def count(model: torch.nn.Module, x: torch.Tensor) -> dict[str, float]:
    """MACs of one forward of ``x``: measured, plus the scan, complex-product and FFT corrections."""
    extra = {"scan": 0.0, "fft": 0.0, "complex": 0.0}
    names = {m: f"{type(model).__name__}.{n}" for n, m in model.named_modules()}  # the counter's keys
    einfft_names = []

    def on_s6(module: S6, args: tuple, _out) -> None:
        batch, d_inner, length = args[0].shape
        extra["scan"] += (9 * length * d_inner * module.d_state + 2 * length * d_inner) * batch

    def on_einfft(module: EinFFT, args: tuple, _out) -> None:
        batch, length, dim = args[0].shape
        einfft_names.append(names[module])
        sizes = [length] + ([module.num_blocks] if module.fft_over_blocks else [])
        for n in sizes:  # forward and inverse transform of every other axis' lines
            extra["fft"] += 2 * 5 * n * math.log2(max(n, 2)) * batch * length * dim / n / 2

    hooks = [m.register_forward_hook(on_s6) for m in model.modules() if isinstance(m, S6)]
    hooks += [m.register_forward_hook(on_einfft) for m in model.modules() if isinstance(m, EinFFT)]
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    per_module = counter.get_flop_counts()
    complex_macs = sum(sum(per_module.get(n, {}).values()) for n in einfft_names) / 2
    extra["complex"] = 3 * complex_macs
    measured = counter.get_total_flops() / 2
    return {"measured": measured, **extra, "total": measured + sum(extra.values())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--in-chans", type=int, default=3)
    parser.add_argument("--num-classes", type=int, default=1000)
    args = parser.parse_args()
    print("| model | params (M) | measured GMACs | + scan | + EinFFT complex | + FFT | total GMACs "
          "| published params / GMACs |")
    print("|" + " --- |" * 8)
    for name in args.models:
        torch.manual_seed(0)
        model = create_model(name, num_classes=args.num_classes, in_chans=args.in_chans).eval()
        params = sum(p.numel() for p in model.parameters()) / 1e6
        c = {k: v / 1e9 for k, v in count(model, torch.randn(1, args.in_chans, args.size, args.size)).items()}
        pub = PUBLISHED.get(name) if args.size == 224 and args.num_classes == 1000 else None
        pub_text = f"{pub[0]}M / {pub[1]}G" if pub else "-"
        print(f"| {name} | {params:.2f} | {c['measured']:.3f} | {c['scan']:.3f} | {c['complex']:.3f} | "
              f"{c['fft']:.3f} | {c['total']:.3f} | {pub_text} |", flush=True)


if __name__ == "__main__":
    main()
