"""The demo's generated dataset: shapes whose class is their geometry, never their colour.

Each image is one of ten shapes (disc, square, triangle, ring, cross, bars, ...) at a random
position, size and rotation, in a random colour on a random, noisy background, written as an
ImageNet-layout folder of JPEGs. Colour and position carry no information about the class, so a
randomly initialized network (whose features follow colour and layout) does poorly at kNN, while
Barlow Twins, trained to be invariant to crops and colour jitter, learns the shape.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("disc", "square", "triangle", "ring", "cross", "hbars", "vbars", "diamond", "star", "checker")


def _polygon(cx, cy, r, n, rotation, inner=None):
    angles = rotation + np.arange(n * (2 if inner else 1)) * np.pi / (n if inner else n / 2)
    radii = [r if i % 2 == 0 or inner is None else inner for i in range(len(angles))]
    return [(cx + rr * np.cos(a), cy + rr * np.sin(a)) for rr, a in zip(radii, angles)]


def draw_shape(shape: str, size: int, rng: np.random.Generator) -> Image.Image:
    background = rng.uniform(0, 255, 3)
    noise = rng.normal(0, 12, (size, size, 3))
    image = Image.fromarray(np.clip(background + noise, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    fill = tuple(int(v) for v in (background + rng.choice([-1, 1], 3) * rng.uniform(80, 160, 3)) % 256)
    r = rng.uniform(0.22, 0.38) * size
    cx, cy = rng.uniform(r, size - r, 2)
    rot = rng.uniform(0, 2 * np.pi)
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "disc":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.polygon(_polygon(cx, cy, r, 4, np.pi / 4), fill=fill)  # axis-aligned
    elif shape == "triangle":
        draw.polygon(_polygon(cx, cy, r, 3, rot), fill=fill)
    elif shape == "ring":
        draw.ellipse(box, outline=fill, width=max(2, int(r / 3)))
    elif shape == "cross":
        w = r / 3
        draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=fill)
        draw.rectangle((cx - w, cy - r, cx + w, cy + r), fill=fill)
    elif shape in ("hbars", "vbars"):
        for i in range(4):
            t = -r + i * 2 * r / 3.5
            bar = (cx - r, cy + t, cx + r, cy + t + r / 4) if shape == "hbars" else \
                (cx + t, cy - r, cx + t + r / 4, cy + r)
            draw.rectangle(bar, fill=fill)
    elif shape == "diamond":
        draw.polygon(_polygon(cx, cy, r, 4, 0.0), fill=fill)  # a square on its corner
    elif shape == "star":
        draw.polygon(_polygon(cx, cy, r, 5, rot, inner=r * 0.45), fill=fill)
    elif shape == "checker":
        step = 2 * r / 4
        for i in range(4):
            for j in range(4):
                if (i + j) % 2 == 0:
                    x0, y0 = cx - r + i * step, cy - r + j * step
                    draw.rectangle((x0, y0, x0 + step, y0 + step), fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return image


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
