"""The public selective scan: argument checks, direction, and backend dispatch.

Backends (all with the signature of ``mamba_ssm``'s ``selective_scan_fn``):

- ``reference``: the readable recurrence (``scan_reference``), slow; the ground truth of tests.
- ``cpu_fused``: numba kernels for forward and backward on CPU tensors (``scan_cpu_fused``).
- ``cuda``: ``mamba_ssm``'s CUDA kernel, for CUDA tensors when that package is installed.
- ``triton``: Triton kernels for forward and backward (``scan_triton``), compiled just in time:
  CUDA tensors when ``triton`` is installed; CPU tensors only under ``TRITON_INTERPRET=1``
  (Triton's interpreter, slow: for tests).
- ``chunked``: a chunked log-depth scan in PyTorch, for any device (the last GPU fallback).

Automatic dispatch: CPU tensors -> ``cpu_fused``; CUDA tensors -> ``cuda`` if available, else
``triton`` if importable, else ``chunked``. The ``backend=`` argument, or the
``MAMBAMIXER_SCAN_BACKEND`` environment variable, overrides it.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
from torch import Tensor

from mambamixer.ops.scan_chunked import selective_scan_chunked
from mambamixer.ops.scan_cpu_fused import selective_scan_cpu_fused
from mambamixer.ops.scan_cuda import INSTALL_HINT, cuda_available, selective_scan_cuda
from mambamixer.ops.scan_reference import selective_scan_reference
from mambamixer.ops.scan_triton import check_triton_device, selective_scan_triton, triton_available, triton_interpreted

BACKENDS: dict[str, Callable[..., Tensor | tuple[Tensor, Tensor]]] = {
    "reference": selective_scan_reference,
    "cpu_fused": selective_scan_cpu_fused,
    "chunked": selective_scan_chunked,
    "cuda": selective_scan_cuda,
    "triton": selective_scan_triton,
}
_REVERSE_IN_PLACE = ("cpu_fused", "triton")  # backends that take ``reverse`` themselves (no flipped copies)
BACKEND_ENV = "MAMBAMIXER_SCAN_BACKEND"
_FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """Backends that can run on ``device``, fastest first (on CPU, ``triton`` under TRITON_INTERPRET=1 comes last)."""
    device = torch.device(device)
    if device.type == "cuda":
        return ["cuda"] * cuda_available() + ["triton"] * triton_available() + ["chunked", "reference"]
    return ["cpu_fused", "chunked", "reference"] + ["triton"] * triton_interpreted()


def _pick_backend(backend: str | None, u: Tensor) -> str:
    backend = backend or os.environ.get(BACKEND_ENV) or None
    if backend is None:
        return available_backends(u.device)[0]
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {sorted(BACKENDS)}, got {backend!r}")
    if backend == "cpu_fused" and u.device.type != "cpu":
        raise ValueError(f"backend 'cpu_fused' needs CPU tensors, got tensors on {u.device}")
    if backend == "cuda":
        if u.device.type != "cuda":
            raise ValueError(f"backend 'cuda' needs CUDA tensors, got tensors on {u.device}")
        if not cuda_available():
            raise RuntimeError(INSTALL_HINT)
    if backend == "triton":
        check_triton_device(u.device)
    return backend


def _check_shape(name: str, t: Tensor | None, expected: tuple[int, ...], names: str) -> None:
    if t is not None and tuple(t.shape) != expected:
        raise ValueError(f"{name} must have shape {names} = {expected}, got {tuple(t.shape)}")


def _check_args(u, delta, A, B, C, D, z, delta_bias) -> None:
    for name, t in (("u", u), ("delta", delta), ("A", A), ("B", B), ("C", C), ("D", D), ("z", z),
                    ("delta_bias", delta_bias)):  # fmt: skip
        if t is None:
            continue
        if not isinstance(t, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in _FLOAT_DTYPES:
            raise ValueError(f"{name} must be a floating-point tensor (float32, float64, bfloat16 or "
                             f"float16), got {t.dtype}")  # fmt: skip
        if t.device != u.device:
            raise ValueError(f"{name} is on {t.device} but u is on {u.device}; put all tensors on one device")
    if u.dim() != 3:
        raise ValueError(f"u must have shape (batch, d_inner, length), got {tuple(u.shape)}")
    batch, d_inner, length = u.shape
    if length < 1 or batch < 1 or d_inner < 1:
        raise ValueError(f"u must have batch, d_inner and length >= 1, got {tuple(u.shape)}")
    _check_shape("delta", delta, (batch, d_inner, length), "(batch, d_inner, length)")
    _check_shape("z", z, (batch, d_inner, length), "(batch, d_inner, length)")
    if A.dim() != 2 or A.shape[0] != d_inner:
        raise ValueError(f"A must have shape (d_inner, d_state) = ({d_inner}, d_state), got {tuple(A.shape)}")
    d_state = A.shape[1]
    for name, M in (("B", B), ("C", C)):
        if M.dim() == 3:
            _check_shape(name, M, (batch, d_state, length), "(batch, d_state, length)")
        elif M.dim() == 4:
            groups = M.shape[1]
            if groups < 1 or d_inner % groups:
                raise ValueError(f"{name} has {groups} groups, which must divide d_inner = {d_inner}")
            _check_shape(name, M, (batch, groups, d_state, length), "(batch, groups, d_state, length)")
        else:
            expected = f"({batch}, [groups,] {d_state}, {length})"
            raise ValueError(f"{name} must have shape (batch, d_state, length) or "
                             f"(batch, groups, d_state, length) = {expected}, got {tuple(M.shape)}")  # fmt: skip
    _check_shape("D", D, (d_inner,), "(d_inner,)")
    _check_shape("delta_bias", delta_bias, (d_inner,), "(d_inner,)")


def selective_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    reverse: bool = False,
    backend: str | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """Selective scan (Mamba's S6 recurrence), differentiable in every tensor argument.

    With dt = softplus(delta + delta_bias) (or delta + delta_bias without softplus):
        h_t = exp(dt_t * A) * h_{t-1} + dt_t * B_t * u_t,   y_t = C_t . h_t + D * u_t,
        out_t = y_t * silu(z_t)  (when z is given).

    Shapes: u, delta, z (batch, d_inner, length); A (d_inner, d_state); B, C
    (batch, d_state, length) or grouped (batch, groups, d_state, length), channel d reading
    group d // (d_inner // groups); D, delta_bias (d_inner,).
    ``reverse=True`` scans right to left (the last state is then the state after position 0).
    Returns out (batch, d_inner, length) in u's dtype, and with ``return_last_state`` the
    final state (batch, d_inner, d_state).
    """
    _check_args(u, delta, A, B, C, D, z, delta_bias)
    if A.is_complex():
        raise ValueError("A must be real; complex A is not supported")
    name = _pick_backend(backend, u)
    if name in _REVERSE_IN_PLACE:  # they reverse without flipped copies
        return BACKENDS[name](u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, reverse=reverse)
    if reverse:
        u, delta, B, C = u.flip(-1), delta.flip(-1), B.flip(-1), C.flip(-1)
        z = z.flip(-1) if z is not None else None
    result = BACKENDS[name](u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    if not reverse:
        return result
    if return_last_state:
        out, last = result
        return out.flip(-1), last
    return result.flip(-1)


def selective_scan_ref(*args, **kwargs) -> Tensor | tuple[Tensor, Tensor]:
    """``selective_scan`` on the reference backend (the ``_ref`` twin of the fast op)."""
    return selective_scan(*args, backend="reference", **kwargs)
