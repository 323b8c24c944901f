"""``mamba_ssm``'s fused CUDA selective scan, when that package is installed."""

from __future__ import annotations

from torch import Tensor

try:  # optional backend: a None sentinel, and one actionable message when it is asked for
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn as _mamba_selective_scan_fn
except Exception:  # ImportError, or a CUDA/ABI mismatch raised while loading the extension
    _mamba_selective_scan_fn = None

INSTALL_HINT = (
    "the 'cuda' scan backend needs the mamba_ssm package: pip install 'mambamixer[cuda]' "
    "(or pip install mamba-ssm --no-build-isolation) on a machine with CUDA"
)


def cuda_available() -> bool:
    return _mamba_selective_scan_fn is not None


def selective_scan_cuda(
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
) -> Tensor | tuple[Tensor, Tensor]:
    """mamba_ssm's ``selective_scan_fn``; tensors must be on a CUDA device."""
    if _mamba_selective_scan_fn is None:
        raise RuntimeError(INSTALL_HINT)
    return _mamba_selective_scan_fn(
        u.contiguous(), delta.contiguous(), A.contiguous(), B.contiguous(), C.contiguous(),
        D, z.contiguous() if z is not None else None, delta_bias, delta_softplus, return_last_state,
    )  # fmt: skip
