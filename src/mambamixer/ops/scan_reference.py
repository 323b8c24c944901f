"""The readable reference selective scan: the recurrence written out, one step at a time.

Semantics are those of ``mamba_ssm``'s ``selective_scan_ref``; every fast backend is tested
against this function. It materialises (batch, d_inner, length, d_state) tensors and is slow.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import repeat
from torch import Tensor


def prepare_scan_inputs(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, delta_bias: Tensor | None, delta_softplus: bool,
    expand_groups: bool = True,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Upcast (float32, or float64 for float64 inputs), activate delta, and give B and C a group
    axis: returns u, delta (batch, d_inner, length), A, and B, C (batch, d_inner, d_state, length)
    expanded per channel, or (batch, groups, d_state, length) with ``expand_groups=False``.
    """
    compute = torch.float64 if u.dtype == torch.float64 else torch.float32
    u, delta, A, B, C = (t.to(compute) for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.to(compute)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    B = B.unsqueeze(1) if B.dim() == 3 else B  # one B for all channels: (batch, 1, d_state, length)
    C = C.unsqueeze(1) if C.dim() == 3 else C
    if expand_groups:  # channel d reads group d // (d_inner // groups), as in mamba_ssm (a copy when groups > 1)
        d_inner = u.shape[1]
        B = repeat(B, "b g n l -> b (g h) n l", h=d_inner // B.shape[1])
        C = repeat(C, "b g n l -> b (g h) n l", h=d_inner // C.shape[1])
    return u, delta, A, B, C


def finish_scan_output(y: Tensor, u: Tensor, D: Tensor | None, z: Tensor | None, dtype: torch.dtype) -> Tensor:
    """out = (y + D u) * silu(z), cast to ``dtype``; y, u, z (batch, d_inner, length)."""
    if D is not None:
        y = y + u * D.to(y.dtype)[:, None]
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y.to(dtype)


def selective_scan_reference(
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
    """Left-to-right selective scan.

    Shapes: u, delta, z (batch, d_inner, length); A (d_inner, d_state); B, C
    (batch, d_state, length) or (batch, groups, d_state, length); D, delta_bias (d_inner,).
    Returns out (batch, d_inner, length) in u's dtype, and with ``return_last_state`` also the
    final state (batch, d_inner, d_state) in the compute dtype (float32, or float64 for
    float64 inputs).
    """
    dtype_in = u.dtype
    u, delta, A, B, C = prepare_scan_inputs(u, delta, A, B, C, delta_bias, delta_softplus)
    delta_A = torch.exp(torch.einsum("bdl,dn->bdln", delta, A))  # zero-order hold of A
    delta_B_u = torch.einsum("bdl,bdnl,bdl->bdln", delta, B, u)  # Euler step for B
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    for t in range(u.shape[2]):
        h = delta_A[:, :, t] * h + delta_B_u[:, :, t]
        ys.append(torch.einsum("bdn,bdn->bd", h, C[:, :, :, t]))
    out = finish_scan_output(torch.stack(ys, dim=2), u, D, z, dtype_in)
    return (out, h) if return_last_state else out
