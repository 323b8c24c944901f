"""Selective-scan benchmark: every backend, and mambapy's parallel scan as the baseline.

    python benchmarks/scan.py [--repeats 5] [--shapes 8,256,384,16 ...] [--no-z] [--json out.json]
    python benchmarks/scan.py --shapes vim2_femto --no-z --no-reference   # ViM2's own scan calls

Times are the minimum over repeats (robust to other load on the machine) of forward, and of
forward+backward, at (batch, length, d_inner, d_state[, groups]); on CUDA also the peak memory of
one forward+backward above the inputs (gradients included). With groups, B and C are
(batch, groups, d_state, length), as the stacked scans of the vision models call it. Ratios are
against mambapy's pscan and against the sequential PyTorch loop (the ``reference`` backend),
measured in the same run; on CUDA the ``triton`` backend (when triton is installed) is also compared
with ``chunked`` and with ``cuda`` (``mamba_ssm``), in time and memory. To compare two versions of
the kernel, run the script once with each on ``PYTHONPATH``, alternating.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch
import torch.nn.functional as F

from mambamixer.ops import selective_scan

DEFAULT_SHAPES = [(8, 256, 384, 16), (32, 96, 128, 16), (4, 2048, 256, 16)]
# The scan calls of one vim2_femto training step at 28x28 on one of two DDP processes (32 images):
# its token mixers' 4 stacked orders at 14x14, 7x7 and 4x4, and its channel mixers' 2 directions.
PRESETS = {"vim2_femto": [(32, 196, 128, 4, 4), (32, 49, 384, 4, 4), (1568, 12, 32, 4, 2), (32, 16, 1024, 4, 4),
                          (512, 32, 32, 4, 2)]}  # fmt: skip

try:
    from mambapy.pscan import pscan
except ImportError:
    pscan = None


def make_inputs(batch: int, length: int, d_inner: int, d_state: int, groups: int | None, with_z: bool,
                device: str) -> dict[str, torch.Tensor]:  # fmt: skip
    g = torch.Generator().manual_seed(0)
    bc = (batch, d_state, length) if groups is None else (batch, groups, d_state, length)
    t = {
        "u": torch.randn(batch, d_inner, length, generator=g),
        "delta": torch.randn(batch, d_inner, length, generator=g) * 0.5 - 2.0,
        "A": -torch.arange(1, d_state + 1, dtype=torch.float32).repeat(d_inner, 1),
        "B": torch.randn(*bc, generator=g),
        "C": torch.randn(*bc, generator=g),
        "D": torch.ones(d_inner),
        "z": torch.randn(batch, d_inner, length, generator=g),
        "delta_bias": torch.zeros(d_inner),
    }
    if not with_z:
        del t["z"]
    return {k: v.to(device).requires_grad_() for k, v in t.items()}


def mambapy_scan(u, delta, A, B, C, D, delta_bias, z=None):
    """The same S6 computation through mambapy's pscan, in its (batch, length, ...) layout."""
    dt = F.softplus(delta + delta_bias[:, None]).transpose(1, 2)  # (b, l, d)
    x = u.transpose(1, 2)
    decay = torch.exp(dt.unsqueeze(-1) * A)  # (b, l, d, n)
    if B.dim() == 4:  # grouped: every channel gets its group's B and C, (b, l, d, n)
        B, C = (t.repeat_interleave(u.shape[1] // t.shape[1], dim=1).permute(0, 3, 1, 2) for t in (B, C))
    else:
        B, C = (t.transpose(1, 2).unsqueeze(2) for t in (B, C))
    hs = pscan(decay, (dt * x).unsqueeze(-1) * B)
    y = (hs * C).sum(-1) + D * x
    return (y if z is None else y * F.silu(z.transpose(1, 2))).transpose(1, 2)


def timed(fn, repeats: int, backward: bool, device: str) -> float:
    best = float("inf")
    for _ in range(repeats + 1):  # the first run warms up (and compiles numba kernels)
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        if backward:
            fn().sum().backward()
        else:
            with torch.no_grad():
                fn()
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def peak_memory_mib(fn, inputs: dict[str, torch.Tensor], device: str) -> float | None:
    """Peak memory of one forward+backward above what was allocated before it (the inputs), in MiB;
    the gradients of the inputs count (they are freed first). None off CUDA."""
    if device != "cuda":
        return None
    for t in inputs.values():
        t.grad = None
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn().sum().backward()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 2**20


def run(shapes, repeats: int, device: str, include_reference: bool, with_z: bool = True) -> list[dict]:
    from mambamixer.ops import available_backends

    rows = []
    for shape in shapes:
        inputs = make_inputs(*shape[:4], shape[4] if len(shape) > 4 else None, with_z, device)
        methods = {f"selective_scan[{b}]": b for b in available_backends(device)}
        if not include_reference:
            methods.pop("selective_scan[reference]")
        fns = {
            name: (lambda b=b, inputs=inputs: selective_scan(**inputs, delta_softplus=True, backend=b))
            for name, b in methods.items()
        }
        if pscan is not None:
            fns["mambapy.pscan"] = lambda inputs=inputs: mambapy_scan(**inputs)
        for name, fn in fns.items():
            row = {"shape": list(shape), "method": name}
            row["forward_s"] = timed(fn, repeats, False, device)
            row["forward_backward_s"] = timed(fn, max(1, repeats // 2) if "reference" in name else repeats, True,
                                              device)  # fmt: skip
            row["peak_mib"] = peak_memory_mib(fn, inputs, device)
            rows.append(row)
            mem = f"   peak {row['peak_mib']:9.1f} MiB" if row["peak_mib"] is not None else ""
            print(f"{str(shape):>22} {name:<28} fwd {row['forward_s'] * 1e3:9.2f} ms   "
                  f"fwd+bwd {row['forward_backward_s'] * 1e3:9.2f} ms{mem}", flush=True)  # fmt: skip
    return rows


def ratios(rows: list[dict]) -> list[str]:
    lines = []
    for shape in sorted({tuple(r["shape"]) for r in rows}):
        by = {r["method"]: r for r in rows if tuple(r["shape"]) == shape}
        fused = next((by[m] for m in ("selective_scan[cpu_fused]", "selective_scan[cuda]", "selective_scan[triton]",
                                      "selective_scan[chunked]") if m in by), None)  # fmt: skip
        for base_name in ("mambapy.pscan", "selective_scan[reference]"):
            base = by.get(base_name)
            if base and fused and base is not fused:
                fwd = base["forward_s"] / fused["forward_s"]
                both = base["forward_backward_s"] / fused["forward_backward_s"]
                lines.append(f"{str(shape):>22} {fused['method']} vs {base_name}: forward {fwd:.1f}x, "
                             f"forward+backward {both:.1f}x faster")  # fmt: skip
        triton = by.get("selective_scan[triton]")
        for base_name in ("selective_scan[chunked]", "selective_scan[cuda]"):  # targets: >= 10x; <= 1.3x / 1.5x
            base = by.get(base_name)
            if triton and base:
                mem = (f", memory {triton['peak_mib'] / base['peak_mib']:.2f}x of it"
                       if triton["peak_mib"] and base["peak_mib"] else "")  # fmt: skip
                fwd = triton["forward_s"] / base["forward_s"]
                both = triton["forward_backward_s"] / base["forward_backward_s"]
                lines.append(f"{str(shape):>22} triton vs {base_name}: time forward {fwd:.2f}x, "
                             f"forward+backward {both:.2f}x of it{mem}")  # fmt: skip
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--shapes", nargs="*", default=None,
                        help=f"batch,length,d_inner,d_state[,groups], or a preset: {', '.join(PRESETS)}")
    parser.add_argument("--no-z", action="store_true", help="no SiLU gate in the scan (as the vision models call it)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-reference", action="store_true", help="skip the slow sequential loop")
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    args = parser.parse_args()
    shapes = DEFAULT_SHAPES
    if args.shapes:
        shapes = [shape for s in args.shapes
                  for shape in (PRESETS[s] if s in PRESETS else [tuple(int(v) for v in s.split(","))])]  # fmt: skip
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, device {args.device}, mambapy {'yes' if pscan else 'not installed'}")
    rows = run(shapes, args.repeats, args.device, not args.no_reference, not args.no_z)
    print("\nratios (same run):")
    for line in ratios(rows):
        print(line)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)


if __name__ == "__main__":
    main()
