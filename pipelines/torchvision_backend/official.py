"""The official Barlow Twins two-view transform, everything in PIL per image
(facebookresearch/barlowtwins main.py): the baseline the fast pipelines are measured against.
"""

from __future__ import annotations

import math
import random

import torch
from PIL import ImageFilter, ImageOps
from torchvision.transforms import v2

from pipelines.augment import AugSpec, ViewSpec
from pipelines.torchvision_backend.reader import crop_and_flip


class _PILGaussianBlur:
    """The official blur: PIL's GaussianBlur with radius (sigma) ~ U(lo, hi), applied with p."""

    def __init__(self, p: float, sigma: tuple[float, float]):
        self.p, self.sigma = p, sigma

    def __call__(self, img):
        if random.random() < self.p:
            return img.filter(ImageFilter.GaussianBlur(random.uniform(*self.sigma)))
        return img


class _PILSolarize:
    def __init__(self, p: float, threshold: float):
        self.p, self.threshold = p, math.ceil(threshold * 255)  # uint8 v >= 255 t  <=>  v >= ceil(255 t)

    def __call__(self, img):
        return ImageOps.solarize(img, self.threshold) if random.random() < self.p else img


def official_transform(view: ViewSpec, aug: AugSpec) -> v2.Compose:
    """One view of the official per-image PIL transform: PIL image in, normalized float CHW out."""
    return v2.Compose([
        crop_and_flip(view, aug.size, aug.interpolation),
        v2.RandomApply([v2.ColorJitter(view.brightness, view.contrast, view.saturation, view.hue)],
                       p=view.jitter_p),
        v2.RandomGrayscale(view.gray_p),
        _PILGaussianBlur(view.blur_p, view.blur_sigma),
        _PILSolarize(view.solarize_p, view.solarize_threshold),
        v2.PILToTensor(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(aug.mean, aug.std),
    ])
