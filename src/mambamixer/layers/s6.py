"""S6: Mamba's selective state space layer (projections, initialisation, scan call)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mambamixer.ops import selective_scan
from mambamixer.ops.scan_cpu_fused import is_token_major


def no_weight_decay(param: nn.Parameter) -> nn.Parameter:
    """Mark a parameter to be excluded from weight decay (as mamba_ssm does for A_log, D)."""
    param._no_weight_decay = True
    return param


class S6(nn.Module):
    """Selective SSM over the length axis: (batch, d_inner, length) -> (batch, d_inner, length).

    delta = softplus(dt_proj(x_proj_dt(x)) + dt_bias), B = x W_B, C = x W_C, A = -exp(A_log);
    h_t = exp(delta_t A) h_{t-1} + delta_t B_t x_t, y_t = C_t . h_t + D x_t.

    ``selective=False`` makes delta, B and C learned constants (input-independent): the
    non-selective ablation of the Mamba paper (an LTI S4D-like layer).
    """

    def __init__(
        self,
        d_inner: int,
        d_state: int = 16,
        dt_rank: int | None = None,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        dt_init_floor: float = 1e-4,
        selective: bool = True,
    ) -> None:
        super().__init__()
        self.d_inner, self.d_state, self.selective = d_inner, d_state, selective
        self.dt_rank = dt_rank or math.ceil(d_inner / 32)  # Mamba: ceil(d_model / 16), d_inner = 2 d_model
        if selective:
            self.x_proj = nn.Linear(d_inner, self.dt_rank + 2 * d_state, bias=False)
            self.dt_proj = nn.Linear(self.dt_rank, d_inner, bias=False)
            bound = self.dt_rank**-0.5
            nn.init.uniform_(self.dt_proj.weight, -bound, bound)
        else:
            self.B = nn.Parameter(torch.randn(d_state) / math.sqrt(d_state))
            self.C = nn.Parameter(torch.randn(d_state) / math.sqrt(d_state))
        # softplus(dt_bias) is log-uniform in [dt_min, dt_max] (Mamba's initialisation).
        dt = torch.exp(torch.rand(d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        self.dt_bias = no_weight_decay(nn.Parameter(dt + torch.log(-torch.expm1(-dt))))  # inverse softplus
        A = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(d_inner, 1)
        self.A_log = no_weight_decay(nn.Parameter(torch.log(A)))
        self.D = no_weight_decay(nn.Parameter(torch.ones(d_inner)))

    def ssm_parameters(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """delta (before bias and softplus) (batch, d_inner, length), B and C (batch, d_state, length).

        For x lying token-major in memory, delta does too (the fused scan reads it in place).
        """
        batch, _, length = x.shape
        if not self.selective:
            return (
                x.new_zeros(batch, self.d_inner, length),
                self.B.to(x.dtype)[None, :, None].expand(batch, -1, length),
                self.C.to(x.dtype)[None, :, None].expand(batch, -1, length),
            )
        if is_token_major(x):  # one GEMM, and delta comes out token-major too, as the fused scan reads it
            x_dbl = F.linear(x.transpose(1, 2), self.x_proj.weight)  # (batch, length, dt_rank + 2 d_state)
            dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=2)
            return F.linear(dt, self.dt_proj.weight).transpose(1, 2), B.transpose(1, 2), C.transpose(1, 2)
        # channel-first inputs (the vision mixers) run as a batched GEMM, without copying x
        x_dbl = torch.matmul(self.x_proj.weight, x)  # (batch, dt_rank + 2 d_state, length)
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=1)
        return torch.matmul(self.dt_proj.weight, dt), B, C

    def forward(self, x: Tensor, z: Tensor | None = None, reverse: bool = False) -> Tensor:
        """x, z (batch, d_inner, length) -> (batch, d_inner, length); z gates the output by SiLU."""
        delta, B, C = self.ssm_parameters(x)
        A = -torch.exp(self.A_log.float())
        return selective_scan(
            x, delta, A, B.contiguous(), C.contiguous(), self.D.float(), z=z,
            delta_bias=self.dt_bias.float(), delta_softplus=True, reverse=reverse,
        )  # fmt: skip

    def extra_repr(self) -> str:
        return f"d_inner={self.d_inner}, d_state={self.d_state}, dt_rank={self.dt_rank}, selective={self.selective}"
