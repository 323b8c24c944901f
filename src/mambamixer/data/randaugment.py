"""RandAugment (Cubuk et al., NeurIPS 2020) on a device batch, with timm's "rand-m9-mstd0.5-inc1" policy.

    x = rand_augment(x, layers=2, magnitude=9.0, magnitude_std=0.5)   # (batch, C, H, W) floats in [0, 1]

Each of ``layers`` rounds draws, per image, one op of :data:`OPS` (with replacement, uniform), applies it
with probability 0.5, at a magnitude drawn per image from N(magnitude, magnitude_std) clipped to
[0, 10]. The op set and magnitude ranges are timm's "increasing" set (``inc1``: a larger magnitude is
always a stronger distortion): rotate up to 30 degrees, shear up to 0.3, translate up to 0.45 of the
side, colour / contrast / brightness / sharpness factors 1 +- 0.9, posterize down to 1 bit, solarize
from threshold 256 down to 0, solarize-add up to 110/255. Signed ops take a random sign per image.
Written in plain torch (no torchvision, no PIL): intensities work on the 256-level scale of uint8
images, geometry resamples bilinearly (``grid_sample``) and fills with timm's mean colour.
Random draws use torch's default generator of the batch's device.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["OPS", "MAX_LEVEL", "rand_augment", "auto_contrast", "equalize", "invert", "posterize", "solarize",
           "solarize_add", "adjust_color", "adjust_contrast", "adjust_brightness", "adjust_sharpness", "affine",
           "rotate", "shear", "translate", "describe_rand_augment"]

MAX_LEVEL = 10.0  # magnitudes run from 0 to 10 (timm's _LEVEL_DENOM)
FILL_RGB = (124 / 255, 116 / 255, 104 / 255)  # timm's fill colour of geometric ops (ImageNet's mean)
OP_PROB = 0.5  # chance that a drawn op is applied (timm's rand_augment_ops)


def _per_image(v: Tensor) -> Tensor:
    return v.view(-1, 1, 1, 1)


def _grey(x: Tensor) -> Tensor:
    """(batch, C, H, W) -> (batch, 1, H, W): PIL's luma L = 0.299 R + 0.587 G + 0.114 B (grey: itself)."""
    if x.shape[1] != 3:
        return x[:, :1]
    w = torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


def _blend(x: Tensor, degenerate: Tensor, factor: Tensor) -> Tensor:
    """PIL's ImageEnhance: degenerate + factor (batch,) * (x - degenerate), clipped to [0, 1]."""
    return (degenerate + _per_image(factor) * (x - degenerate)).clamp(0.0, 1.0)


# --- intensity ops: (batch, C, H, W) floats in [0, 1] -> same -------------------------------------------------

def auto_contrast(x: Tensor) -> Tensor:
    """Each channel stretched to span [0, 1]; a flat channel is left as it is."""
    lo = x.amin(dim=(-2, -1), keepdim=True)
    hi = x.amax(dim=(-2, -1), keepdim=True)
    span = hi - lo
    return torch.where(span > 0, (x - lo) / span.clamp_min(1e-12), x)


