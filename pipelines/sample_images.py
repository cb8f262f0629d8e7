"""Small generated image folders for tests and benchmarks (no downloads).

    make_image_folder(root, classes=("cat", "dog"), per_class=4, size=(64, 48))

writes an ImageNet-layout folder `root/<class>/<class>_<i>.JPEG`. Each test image is one flat
colour plus mild noise, different for every image, so any crop of it has about the same mean
colour: a loader's output can be matched to its source file by colour. `natural_image` makes
photo-like content instead, for realistic JPEG sizes and decode costs in benchmarks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

Size = tuple[int, int]  # (width, height), as PIL


def flat_image(size: Size, color: Sequence[int], rng: np.random.Generator, noise: float = 6.0) -> Image.Image:
    w, h = size
    pixels = np.asarray(color, np.float32) + rng.normal(0, noise, (h, w, 3))
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


def identify(images, colours: np.ndarray) -> np.ndarray:
    """The source image of each NCHW crop (a torch tensor, 0-255 scale) of a `make_image_folder`
    folder, by its mean colour; `colours` holds each file's colour, in file order."""
    means = images.double().mean((2, 3)).cpu().numpy()
    distance = np.linalg.norm(means[:, None] - colours[None], axis=2)
    if distance.min(1).max() >= 8:
        raise ValueError("a crop's colour matches no source image")
    return distance.argmin(1)


def _pink_noise(h: int, w: int, rng: np.random.Generator, alpha: float) -> np.ndarray:
    """Zero-mean, unit-variance noise with a 1/f**alpha amplitude spectrum."""
    f = np.hypot(np.fft.fftfreq(h)[:, None], np.fft.rfftfreq(w)[None, :])
    f[0, 0] = 1.0
    spectrum = (rng.normal(size=f.shape) + 1j * rng.normal(size=f.shape)) / f**alpha
    spectrum[0, 0] = 0.0
    x = np.fft.irfft2(spectrum, s=(h, w))
    return x / x.std()


def natural_image(size: Size, rng: np.random.Generator) -> Image.Image:
    """Photo-like content: natural images have a ~1/f amplitude spectrum at every scale, and so
    does this (luminance 1/f, chroma smoother). Saved as JPEG at quality 90 it takes ~0.6 bytes per
    pixel, about ImageNet's average (~110 KB at ~470x390), and it keeps that when downscaled."""
    w, h = size
    luma = 45 * _pink_noise(h, w, rng, 1.0)
    chroma = [25 * _pink_noise(h, w, rng, 1.3) for _ in range(2)]
    rgb = rng.uniform(60, 190, 3) + np.stack(  # YCbCr-like offsets -> RGB
        [luma + 0.6 * chroma[0], luma - 0.3 * chroma[0] + 0.5 * chroma[1],
         luma - 0.3 * chroma[0] - 0.5 * chroma[1]], axis=-1)
    return Image.fromarray(rgb.clip(0, 255).astype(np.uint8))


def make_image_folder(root: str | Path, classes: Sequence[str] = ("class_a", "class_b", "class_c"),
                      per_class: int = 4, size: Size | Sequence[Size] = (64, 48), seed: int = 0,
                      natural: bool = False, ext: str = ".JPEG", quality: int = 90) -> list[Path]:
    """Write `per_class` JPEGs into `root/<class>/` for each class; returns the paths written, sorted.

    `size` is one (width, height) or a list cycled over the images of each class.
    """
    root = Path(root)
    sizes = [size] if isinstance(size[0], int) else list(size)
    rng = np.random.default_rng(seed)
    written = []
    for name in classes:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            wh = sizes[i % len(sizes)]
            img = natural_image(wh, rng) if natural else flat_image(wh, rng.integers(20, 236, 3), rng)
            path = root / name / f"{name}_{i:04d}{ext}"
            img.save(path, "JPEG", quality=quality)
            written.append(path)
    return sorted(written)
