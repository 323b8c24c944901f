"""The Mamba-style mixing layer shared by the token and channel mixers.

    x -> Linear (d_model -> 2 d_inner) -> (x, z)
    for each scan order: reorder x -> causal depthwise conv -> SiLU -> S6 -> restore order
    sum of the scans * SiLU(z) -> Linear (d_inner -> d_model)

Each scan order has its own conv and S6 parameters; the gate z is shared (paper-notes,
MambaMixer). With one 'forward' order this is exactly Mamba's block.

Options for the vision models (ViM2, ViQS; docs/vision.md), all off by default:

- ``conv_2d``: one depthwise (d_conv x d_conv) conv over the (height, width) grid, shared by all
  scans and applied before any reordering (VMamba's SS2D), instead of a causal conv per scan.
- ``quasi_separable``: each scan order runs a QS-S6 (layers/qs_s6.py): forward and backward scans
  with one parameter set, so ('row', 'column') covers four directions with two parameter sets.
- ``sos_top_k``: Switch of Scans (layers/switch_of_scans.py): a router on the pooled input picks
  the top-k scan orders per input; only those are computed.
- ``out_norm``: LayerNorm over d_inner of the summed scans, before the gate (VMamba's SS2D), so
  the gate sees the same scale whatever the number of scans summed.
- ``channel_group``: the scan runs across the channel axis instead of the tokens: each token's
  d_inner channels are read as a sequence of d_inner / channel_group steps of channel_group
  features (the vision channel mixer; image-size-agnostic, every token on its own).

Speed on CPU: the conv runs token-major (batch, length, d_inner) in one fused kernel with the
SiLU (``ops.causal_conv1d``), and the reversed order's conv and scan run right to left in
token order instead of on flipped copies; the gate is applied inside each scan (the sum of gated
scans equals the gated sum), so no element-wise kernels run on the scans' outputs. The vision
options run every scan order of a mixer as one scan call on the orders stacked along the
channels (``_stacked_scan``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mambamixer.layers.depthwise_conv import DepthwiseConv2d
from mambamixer.layers.qs_s6 import QSS6, quasi_separable_scan
from mambamixer.layers.s6 import S6
from mambamixer.layers.scan_order import ScanOrder
from mambamixer.layers.switch_of_scans import SwitchOfScans
from mambamixer.ops import selective_scan
from mambamixer.ops.causal_conv1d import causal_conv1d


class SelectiveMixer(nn.Module):
    """Mixes the length axis of (batch, length, d_model) -> (batch, length, d_model)."""

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        expand: float = 2,
        d_conv: int = 4,
        scan_orders: Sequence[str] = ("forward",),
        dt_rank: int | None = None,
        bias: bool = False,
        selective: bool = True,
        d_inner: int | None = None,
        conv_2d: bool = False,
        quasi_separable: bool = False,
        sos_top_k: int | None = None,
        channel_group: int | None = None,
        out_norm: bool = False,
    ) -> None:
        super().__init__()
        self.d_inner = d_inner or int(expand * d_model)
        self.orders = [ScanOrder(name) for name in scan_orders]
        if not self.orders:
            raise ValueError("scan_orders must name at least one scan order")
        if channel_group is not None and (channel_group < 1 or self.d_inner % channel_group):
            raise ValueError(f"channel_group must divide d_inner = {self.d_inner}, got {channel_group}")
        if channel_group is not None and (conv_2d or sos_top_k or out_norm or any(o.is_2d for o in self.orders)):
            raise ValueError("a scan across channels takes 1D scan orders, no conv_2d, out_norm or Switch of Scans")
        if sos_top_k and not conv_2d and d_conv > 0:
            raise ValueError("Switch of Scans needs conv_2d=True or d_conv=0 (no causal conv per scan order)")
        if conv_2d and d_conv % 2 == 0:
            raise ValueError(f"conv_2d needs an odd kernel (d_conv) to keep the grid centred, got {d_conv}")
        self.channel_group, self.quasi_separable = channel_group, quasi_separable
        width = channel_group or self.d_inner  # features per step of the S6
        dt_rank = dt_rank or math.ceil((channel_group or d_model) / 16)
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias)
        self.conv2d = DepthwiseConv2d(width, d_conv) if conv_2d else None
        self.convs = None  # one causal conv per scan order, run in that order's direction
        if not conv_2d and d_conv > 0:
            self.convs = nn.ModuleList(nn.Conv1d(width, width, d_conv, groups=width) for _ in self.orders)
        ssm = QSS6 if quasi_separable else S6
        self.ssms = nn.ModuleList(ssm(width, d_state, dt_rank=dt_rank, selective=selective) for _ in self.orders)
        self.switch = SwitchOfScans(d_model, len(self.orders), sos_top_k) if sos_top_k else None
        self.out_norm = nn.LayerNorm(self.d_inner) if out_norm else None
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias)

    def forward(self, x: Tensor, grid: tuple[int, int] | None = None) -> Tensor:
        """x (batch, length, d_model) -> (batch, length, d_model); ``grid`` for 2D scan orders."""
        if self.channel_group is not None:
            return self._forward_channels(x)
        vision = self.conv2d is not None or self.switch is not None or self.out_norm is not None
        if vision or self.quasi_separable or self.convs is None:
            return self._forward_general(x, grid)
        x, z = self.in_proj(x).chunk(2, dim=-1)  # (batch, length, d_inner) each
        y = None
        for k, (order, ssm) in enumerate(zip(self.orders, self.ssms, strict=True)):
            if order.name == "reverse":  # conv and scan run right to left in token order: nothing flipped
                xs = self._conv(k, x, time_dim=1, reverse=True)  # (batch, length, d_inner)
                ys = ssm(xs.transpose(1, 2), z=z.transpose(1, 2), reverse=True)  # (batch, d_inner, length)
            else:
                xs = self._conv(k, order.apply(x, grid, dim=1), time_dim=1)  # in scan order
                ys = order.undo(ssm(xs.transpose(1, 2), z=order.apply(z, grid, dim=1).transpose(1, 2)), grid)
            y = ys if y is None else y + ys
        return self.out_proj(y.transpose(1, 2))

    def _conv(self, k: int, x: Tensor, time_dim: int = -1, reverse: bool = False) -> Tensor:
        """SiLU of scan order k's causal conv of x along ``time_dim`` (right to left with ``reverse``)."""
        conv = self.convs[k]
        return causal_conv1d(x, conv.weight[:, 0], conv.bias, "silu", time_dim=time_dim, reverse=reverse)

    def _scan(self, k: int, x: Tensor, grid: tuple[int, int] | None) -> Tensor:
        """Scan order k of x (batch, width, length) in token order -> (batch, width, length) in token order."""
        order = self.orders[k]
        if order.name == "reverse" and self.convs is not None and not self.quasi_separable:
            return self.ssms[k](self._conv(k, x, reverse=True), reverse=True)
        xs = order.apply(x, grid)
        return order.undo(self.ssms[k](xs if self.convs is None else self._conv(k, xs)), grid)

    def _forward_general(self, x: Tensor, grid: tuple[int, int] | None) -> Tensor:
        """The token mixer with conv_2d / quasi_separable / sos_top_k; the scans run stacked (``_stacked_scan``)."""
        batch, length, _ = x.shape
        u, z = self.in_proj(x).chunk(2, dim=-1)  # (batch, length, d_inner) each
        if self.conv2d is not None:
            if grid is None or grid[0] * grid[1] != length:
                raise ValueError(f"conv_2d needs grid=(height, width) with height * width = {length}, got {grid}")
            u = u.transpose(1, 2).reshape(batch, self.d_inner, *grid)
            u = F.silu(self.conv2d(u)).flatten(2)  # (batch, d_inner, length), channel-first
        elif self.convs is None:
            u = F.silu(u).transpose(1, 2)
        else:
            u = u.transpose(1, 2)
        if self.convs is not None:  # a causal conv per order, in its own direction: one scan call per order
            y = sum(self._scan(k, u, grid) for k in range(len(self.orders))).transpose(1, 2)
        elif self.switch is not None:
            choice, weights = self.switch(x.mean(dim=1))  # per input: its top-k scan orders and their weights
            y = self._switched_scan(u, choice, weights, grid)
        else:
            y = self._stacked_scan(u, range(len(self.orders)), grid)  # (batch, length, d_inner)
        if self.out_norm is not None:
            y = self.out_norm(y)
        return self.out_proj(y * F.silu(z))

    def _forward_channels(self, x: Tensor) -> Tensor:
        """Scan across channels: every token's d_inner channels as steps of channel_group features.

        Channel c of a token is feature c % channel_group of step c // channel_group: a fixed
        assignment (in_proj and out_proj learn around it) that needs no transposes.
        """
        batch, length, _ = x.shape
        tokens, group = batch * length, self.channel_group
        u, z = self.in_proj(x).chunk(2, dim=-1)  # (batch, length, d_inner) each
        u = u.reshape(tokens, self.d_inner // group, group)  # (tokens, steps, channel_group)
        u = (F.silu(u) if self.convs is None else u).transpose(1, 2)  # (tokens, channel_group, steps)
        if self.convs is not None:
            y = sum(self._scan(k, u, None) for k in range(len(self.orders))).transpose(1, 2)
        else:
            y = self._stacked_scan(u, range(len(self.orders)), None)  # (tokens, steps, channel_group)
        return self.out_proj(y.reshape(batch, length, self.d_inner) * F.silu(z))

    def _stacked_scan(self, u: Tensor, ks: Sequence[int], grid: tuple[int, int] | None) -> Tensor:
        """Sum over the scan orders ``ks`` of their S6 (or QS-S6) of u (batch, width, length), in token order.

        Returns (batch, length, width). The orders run as one scan call, stacked along the channel
        axis, (batch, K width, length), with B and C grouped per order: one gather builds the
        reordered inputs and one index_add puts every output back in token order and sums them.
        The projections giving delta, B and C are position-wise, so they are computed in token order
        and only their small outputs are reordered.

        QS-S6 stacks each order twice, as visited and reversed, with one parameter set per pair (2K
        scans in the one call), and shifts on the way back: the token visited at step s + 1 receives
        the scan's output of step s, so neither direction sees its own token; the D term is added
        once, in token order. This is ``quasi_separable_scan`` without its copies of the flipped
        inputs and outputs (tested equal to QSS6 per order).
        """
        ks = tuple(ks)
        batch, width, length = u.shape
        ssms = [self.ssms[k] for k in ks]
        qs = self.quasi_separable
        reps = 2 if qs else 1  # scans per order
        n_s, rank, n = reps * len(ks), ssms[0].dt_rank, ssms[0].d_state
        visit, gather_index, add_index = _stack_indices(
            tuple(self.orders[k].name for k in ks), length, grid, width, u.stride(1) == 1, qs, u.device
        )  # fmt: skip
        x_dbl = _matmul(torch.cat([s.x_proj.weight for s in ssms]), u)  # (batch, K (rank + 2 n), length)
        x_dbl = x_dbl.view(batch, len(ks), rank + 2 * n, length)
        if qs:
            x_dbl = x_dbl.repeat_interleave(2, dim=1)
        x_dbl = x_dbl.gather(3, visit[None, :, None, :].expand(batch, n_s, rank + 2 * n, length))  # scan order
        dt, B, C = x_dbl.split([rank, n, n], dim=2)  # B, C: (batch, K, n, length), grouped per order
        # each order's dt_proj on its own rows: a (K, width, rank) @ (batch, K, rank, length) broadcast product
        # (the block-diagonal (K width, K rank) matrix it replaces did K times the work, and its weight
        # gradient was a slow batched product at short lengths)
        w_dt = torch.stack([s.dt_proj.weight for s in ssms for _ in range(reps)])
        delta = torch.matmul(w_dt, dt).view(batch, n_s * width, length)
        source = u.transpose(1, 2) if u.stride(1) == 1 else u  # the memory of u, flattened per sample
        us = source.reshape(batch, -1).index_select(1, gather_index).view(batch, n_s * width, length)
        y = self._run_scan(ks, us, delta, B.contiguous(), C.contiguous())
        # QS: the last step's outputs go to a spare token, dropped
        out = y.new_zeros(batch, (length + qs) * width).index_add_(1, add_index, y.reshape(batch, -1))
        out = out[:, : length * width].view(batch, length, width)
        if qs:
            out = out + u.transpose(1, 2) * sum(s.D for s in ssms).to(u.dtype)
        return out

    def _switched_scan(self, u: Tensor, choice: Tensor, weights: Tensor, grid: tuple[int, int] | None) -> Tensor:
        """Switch of Scans: only the chosen scans of u (batch, width, length), in token order -> (batch, length, width).

        ``choice``, ``weights`` (batch, k): each input's chosen scan orders and their weights; the
        result is the weighted sum of those scans. The (input, choice) pairs form one batch, so the
        reordering, the projections and the way back run once over it, and so does the scan: the
        pairs are stacked along its channels, (1, pairs width, length), each pair a group of B and C
        with its order's A, D and dt bias, so each pair's scan runs with its own order's parameters
        in a single call.
        """
        batch, width, length = u.shape
        rank, n = self.ssms[0].dt_rank, self.ssms[0].d_state
        order, image = choice.flatten(), torch.arange(batch, device=u.device).repeat_interleave(choice.shape[1])
        visit, inverse = _visits(tuple(o.name for o in self.orders), length, grid, u.device)
        expand = (-1, width, -1)
        us = u.index_select(0, image).gather(2, visit[order][:, None, :].expand(*expand))  # (pairs, width, length)
        w_x = torch.stack([s.x_proj.weight for s in self.ssms]).index_select(0, order)  # (pairs, rank + 2 n, width)
        dt, B, C = torch.bmm(w_x, us).split([rank, n, n], dim=1)
        delta = torch.bmm(torch.stack([s.dt_proj.weight for s in self.ssms]).index_select(0, order), dt)
        A, D, bias = self._scan_parameters(order)
        pairs = order.numel()
        stacked = (t.reshape(1, pairs * width, length) for t in (us, delta))
        B, C = B.unsqueeze(0).contiguous(), C.unsqueeze(0).contiguous()  # (1, pairs, n, length): a group per pair
        if self.quasi_separable:
            y = quasi_separable_scan(*stacked, A, B, C, D, bias)
        else:
            y = selective_scan(*stacked, A, B, C, D, delta_bias=bias, delta_softplus=True)
        y = y.view(pairs, width, length) * weights.flatten()[:, None, None]
        y = y.gather(2, inverse[order][:, None, :].expand(*expand))  # back to token order
        return y.new_zeros(batch, width, length).index_add_(0, image, y).transpose(1, 2)

    def _run_scan(self, ks: tuple[int, ...], u: Tensor, delta: Tensor, B: Tensor, C: Tensor) -> Tensor:
        """The scan of orders ``ks`` stacked along channels: u, delta (batch, S width, length), B, C grouped.

        S = K scans, or with QS-S6 2K: each order's parameters serve two consecutive scans (visited
        and reversed), which run without the D term (``_stacked_scan`` adds it).
        """
        reps = 2 if self.quasi_separable else 1
        A, D, bias = self._scan_parameters(torch.tensor([k for k in ks for _ in range(reps)], device=u.device))
        return selective_scan(u, delta, A, B, C, None if self.quasi_separable else D, delta_bias=bias,
                              delta_softplus=True)  # fmt: skip

    def _scan_parameters(self, index: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """A (S width, d_state), D and dt bias (S width,) in float32 for S stacked scans; scan i uses order index[i]."""
        if any(not s.selective for s in self.ssms):
            raise ValueError("the vision mixers need selective S6 layers")

        def gathered(name: str) -> Tensor:
            return torch.stack([getattr(s, name) for s in self.ssms]).index_select(0, index).flatten(0, 1).float()

        return -torch.exp(gathered("A_log")), gathered("D"), gathered("dt_bias")


def _matmul(w: Tensor, x: Tensor) -> Tensor:
    """w (m, k) @ x (batch, k, length) -> contiguous (batch, m, length), x in any layout.

    One GEMM per sample when those are large enough (the vision token mixers: tens of samples of
    hundreds of channels); but channel-first x shorter than 32 tokens is folded to (k, batch
    length) for one GEMM instead (at a 4x4 grid the batched product, and its weight gradient summed
    over the samples, cost 1.2-1.6x as much: benchmarks/projections.py). Small products run as one
    GEMM over all (sample, position) pairs, which suits the channel mixers' thousands of tiny
    samples in token-major memory.
    """
    batch, k, length = x.shape
    if w.shape[0] * k * length < 1 << 15:
        return torch.matmul(w, x).contiguous()
    if length >= 32 or x.stride(2) != 1:
        return torch.bmm(w.expand(batch, -1, -1), x)
    folded = w @ x.transpose(0, 1).reshape(k, batch * length)  # (m, batch length)
    return folded.view(-1, batch, length).transpose(0, 1).contiguous()


@lru_cache(maxsize=512)
def _visits(names: tuple[str, ...], length: int, grid: tuple[int, int] | None,
            device: torch.device) -> tuple[Tensor, Tensor]:  # fmt: skip
    """(K, length) each: the token each order visits at each step, and the step at which it visits each token."""
    visit = torch.stack([
        torch.arange(length) if p is None else p.cpu()
        for p in (ScanOrder(name).permutation(length, grid) for name in names)
    ])  # fmt: skip
    return visit.to(device), torch.argsort(visit, dim=1).to(device)


@lru_cache(maxsize=512)
def _stack_indices(names: tuple[str, ...], length: int, grid: tuple[int, int] | None, width: int, token_major: bool,
                   both_ways: bool, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """Index tensors of ``_stacked_scan`` (built once per shape).

    visit (S, length): the token at each step of each of the S stacked scans (the K orders, or with
    ``both_ways`` each order followed by its reverse). gather_index (S width length): for the stacked
    input (S, width, length), the flat position in u's memory (token-major (length, width) or
    channel-first (width, length)). add_index: the flat token-major position (length, width) each
    stacked output element returns to; with ``both_ways`` that of the next step's token (step
    length - 1 goes to a spare token, position length).
    """
    visit = _visits(names, length, grid, torch.device("cpu"))[0]
    if both_ways:
        visit = torch.stack([visit, visit.flip(1)], dim=1).flatten(0, 1)
    channel = torch.arange(width)[None, :, None]
    token = visit[:, None, :]
    gather_index = (token * width + channel) if token_major else (channel * length + token)
    if both_ways:
        token = torch.cat([visit[:, 1:], torch.full((len(visit), 1), length)], dim=1)[:, None, :]
    add_index = (token * width + channel).flatten()
    return visit.to(device), gather_index.flatten().to(device), add_index.to(device)
