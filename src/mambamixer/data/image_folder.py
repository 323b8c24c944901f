"""ImageFolder trees: ROOT/CLASS/IMAGE files (or ROOT/{train,val,test}/CLASS/...), listed and decoded.

    listing = list_image_folder(Path("/data/flowers"))   # file names and labels only, no pixels read
    train, val, test, classes, note = load_image_folder(Path("/data/flowers"), img_size=64)   # in memory

The listing is shared by the in-memory path (decode everything into uint8 tensors) and the
streaming path (``data/image_stream.py``: decode batches in DataLoader workers). Files are sorted
(class folders by name, images by name), so both paths see the same images in the same order.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

__all__ = ["IMAGE_EXTENSIONS", "FolderListing", "decode_image", "list_image_folder", "load_image_folder",
           "pil_to_array"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")
GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")  # Pillow modes kept as one channel; the rest become RGB


@dataclass
class FolderListing:
    """The image files of a tree: ``parts`` maps "training" (and "val" / "test" where the tree has
    them) to (files, labels); ``classes`` are the training folder's class names, in label order."""

    root: Path
    parts: dict[str, tuple[list[Path], list[int]]]
    classes: list[str]

    @property
    def n_files(self) -> int:
        return sum(len(files) for files, _ in self.parts.values())

    def roles(self) -> dict[str, tuple[list[Path], list[int]]]:
        """``parts`` keyed "train", "val", "test"; a tree with val/ but no test/ is tested on val/ (the ImageNet
        convention) and holds its validation out of train/."""
        roles = {"train": self.parts["training"]}
        if "test" in self.parts:
            roles["test"] = self.parts["test"]
            if "val" in self.parts:
                roles["val"] = self.parts["val"]
        elif "val" in self.parts:
            roles["test"] = self.parts["val"]
        return roles

    def note(self) -> str:
        """How test and validation are formed ("validation held out of train/" is filled in later)."""
        if "test" in self.parts:
            return "test = test/; " + ("validation = val/" if "val" in self.parts else "validation held out of train/")
        if "val" in self.parts:  # the ImageNet convention: val/ is what a model is reported on
            return "test = val/; validation held out of train/"
        return "test and validation held out of the class folders"


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS)


def _class_folders(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _list_split(root: Path, classes: list[str] | None, what: str) -> tuple[list[Path], list[int], list[str]]:
    """The images of ROOT/CLASS/*; ``classes`` fixes the label order (taken from ROOT if None)."""
    folders = _class_folders(root)
    names = [f.name for f in folders]
    if classes is None:
        classes = names
        if not folders:
            raise ValueError(f"ImageFolder {root} has no class sub-folders: expected ROOT/CLASS_NAME/IMAGE files "
                             f"(or ROOT/train/CLASS_NAME/...)")
    else:
        unknown = sorted(set(names) - set(classes))
        if unknown:
            raise ValueError(f"{what} folder {root} has classes that the training folder lacks: {unknown}")
    files, labels = [], []
    for folder in folders:
        found = _image_files(folder)
        if not found and what == "training":
            raise ValueError(f"class folder {folder} has no images (expected files ending in "
                             f"{', '.join(IMAGE_EXTENSIONS)})")
        files += found
        labels += [classes.index(folder.name)] * len(found)
    if not files:
        raise ValueError(f"ImageFolder {root} holds no images in its class sub-folders")
    return files, labels, classes


def list_image_folder(root: Path) -> FolderListing:
    """List an ImageFolder tree (ROOT/train/, ROOT/val/, ROOT/test/ when ROOT/train/ exists)."""
    if not root.is_dir():
        raise FileNotFoundError(f"no ImageFolder at {root}: expected a folder of class sub-folders holding images")
    train_root = root / "train" if (root / "train").is_dir() else root
    roots = {"training": train_root}
    if train_root != root:
        roots.update({name: root / name for name in ("val", "test") if (root / name).is_dir()})
    parts, classes = {}, None
    for what, folder in roots.items():
        files, labels, classes = _list_split(folder, classes, what)
        parts[what] = (files, labels)
    assert classes is not None
    if len(classes) < 2:
        raise ValueError(f"ImageFolder {train_root} has a single class ({classes[0]!r}): classification needs at "
                         f"least 2 class sub-folders")
    return FolderListing(root, parts, classes)


def pil_to_array(img: Any, img_size: int | None) -> np.ndarray:
    """A Pillow image -> (H, W) grey or (H, W, 3) colour uint8, its whole area resized to img_size x img_size
    if given (bilinear; the aspect ratio is not kept)."""
    from PIL import Image

    # grey modes stay one channel; everything else (palette, CMYK, alpha) becomes RGB
    img = img.convert("L" if img.mode in GREY_MODES else "RGB")
    if img_size is not None and img.size != (img_size, img_size):
        img = img.resize((img_size, img_size), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def decode_image(path: Path, img_size: int | None) -> np.ndarray:
    """One image file -> :func:`pil_to_array` (the in-memory path's decoding); an unreadable file raises
    ``ValueError`` naming it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()
            return pil_to_array(img, img_size)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise ValueError(f"cannot read image {path}: {err}") from err


def _check_sizes(images: list[np.ndarray], files: list[Path]) -> None:
    first = images[0].shape[:2]
    for path, im in zip(files, images, strict=True):
        if im.shape[:2] != first:
            raise ValueError(f"the images have different sizes ({files[0]} is {first[1]}x{first[0]}, {path} is "
                             f"{im.shape[1]}x{im.shape[0]}): give an image size (--img-size N) to resize them all")


def _stack(images: list[np.ndarray], color: bool) -> Tensor:
    """Decoded images of one size -> (n, C, H, W) uint8; grey ones are repeated to RGB when ``color``."""
    if color:
        images = [np.repeat(im[..., None], 3, axis=2) if im.ndim == 2 else im for im in images]
        return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return torch.from_numpy(np.stack(images)).unsqueeze(1)


def load_image_folder(root: Path, img_size: int | None) -> tuple[dict[str, tuple[Tensor, Tensor]], list[str], str]:
    """Decode a whole tree into memory: ({"train"/"val"/"test" (``FolderListing.roles``): (images (n, C, H, W)
    uint8, labels (n,))}, classes, split note)."""
    listing = list_image_folder(root)
    roles = listing.roles()
    decoded = {}
    for what, (files, _) in roles.items():
        folder = files[0].parent.parent
        decoded[what] = [decode_image(p, img_size) for p in tqdm(files, desc=f"decoding {folder.name}", unit="img",
                                                                  disable=None, leave=False)]
    _check_sizes([im for images in decoded.values() for im in images],
                 [f for files, _ in roles.values() for f in files])
    color = any(im.ndim == 3 for images in decoded.values() for im in images)
    splits = {what: (_stack(images, color), torch.tensor(roles[what][1], dtype=torch.long))
              for what, images in decoded.items()}
    return splits, listing.classes, listing.note()
