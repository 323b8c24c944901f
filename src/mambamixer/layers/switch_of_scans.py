"""Switch of Scans (SoS): a router picks, per input, which scans of a mixer to compute.

    pooled input (batch, d_model) -> Linear -> logits over the candidate scans
    -> top-k candidates per input, weights k * softmax(their logits)
    -> y = sum over the chosen c of weight_c * scan_c(x)

Only the chosen scans run: the mixer groups the batch by chosen scan and each candidate scans
the inputs that chose it (``SelectiveMixer._switched_scan``). The weights sum to k, so equal
weights give the plain sum of k scans (what a fixed multi-scan mixer computes).

The router is balanced as Switch Transformer's experts are: with f_c the fraction of the
batch's (input, slot) choices that went to candidate c and P_c the mean router probability
(softmax over all candidates) of c,

    balance_loss = n_candidates * sum_c f_c P_c

which is 1 when choices and probabilities are uniform. After every forward the layer keeps its
value in ``balance_loss`` (a scalar tensor in the graph); models sum it over their routers and
expose it as ``aux_loss()`` for the training loop to add.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class SwitchOfScans(nn.Module):
    """Router over ``n_candidates`` scans, ``top_k`` chosen per input."""

    def __init__(self, d_model: int, n_candidates: int, top_k: int = 2) -> None:
        super().__init__()
        if not 1 <= top_k <= n_candidates:
            raise ValueError(f"top_k must be in [1, n_candidates={n_candidates}], got {top_k}")
        self.n_candidates, self.top_k = n_candidates, top_k
        self.router = nn.Linear(d_model, n_candidates)
        self.balance_loss: Tensor | None = None
        self.last_choice: Tensor | None = None  # (batch, top_k) candidate indices of the latest forward

    def forward(self, pooled: Tensor) -> tuple[Tensor, Tensor]:
        """pooled (batch, d_model) -> chosen candidates (batch, top_k) and their weights (batch, top_k).

        Sets ``balance_loss`` and ``last_choice``. The mixer then computes, for each candidate, its
        scan of the inputs that chose it (``SelectiveMixer._switched_scan``).
        """
        logits = self.router(pooled).float()  # (batch, n_candidates)
        top_logits, choice = logits.topk(self.top_k, dim=-1)
        weights = self.top_k * F.softmax(top_logits, dim=-1)
        fraction = F.one_hot(choice, self.n_candidates).sum(dim=(0, 1)).float() / choice.numel()
        self.balance_loss = self.n_candidates * (fraction * F.softmax(logits, dim=-1).mean(0)).sum()
        self.last_choice = choice.detach()
        return choice, weights.to(pooled.dtype)

    def __getstate__(self) -> dict:
        # the latest forward's loss is a graph node, which deepcopy and pickle refuse: copies start without it
        return {**super().__getstate__(), "balance_loss": None, "last_choice": None}

    def extra_repr(self) -> str:
        return f"n_candidates={self.n_candidates}, top_k={self.top_k}"


def balance_loss(module: nn.Module) -> Tensor:
    """Mean of the ``balance_loss`` of every SwitchOfScans inside ``module`` (latest forward); 0 without any."""
    losses = [m.balance_loss for m in module.modules() if isinstance(m, SwitchOfScans) and m.balance_loss is not None]
    if not losses:
        return torch.zeros(())
    return torch.stack(losses).mean()
