"""Scan orders: the one abstraction for the order in which an S6 visits tokens.

A scan order is a permutation of the token axis. ``apply`` reorders a sequence
(..., length) into scan order, ``undo`` puts a scanned sequence back. 1D orders work on any
length; 2D orders (used by the vision models and Switch of Scans) need the grid (height, width)
and assume row-major token layout.
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import Tensor

ORDERS_1D = ("forward", "reverse")
ORDERS_2D = ("row", "row_reverse", "column", "column_reverse", "snake", "snake_reverse", "diagonal",
             "diagonal_reverse")  # fmt: skip


@lru_cache(maxsize=256)
def _grid_permutation(name: str, height: int, width: int) -> tuple[int, ...]:
    """Token indices (row-major numbering) in the order the scan visits them."""
    base = name.removesuffix("_reverse")
    idx = torch.arange(height * width).reshape(height, width)
    if base == "row":
        order = idx.flatten()
    elif base == "column":
        order = idx.t().flatten()
    elif base == "snake":  # boustrophedon: left-to-right, then right-to-left on the next row
        rows = [idx[r] if r % 2 == 0 else idx[r].flip(0) for r in range(height)]
        order = torch.cat(rows)
    elif base == "diagonal":  # anti-diagonals, top-left to bottom-right
        order = torch.cat([idx.flip(1).diagonal(offset=width - 1 - k) for k in range(height + width - 1)])
    else:
        raise ValueError(f"unknown scan order {name!r}; known: {ORDERS_1D + ORDERS_2D}")
    if name.endswith("_reverse"):
        order = order.flip(0)
    return tuple(order.tolist())


@lru_cache(maxsize=256)
def _grid_indices(name: str, height: int, width: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """The permutation of ``name`` and its inverse as index tensors on ``device`` (built once)."""
    perm = torch.tensor(_grid_permutation(name, height, width))
    return perm.to(device), torch.argsort(perm).to(device)


def _transpose_grid(x: Tensor, grid: tuple[int, int], dim: int) -> Tensor:
    """Axis ``dim`` of x holds a row-major (height, width) grid -> the same axis in column-major order."""
    dim = dim % x.dim()
    return x.unflatten(dim, grid).transpose(dim, dim + 1).flatten(dim, dim + 1)


class ScanOrder:
    """A named token order. 1D: 'forward', 'reverse'. 2D: see ``ORDERS_2D``."""

    def __init__(self, name: str) -> None:
        if name not in ORDERS_1D + ORDERS_2D:
            raise ValueError(f"unknown scan order {name!r}; known: {ORDERS_1D + ORDERS_2D}")
        self.name = name
        self.is_2d = name in ORDERS_2D

    def permutation(self, length: int, grid: tuple[int, int] | None = None, device=None) -> Tensor | None:
        """Index tensor of the scan order, or None for the identity."""
        if self.name == "forward":
            return None
        if self.name == "reverse":
            return torch.arange(length - 1, -1, -1, device=device)
        if grid is None or grid[0] * grid[1] != length:
            raise ValueError(f"scan order {self.name!r} needs grid=(height, width) with height * width = {length}, "
                             f"got {grid}")  # fmt: skip
        return torch.tensor(_grid_permutation(self.name, *grid), device=device)

    def apply(self, x: Tensor, grid: tuple[int, int] | None = None, dim: int = -1) -> Tensor:
        """x with its token axis ``dim`` (length) in token order -> the same axis in scan order."""
        if self.name == "reverse":  # flip is much faster than a gather
            return x.flip(dim)
        if not self.is_2d:
            return x
        self._check_grid(x.shape[dim], grid)
        base, reverse = self.name.removesuffix("_reverse"), self.name.endswith("_reverse")
        if base in ("row", "column"):  # no gather: identity or a transpose, then a flip
            x = _transpose_grid(x, grid, dim) if base == "column" else x
            return x.flip(dim) if reverse else x
        return x.index_select(dim, _grid_indices(self.name, *grid, x.device)[0])

    def undo(self, y: Tensor, grid: tuple[int, int] | None = None, dim: int = -1) -> Tensor:
        """y with its token axis ``dim`` in scan order -> the same axis in token order."""
        if self.name == "reverse":
            return y.flip(dim)
        if not self.is_2d:
            return y
        self._check_grid(y.shape[dim], grid)
        base, reverse = self.name.removesuffix("_reverse"), self.name.endswith("_reverse")
        if base in ("row", "column"):
            y = y.flip(dim) if reverse else y
            return _transpose_grid(y, (grid[1], grid[0]), dim) if base == "column" else y
        return y.index_select(dim, _grid_indices(self.name, *grid, y.device)[1])

    def _check_grid(self, length: int, grid: tuple[int, int] | None) -> None:
        if grid is None or grid[0] * grid[1] != length:
            raise ValueError(f"scan order {self.name!r} needs grid=(height, width) with height * width = {length}, "
                             f"got {grid}")  # fmt: skip

    def __repr__(self) -> str:
        return f"ScanOrder({self.name!r})"