def equalize(x: Tensor) -> Tensor:
    """Histogram equalisation per channel on 256 levels, as PIL's ImageOps.equalize."""
    b, c, h, w = x.shape
    q = (x * 255).round().long().view(b * c, h * w)
    hist = torch.zeros(b * c, 256, device=x.device, dtype=torch.long).scatter_add_(1, q, torch.ones_like(q))
    last = 255 - hist.flip(1).ne(0).long().argmax(dim=1)  # highest level present
    step = (h * w - hist.gather(1, last[:, None])[:, 0]) // 255  # PIL: pixels outside the top level / 255
    cum = hist.cumsum(dim=1) - hist  # pixels below each level
    lut = ((cum + (step // 2)[:, None]) // step.clamp_min(1)[:, None]).clamp(max=255)
    out = lut.gather(1, q).float() / 255
    return torch.where((step > 0)[:, None], out, x.reshape(b * c, h * w)).view(b, c, h, w).to(x.dtype)


def invert(x: Tensor) -> Tensor:
    return 1.0 - x


def posterize(x: Tensor, bits: Tensor) -> Tensor:
    """Keep the top ``bits`` (batch,) int in [0, 8] bits of each 8-bit value."""
    q = (x * 255).round().long()
    mask = (255 - (2 ** (8 - bits.long()) - 1)).view(-1, 1, 1, 1)  # 0 bits -> all zero
    return (q & mask).to(x.dtype) / 255


def solarize(x: Tensor, threshold: Tensor) -> Tensor:
    """Invert every value >= ``threshold`` (batch,) on the 0..256 scale (256: nothing inverted)."""
    return torch.where(x * 255 >= _per_image(threshold).round() - 0.5, 1.0 - x, x)


def solarize_add(x: Tensor, add: Tensor, threshold: float = 128) -> Tensor:
    """Add ``add`` (batch,) on the 0..255 scale to every value below ``threshold``, clipped to 255."""
    q = (x * 255).round()
    return torch.where(q < threshold, (q + _per_image(add)).clamp(max=255), q) / 255


def adjust_color(x: Tensor, factor: Tensor) -> Tensor:
    """Saturation: blend with the grey image (0: grey, 1: unchanged); grey images are unchanged."""
    return _blend(x, _grey(x).expand_as(x), factor)


def adjust_contrast(x: Tensor, factor: Tensor) -> Tensor:
    """Blend with the image's mean grey level (0: flat mean grey, 1: unchanged)."""
    mean = (_grey(x) * 255).mean(dim=(-3, -2, -1), keepdim=True).add(0.5).floor() / 255
    return _blend(x, mean.expand_as(x), factor)


def adjust_brightness(x: Tensor, factor: Tensor) -> Tensor:
    """Blend with black (0: black, 1: unchanged)."""
    return _blend(x, torch.zeros_like(x), factor)


def adjust_sharpness(x: Tensor, factor: Tensor) -> Tensor:
    """Blend with PIL's SMOOTH-filtered image (3x3, centre 5, others 1, / 13; border pixels kept)."""
    c = x.shape[1]
    kernel = torch.ones(3, 3, device=x.device, dtype=x.dtype)
    kernel[1, 1] = 5
    kernel = (kernel / 13).expand(c, 1, 3, 3)
    smooth = x.clone()
    smooth[..., 1:-1, 1:-1] = F.conv2d(x, kernel, groups=c)
    return _blend(x, smooth, factor)


# --- geometric ops --------------------------------------------------------------------------------------------

def affine(x: Tensor, matrix: Tensor, fill: tuple[float, ...] | None = None) -> Tensor:
    """Resample (batch, C, H, W) with the inverse maps ``matrix`` (batch, 2, 3): output pixel (col, row) reads
    input pixel ``matrix @ (col, row, 1)`` (pixel centres at integer coordinates, origin top-left; PIL's
    ``Image.transform`` convention). Bilinear; pixels from outside the image get ``fill`` (per channel;
    default timm's mean colour, or its grey for 1-channel images)."""
    b, c, h, w = x.shape
    if fill is None:
        fill = FILL_RGB if c == 3 else (sum(FILL_RGB) / 3,) * c
    rows, cols = torch.meshgrid(torch.arange(h, device=x.device, dtype=x.dtype),
                                torch.arange(w, device=x.device, dtype=x.dtype), indexing="ij")
    out_xy1 = torch.stack([cols, rows, torch.ones_like(rows)], dim=-1).view(1, h * w, 3)
    src = out_xy1 @ matrix.to(x.dtype).transpose(1, 2)  # (batch, H*W, 2) input pixel coordinates
    grid = torch.stack([(2 * src[..., 0] + 1) / w - 1, (2 * src[..., 1] + 1) / h - 1], dim=-1).view(b, h, w, 2)
    ones = torch.ones(b, 1, h, w, device=x.device, dtype=x.dtype)
    sampled = F.grid_sample(torch.cat([x, ones], dim=1), grid, mode="bilinear", padding_mode="zeros",
                            align_corners=False)
    inside = sampled[:, -1:]
    fill_t = torch.tensor(fill, device=x.device, dtype=x.dtype).view(1, c, 1, 1)
    return (sampled[:, :-1] + (1 - inside) * fill_t).clamp(0.0, 1.0)


def rotate(x: Tensor, degrees: Tensor, fill: tuple[float, ...] | None = None) -> Tensor:
    """Rotate each image counter-clockwise by ``degrees`` (batch,) about its centre (PIL's ``rotate``)."""
    h, w = x.shape[-2:]
    a = torch.deg2rad(degrees.to(torch.float32))
    cos, sin = torch.cos(a), torch.sin(a)
    cx, cy = (w - 1) / 2, (h - 1) / 2
    # inverse map: rotate the output coordinates clockwise about the centre (rows point down)
    matrix = torch.stack([torch.stack([cos, -sin, cx - cos * cx + sin * cy], dim=-1),
                          torch.stack([sin, cos, cy - sin * cx - cos * cy], dim=-1)], dim=1)
    return affine(x, matrix, fill)


def shear(x: Tensor, factor: Tensor, axis: str, fill: tuple[float, ...] | None = None) -> Tensor:
    """ShearX (``axis="x"``): output (col, row) reads input (col + factor * row, row); ShearY likewise."""
    one, zero = torch.ones_like(factor, dtype=torch.float32), torch.zeros_like(factor, dtype=torch.float32)
    f = factor.to(torch.float32)
    rows = [[one, f, zero], [zero, one, zero]] if axis == "x" else [[one, zero, zero], [f, one, zero]]
    return affine(x, torch.stack([torch.stack(r, dim=-1) for r in rows], dim=1), fill)


def translate(x: Tensor, fraction: Tensor, axis: str, fill: tuple[float, ...] | None = None) -> Tensor:
    """TranslateXRel / TranslateYRel: output (col, row) reads input (col + fraction * width, row) (or rows)."""
    h, w = x.shape[-2:]
    one, zero = torch.ones_like(fraction, dtype=torch.float32), torch.zeros_like(fraction, dtype=torch.float32)
    shift = fraction.to(torch.float32) * (w if axis == "x" else h)
    dx, dy = (shift, zero) if axis == "x" else (zero, shift)
    return affine(x, torch.stack([torch.stack([one, zero, dx], dim=-1), torch.stack([zero, one, dy], dim=-1)],
                                 dim=1), fill)


# --- the policy: level (batch,) in [0, 10] -> the op's argument ------------------------------------------------

def _signed(level: Tensor, scale: float) -> Tensor:
    sign = torch.where(torch.rand_like(level) < 0.5, -1.0, 1.0)
    return level / MAX_LEVEL * scale * sign


def _enhance(level: Tensor) -> Tensor:
    return 1.0 + _signed(level, 0.9)


OPS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "AutoContrast": lambda x, level: auto_contrast(x),
    "Equalize": lambda x, level: equalize(x),
    "Invert": lambda x, level: invert(x),
    "Rotate": lambda x, level: rotate(x, _signed(level, 30.0)),
    "PosterizeIncreasing": lambda x, level: posterize(x, 4 - (level / MAX_LEVEL * 4).long()),
    "SolarizeIncreasing": lambda x, level: solarize(x, 256 - (level / MAX_LEVEL * 256).long().float()),
    "SolarizeAdd": lambda x, level: solarize_add(x, (level / MAX_LEVEL * 110).long().float()),
    "ColorIncreasing": lambda x, level: adjust_color(x, _enhance(level)),
    "ContrastIncreasing": lambda x, level: adjust_contrast(x, _enhance(level)),
    "BrightnessIncreasing": lambda x, level: adjust_brightness(x, _enhance(level)),
    "SharpnessIncreasing": lambda x, level: adjust_sharpness(x, _enhance(level)),
    "ShearX": lambda x, level: shear(x, _signed(level, 0.3), "x"),
    "ShearY": lambda x, level: shear(x, _signed(level, 0.3), "y"),
    "TranslateXRel": lambda x, level: translate(x, _signed(level, 0.45), "x"),
    "TranslateYRel": lambda x, level: translate(x, _signed(level, 0.45), "y"),
}


def rand_augment(x: Tensor, layers: int = 2, magnitude: float = 9.0, magnitude_std: float = 0.5,
                 prob: float = OP_PROB) -> Tensor:
    """(batch, C, H, W) floats in [0, 1] -> same: ``layers`` rounds of one random op per image (see module doc)."""
    if layers <= 0:
        return x
    if not 0.0 <= magnitude <= MAX_LEVEL or magnitude_std < 0:
        raise ValueError(f"RandAugment magnitude must be in [0, {MAX_LEVEL:g}] and its std >= 0, got {magnitude}, "
                         f"{magnitude_std}")
    batch, names = x.shape[0], list(OPS)
    for _ in range(layers):
        choice = torch.randint(0, len(names), (batch,), device=x.device)
        applied = torch.rand(batch, device=x.device) < prob
        level = (magnitude + magnitude_std * torch.randn(batch, device=x.device)).clamp(0.0, MAX_LEVEL)
        out = x.clone()
        for k, name in enumerate(names):
            sel = (choice == k) & applied
            if sel.any():
                out[sel] = OPS[name](x[sel], level[sel]).to(x.dtype)
        x = out
    return x


def describe_rand_augment(layers: int, magnitude: float, magnitude_std: float) -> str:
    """timm's name of the policy: ``rand-m9-mstd0.5-inc1`` (with ``-n{layers}`` when not 2)."""
    name = f"rand-m{magnitude:g}-mstd{magnitude_std:g}-inc1"
    return name if layers == 2 else f"{name}-n{layers}"

