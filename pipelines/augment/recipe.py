"""The Barlow Twins view recipe as data: `ViewSpec` (one view) and `AugSpec` (the two views, the
crop size, interpolation, normalization and the resolution schedule). Loaders read its geometric
half (crop scale and ratio, flip), `pipelines.augment.table` its photometric half.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pipelines.resolution import Resolution, size_at

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _require(ok: bool, name: str, what: str) -> None:
    if not ok:
        raise ValueError(f"augmentation: {name} must be {what}")


@dataclass(frozen=True)
class ViewSpec:
    """One view of the official recipe (facebookresearch/barlowtwins main.py); defaults: view 1.

    `solarize_threshold` is on the [0, 1] float scale and pixels x >= threshold are inverted, as in
    torchvision's solarize and PIL's ImageOps.solarize (the official code: uint8 v >= 128). 0.5 is
    that 128: for every uint8-derived value 127/255 < 0.5 < 128/255 gives the same pixels, and for
    continuous values x >= 0.5 is exactly round(255 x) >= 128.
    """

    crop_scale: tuple[float, float] = (0.08, 1.0)      # random-resized-crop area fraction (loaders)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)   # its aspect-ratio range (loaders)
    flip_p: float = 0.5                                # horizontal flip (loaders)
    jitter_p: float = 0.8
    brightness: float = 0.4                            # factor ~ U(max(0, 1 - b), 1 + b)
    contrast: float = 0.4                              # factor ~ U(max(0, 1 - c), 1 + c)
    saturation: float = 0.2                            # factor ~ U(max(0, 1 - s), 1 + s)
    hue: float = 0.1                                   # shift ~ U(-h, h), h <= 0.5
    gray_p: float = 0.2
    blur_p: float = 1.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)       # pixels, ~ U(lo, hi) as the official code
    solarize_p: float = 0.0
    solarize_threshold: float = 0.5

    def __post_init__(self):
        for name in ("flip_p", "jitter_p", "gray_p", "blur_p", "solarize_p", "solarize_threshold"):
            _require(0 <= getattr(self, name) <= 1, name, "in [0, 1]")
        for name in ("brightness", "contrast", "saturation"):
            _require(getattr(self, name) >= 0, name, ">= 0")
        _require(0 <= self.hue <= 0.5, "hue", "in [0, 0.5]")
        _require(0 < self.crop_scale[0] <= self.crop_scale[1] <= 1, "crop_scale", "0 < lo <= hi <= 1")
        _require(0 < self.crop_ratio[0] <= self.crop_ratio[1], "crop_ratio", "0 < lo <= hi")
        _require(0 < self.blur_sigma[0] <= self.blur_sigma[1], "blur_sigma", "0 < lo <= hi")


# The largest crop accepted: 4.5x the recipe's 224; a typo (2240) would otherwise show only as an
# out-of-memory error after the data is loaded. Larger crops than the stored images are upsampled.
MAX_SIZE = 1024


@dataclass(frozen=True)
class AugSpec:
    """The two-view recipe: view 2 differs from view 1 by blur p 0.1 and solarize p 0.2."""

    view1: ViewSpec = ViewSpec()
    view2: ViewSpec = ViewSpec(blur_p=0.1, solarize_p=0.2)
    size: int = 224                                    # crop output, pixels (the final, evaluated size)
    interpolation: str = "bicubic"                     # the official resize (loaders)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    resolution: Resolution = Resolution()              # progressive resolution; off by default

    def __post_init__(self):
        _require(0 < self.size <= MAX_SIZE, "size", f"in 1..{MAX_SIZE}")
        _require(self.resolution.start <= self.size, "resolution.start", "<= size (the final size)")
        blurred = [v.blur_sigma[1] for v in (self.view1, self.view2) if v.blur_p > 0]
        if blurred:  # reflect padding needs more pixels a side than half the kernel
            k = blur_kernel_size(max(blurred))
            name = "resolution.start" if self.resolution.on else "size"
            _require(min(self.resolution.start if self.resolution.on else self.size, self.size) > k // 2,
                     name, f"more than {k // 2} px: the blur's {k} px kernel (sigma up to {max(blurred):g}) "
                     "pads each side by reflection")
        _require(len(self.mean) == 3 and len(self.std) == 3, "mean/std", "3 numbers each")
        _require(all(s > 0 for s in self.std), "std", "> 0")


    def size_at(self, epoch: int) -> int:
        """The crop size of `epoch` (pipelines.resolution): `size` unless the schedule is on."""
        return size_at(self.resolution, self.size, epoch)


def blur_kernel_size(sigma_max: float) -> int:
    """Gaussian kernel width used for a sigma range: +-4 sigma_max, odd (17 px for sigma <= 2).

    The official blur is PIL's, whose support is not truncated; +-4 sigma leaves at most 1.2e-5
    (measured at sigma 2) against an untruncated kernel, where +-3 sigma (13 px) leaves 7e-4. The
    23 px of SimCLR-style reimplementations is 10% of 224 px, not a function of sigma.
    """
    return 2 * math.ceil(4 * sigma_max) + 1
