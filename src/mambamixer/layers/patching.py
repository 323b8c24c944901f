"""Cutting series into (overlapping) patches: the tokeniser of PatchTST, TSM2 and SiMBA-TS."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def n_patches(length: int, patch_len: int, stride: int, pad_end: bool = True) -> int:
    """Number of patches ``patchify`` makes from a series of ``length`` steps."""
    if length < patch_len:
        raise ValueError(f"a series of length {length} is shorter than patch_len {patch_len}")
    return (length - patch_len) // stride + 1 + int(pad_end)


def patchify(x: Tensor, patch_len: int, stride: int, pad_end: bool = True) -> Tensor:
    """x (..., length) -> (..., n_patches, patch_len).

    ``pad_end`` first repeats the last value ``stride`` times (PatchTST), so the most recent
    steps always end a patch.
    """
    if pad_end:
        lead = x.shape[:-1]
        x = F.pad(x.reshape(-1, 1, x.shape[-1]), (0, stride), mode="replicate").reshape(*lead, -1)
    return x.unfold(-1, patch_len, stride)
