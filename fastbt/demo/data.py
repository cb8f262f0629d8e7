"""The demo's generated dataset: textures of one shape each, over colours that vary across the image.

Each image tiles one of ten shapes (disc, square, triangle, ring, cross, bars, ...) over the whole
frame on a lattice of random spacing and offset, dark or light, over a blotchy field of random
colours, with pixel noise; written as an ImageNet-layout folder of JPEGs. The class is the shape,
and only the shape:

- every crop of an image shows the shape several times, so two random crops share the class;
- the colours change every few pixels, so two crops of one image do not share their colours, and
  an image's mean colour is close to every other's; colour, brightness, position and scale say
  nothing about the class.

A randomly initialized network's pooled features follow colour and brightness, so its kNN
accuracy stays low; Barlow Twins, trained to give two crops of an image the same embedding, has to
encode what the crops share: the shape.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("disc", "square", "triangle", "ring", "cross", "hbars", "vbars", "diamond", "star", "checker")
SUPERSAMPLE = 4  # shapes are drawn this many times larger, then downsampled: smooth edges
PERIOD = (0.35, 0.5)  # lattice spacing, in frames: 2 to 3 shapes across
COLOUR_CELLS = (5, 8)  # the colour field interpolates a random grid of this many cells a side


def _polygon(cx, cy, r, n, rotation, inner=None):
    angles = rotation + np.arange(n * (2 if inner else 1)) * np.pi / (n if inner else n / 2)
    radii = [r if i % 2 == 0 or inner is None else inner for i in range(len(angles))]
    return [(cx + rr * np.cos(a), cy + rr * np.sin(a)) for rr, a in zip(radii, angles)]


def _draw_tile(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, rot: float) -> None:
    """One shape of radius r centred at (cx, cy), in white on the mask."""
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "disc":
        draw.ellipse(box, fill=255)
    elif shape == "square":
        draw.polygon(_polygon(cx, cy, r, 4, np.pi / 4), fill=255)  # axis-aligned
    elif shape == "triangle":
        draw.polygon(_polygon(cx, cy, r, 3, rot), fill=255)
    elif shape == "ring":
        draw.ellipse(box, outline=255, width=max(2, int(r / 3)))
    elif shape == "cross":
        w = r / 3
        draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=255)
        draw.rectangle((cx - w, cy - r, cx + w, cy + r), fill=255)
    elif shape == "diamond":
        draw.polygon(_polygon(cx, cy, r, 4, 0.0), fill=255)  # a square on its corner
    elif shape == "star":
        draw.polygon(_polygon(cx, cy, r, 5, rot, inner=r * 0.45), fill=255)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def shape_mask(shape: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A size x size float mask in [0, 1]: `shape` tiled over the frame at a random spacing/offset."""
    big = size * SUPERSAMPLE
    period = rng.uniform(*PERIOD) * big
    ox, oy = rng.uniform(0, period, 2)
    mask = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(mask)
    if shape in ("hbars", "vbars"):  # stripes: bars as long as the frame
        for t in np.arange(-period + oy, big + period, period):
            bar = (0, t, big, t + period * 0.45) if shape == "hbars" else (t, 0, t + period * 0.45, big)
            draw.rectangle(bar, fill=255)
    elif shape == "checker":
        cell = period / 2
        for i, x in enumerate(np.arange(-period + ox, big + period, cell)):
            for j, y in enumerate(np.arange(-period + oy, big + period, cell)):
                if (i + j) % 2 == 0:
                    draw.rectangle((x, y, x + cell, y + cell), fill=255)
    else:
        r = rng.uniform(0.3, 0.4) * period
        rot = rng.uniform(0, 2 * np.pi)
        for x in np.arange(-period + ox, big + period, period):
            for y in np.arange(-period + oy, big + period, period):
                _draw_tile(draw, shape, x, y, r, rot)
    return np.asarray(mask.resize((size, size), Image.BILINEAR), dtype=np.float32)[..., None] / 255


def colour_field(size: int, rng: np.random.Generator) -> np.ndarray:
    """size x size x 3 mid-range colours interpolated from a random grid of cells: far apart in
    the frame they differ, so two crops of one image do not see the same colours."""
    cells = int(rng.integers(COLOUR_CELLS[0], COLOUR_CELLS[1] + 1))
    grid = Image.fromarray(rng.uniform(50, 205, (cells, cells, 3)).astype(np.uint8))
    return np.asarray(grid.resize((size, size), Image.BICUBIC), dtype=np.float32)


def draw_shape(shape: str, size: int, rng: np.random.Generator) -> Image.Image:
    """One image of class `shape`: its tiling, dark or light, over a random colour field."""
    background = colour_field(size, rng)
    target = 0.0 if rng.random() < 0.5 else 255.0
    foreground = target + rng.uniform(0.15, 0.3) * (background - target)  # the field's hues, darker/lighter
    mask = shape_mask(shape, size, rng)
    image = background * (1 - mask) + foreground * mask + rng.normal(0, 8, (size, size, 3))
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))


def make_demo_folder(root: str | Path, per_class: int, size: int = 64, seed: int = 0,
                     classes: tuple[str, ...] = SHAPES) -> int:
    """Write root/<shape>/<shape>_<i>.JPEG for every shape; returns the number of images."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    for shape in classes:
        (root / shape).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            draw_shape(shape, size, rng).save(root / shape / f"{shape}_{i:05d}.JPEG", quality=90)
    return per_class * len(classes)
