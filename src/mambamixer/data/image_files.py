"""The image files a user points at, and one image in the channels a trained model takes.

    files = list_image_files("photos/")        # [(path, "cats/01.jpg"), ...]: every image below photos/
    x = read_image(path, in_chans=1)           # (1, H, W) uint8, as the ImageFolder loader decodes it

Decoding is the ImageFolder loader's (data/images.py: Pillow, grey modes kept grey, the rest RGB,
an optional bilinear resize to a square); then a grey image is repeated to three channels for a
colour model, as a tree of mixed images is stacked for training, and a colour image becomes
Pillow's luma ("L") for a grey model.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mambamixer.data.image_folder import IMAGE_EXTENSIONS, decode_image, pil_to_array

__all__ = ["list_image_files", "pil_image_tensor", "read_image", "to_channels"]


def list_image_files(path: str | os.PathLike) -> list[tuple[Path, str]]:
    """``(file, name)`` of every image to label. A file is itself, named as given; a folder gives every
    file below it whose suffix is an image's (``IMAGE_EXTENSIONS``; hidden files and folders skipped),
    sorted folder by folder as an ImageFolder tree is read, named by its path relative to the folder."""
    given = os.fspath(path)
    root = Path(given).expanduser()
    if root.is_file():
        return [(root, given)]
    if not root.is_dir():
        raise ValueError(f"no such file or folder: {given!r}; expected an image file or a folder of images")
    files = []
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = [d for d in subfolders if not d.startswith(".")]
        files += [Path(folder) / n for n in names if not n.startswith(".") and Path(n).suffix.lower() in
                  IMAGE_EXTENSIONS]
    if not files:
        raise ValueError(f"{given} holds no image files (expected names ending in {', '.join(IMAGE_EXTENSIONS)})")
    files.sort(key=lambda f: f.relative_to(root).parts)
    return [(f, f.relative_to(root).as_posix()) for f in files]


def to_channels(image: np.ndarray, in_chans: int) -> Tensor:
    """(H, W) grey or (H, W, 3) colour uint8 -> (in_chans, H, W) uint8 for a model of 1 or 3 channels."""
    if in_chans == 3 and image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    elif in_chans == 1 and image.ndim == 3:
        from PIL import Image

        image = np.asarray(Image.fromarray(image).convert("L"))
    elif in_chans not in (1, 3):
        raise ValueError(f"images from files have 1 (grey) or 3 (RGB) channels; the model takes {in_chans}")
    x = torch.from_numpy(np.array(image))  # a copy: Pillow's arrays are read-only
    return x[None] if x.dim() == 2 else x.permute(2, 0, 1).contiguous()


def read_image(path: Path, in_chans: int, decode_size: int | None = None) -> Tensor:
    """One image file -> (in_chans, H, W) uint8 (``decode_size``: resized to a square while decoding);
    an unreadable file raises ``ValueError`` naming it."""
    return to_channels(decode_image(path, decode_size), in_chans)


def pil_image_tensor(image: Any, in_chans: int, decode_size: int | None = None) -> Tensor:
    """A Pillow image -> (in_chans, H, W) uint8, decoded as :func:`read_image` decodes a file."""
    return to_channels(pil_to_array(image, decode_size), in_chans)
