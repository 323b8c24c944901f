"""QS-S6: the non-causal selective scan with a quasi-separable mixing matrix (Hydra's construction).

    QS(x) = shift(SS(x)) + flip(shift(SS(flip(x)))) + D x

SS is the causal selective scan without its D term, flip reverses the sequence and shift moves it
one step right with a zero at position 0. Both scans share one parameter set (the projections
giving delta, B, C, and A), so a bidirectional mixer costs the parameters of one direction. Written
as a matrix, y_t = sum_j M[t, j] x_j per channel with

    M[t, j] = C_{t-1} . (prod_{k=j+1}^{t-1} exp(delta_k A)) delta_j B_j    for j < t
    M[t, j] = C_{t+1} . (prod_{k=t+1}^{j-1} exp(delta_k A)) delta_j B_j    for j > t
    M[t, t] = D

a semiseparable matrix in each triangle. The two scans run as one ``selective_scan`` call over a
batch of twice the size (the input and its flip).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mambamixer.layers.s6 import S6
from mambamixer.ops import selective_scan


class QSS6(S6):
    """Quasi-separable S6: (batch, d_inner, length) -> (batch, d_inner, length), non-causal.

    Same parameters and initialisation as :class:`S6`. ``D`` is the learned per-channel diagonal
    (Mamba's D); Hydra's data-dependent D is not used (see docs/vision.md).
    """

    def forward(self, x: Tensor, z: Tensor | None = None, reverse: bool = False) -> Tensor:
        """x, z (batch, d_inner, length) -> (batch, d_inner, length); z gates the output by SiLU."""
        if reverse:
            raise ValueError("QSS6 already scans both directions; reverse=True has no meaning for it")
        delta, B, C = self.ssm_parameters(x)  # position-wise, so those of flip(x) are their flips
        A = -torch.exp(self.A_log.float())
        out = quasi_separable_scan(x, delta, A, B, C, self.D, self.dt_bias.float())
        return out if z is None else out * F.silu(z)


def quasi_separable_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor,
                         delta_bias: Tensor | None = None) -> Tensor:  # fmt: skip
    """QS(u) = shift(SS(u)) + flip(shift(SS(flip(u)))) + D u, with softplus(delta + delta_bias) as the step.

    u, delta (batch, d_inner, length); A (d_inner, d_state); B, C (batch, [groups,] d_state, length);
    D (d_inner,). Both scans run as one ``selective_scan`` call over a batch of 2 * batch.
    """
    batch = u.shape[0]

    def both(t: Tensor) -> Tensor:  # (batch, ...) -> (2 batch, ...): the sequence and its flip
        return torch.cat((t, t.flip(-1)))

    y = selective_scan(both(u), both(delta), A, both(B), both(C), None, delta_bias=delta_bias, delta_softplus=True)
    forward, backward = y[:batch], y[batch:].flip(-1)  # backward[t] sums the inputs j >= t
    # shift right (forward) / left (backward) so that neither triangle holds the diagonal
    return F.pad(forward[..., :-1], (1, 0)) + F.pad(backward[..., 1:], (0, 1)) + u * D[:, None].to(u.dtype)
