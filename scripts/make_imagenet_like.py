#!/usr/bin/env python
"""Write N photo-like JPEGs over C ImageNet-named class folders (issue 23), cheaply and seeded.

    nice -n 10 .venv/bin/python scripts/make_imagenet_like.py OUT --n 100000 --classes 1000 [--workers W]

OUT/n%08d/n%08d_%d.JPEG, as ImageNet's train set names its files. Sizes follow ImageNet's spread
(short side ~200-1,000 px, mostly 4:3, ~3/4 landscape; mean about 450x370), JPEG quality 75-95,
~110 KB per file on average. Oddities the real set has: 1 in 1,000 grayscale, 1 in 5,000
CMYK (at least one of each once N >= 8), and image 0 is a PNG named `.JPEG`.

Cheap by construction: each worker builds the same pool of 1,024 px photo-like textures once
(`pipelines.sample_images.natural_image`, 1/f spectrum: a crop downscaled from it is still 1/f), and
each image is a crop of one texture, resized, maybe flipped or transposed, colour-shifted through a
lookup table, then JPEG-encoded. Every image is a pure function of (seed, index): the bytes do not
depend on the worker count. Files are written under a temporary name and renamed, so a rerun skips
the finished ones. Prints the CPU ms per image (this process and its workers) and the mean file size.
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from pipelines.sample_images import natural_image  # noqa: E402

POOL_SIZE, TEXTURE_SIDE = 12, 1024
FIRST_WNID = 1_440_764  # n01440764 is ImageNet's first class (tench); ours count up in steps
WNID_STEP = 1_733
GRAY_EVERY, CMYK_EVERY = 1_000, 5_000  # about one in GRAY_EVERY images is grayscale, etc.
# Aspect ratios (long / short side) and how often: ImageNet is mostly 4:3 (500x375 and 375x500).
ASPECTS, ASPECT_P = (4 / 3, 3 / 2, 1.0, 16 / 9, 5 / 4), (0.62, 0.14, 0.1, 0.06, 0.08)

CONTRAST = (1.2, 2.0)  # tuned so the mean file is ~110 KB, as ImageNet's

_pool: list[np.ndarray] = []


def wnid(label: int) -> str:
    return f"n{FIRST_WNID + label * WNID_STEP:08d}"


def relative_path(index: int, n: int, classes: int) -> str:
    """Images are spread evenly over the classes in index order: class = index * C // N."""
    name = wnid(index * classes // n)
    return f"{name}/{name}_{index}.JPEG"


def texture_pool(seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng([seed, 1 << 30])
    return [np.asarray(natural_image((TEXTURE_SIDE, TEXTURE_SIDE), rng)) for _ in range(POOL_SIZE)]


def image_size(rng: np.random.Generator) -> tuple[int, int]:
    """(width, height): short side log-normal around 350 px, clipped to 200-1,000, 3 in 4 landscape."""
    short = int(np.clip(rng.lognormal(np.log(345), 0.22), 200, 1000))
    if rng.random() < 0.03:  # ImageNet's tail of large photos
        short = int(rng.uniform(600, 1000))
    long = int(round(short * ASPECTS[rng.choice(len(ASPECTS), p=ASPECT_P)]))
    return (long, short) if rng.random() < 0.75 else (short, long)


def _colour_lut(rng: np.random.Generator) -> list[int]:
    """Per-channel contrast, gamma and offset as one 768-entry lookup table (Image.point)."""
    x = np.arange(256) / 255.0
    contrast, lut = rng.uniform(CONTRAST[0], CONTRAST[1]), []
    for _ in range(3):
        y = 0.5 + contrast * (x ** rng.uniform(0.8, 1.25) - 0.5) + rng.uniform(-0.1, 0.1)
        lut += (y.clip(0, 1) * 255).round().astype(int).tolist()
    return lut


def make_image(seed: int, index: int, pool: list[np.ndarray]) -> tuple[bytes, str]:
    """(file bytes, kind) of image `index`: a pure function of (seed, index) and the pool."""
    rng = np.random.default_rng([seed, index])
    w, h = image_size(rng)
    texture = pool[rng.integers(len(pool))]
    # the crop window: at least the target size where the texture allows (a downscale keeps 1/f)
    scale = rng.uniform(1.0, 1.8)
    cw, ch = min(TEXTURE_SIDE, int(w * scale)), min(TEXTURE_SIDE, int(h * scale))
    if max(w, h) > TEXTURE_SIDE:  # a large photo: the whole texture at its aspect, upscaled
        fit = TEXTURE_SIDE / max(w, h)
        cw, ch = int(w * fit), int(h * fit)
    x0, y0 = rng.integers(TEXTURE_SIDE - cw + 1), rng.integers(TEXTURE_SIDE - ch + 1)
    img = Image.fromarray(texture[y0:y0 + ch, x0:x0 + cw]).resize((w, h), Image.Resampling.BILINEAR)
    if rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    img = img.point(_colour_lut(rng))
    quality = 95 - int(21 * rng.random() ** 2)  # 75-95, most near the top, as photos are
    kind = "rgb"
    if index == 0:
        kind = "png"
    elif index % GRAY_EVERY == 3:
        kind, img = "gray", img.convert("L")
    elif index % CMYK_EVERY == 7:
        kind, img = "cmyk", img.convert("CMYK")
    buf = io.BytesIO()
    if kind == "png":
        img.save(buf, "PNG", compress_level=1)
    else:
        img.save(buf, "JPEG", quality=quality)
    return buf.getvalue(), kind


def _init_worker(seed: int) -> None:
    global _pool
    _pool = texture_pool(seed)


def _write_chunk(args: tuple[str, int, int, int, range]) -> tuple[int, int, dict]:
    """Write images `indices` (skipping finished files): (files written, bytes, kinds)."""
    out, seed, n, classes, indices = args
    written, size, kinds = 0, 0, {}
    for i in indices:
        path = Path(out) / relative_path(i, n, classes)
        if path.exists():
            continue
        data, kind = make_image(seed, i, _pool)
        path.parent.mkdir(exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        written, size, kinds[kind] = written + 1, size + len(data), kinds.get(kind, 0) + 1
    return written, size, kinds


def cpu_seconds() -> float:
    """User + system CPU time of this process and its waited-for children."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def generate(out: Path, n: int, classes: int, seed: int = 0, workers: int = 1, chunk: int = 200) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(str(out), seed, n, classes, range(a, min(n, a + chunk))) for a in range(0, n, chunk)]
    cpu0, wall0 = cpu_seconds(), time.perf_counter()
    written, size, kinds = 0, 0, {}
    if workers == 1:
        _init_worker(seed)
        results = map(_write_chunk, jobs)
    else:
        pool = multiprocessing.Pool(workers, _init_worker, (seed,))
        results = pool.imap_unordered(_write_chunk, jobs)
    for w, s, k in results:
        written, size = written + w, size + s
        for kind, count in k.items():
            kinds[kind] = kinds.get(kind, 0) + count
    if workers > 1:
        pool.close()
        pool.join()
    cpu, wall = cpu_seconds() - cpu0, time.perf_counter() - wall0
    return {"n": n, "classes": classes, "seed": seed, "workers": workers, "written": written,
            "mean_kb": size / max(1, written) / 1e3, "kinds": kinds, "cpu_s": round(cpu, 2),
            "cpu_ms_per_image": round(1e3 * cpu / max(1, written), 2), "wall_s": round(wall, 2),
            "loadavg": os.getloadavg()[0]}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--classes", type=int, default=1_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    a = p.parse_args(argv)
    if a.n < 1 or not 1 <= a.classes <= a.n:
        p.error(f"--n {a.n} --classes {a.classes}: expected 1 <= classes <= n")
    print(json.dumps(generate(a.out, a.n, a.classes, a.seed, a.workers)))


if __name__ == "__main__":
    main()
