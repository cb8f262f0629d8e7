#!/usr/bin/env python
"""Benchmark `fastbt convert` on generated ImageNet-like JPEGs, and measure size vs decode cost.

    .venv/bin/python scripts/bench_convert.py            # 2-3 minutes on 2 cores

1. Sources: N photo-like JPEGs (pipelines.sample_images.natural_image: 1/f spectrum, ~110 KB at 500x375,
   ImageNet's average), half landscape 500x375, half portrait, in 10 class folders.
2. Baseline: plain PIL in one process, per image: open + decode + convert RGB + resize to R + encode
   at Q into memory. This is the work any converter must do.
3. `convert` into both formats with W = 1 and 2 processes (FFCV includes packing the .beton; the
   `import ffcv` is done before timing): images/s (wall clock), and the CPU time per image of all
   processes, against the baseline's. Per image = the difference between runs on N and N/4 images,
   so fixed costs (starting processes, FFCV's writer) cancel out; they are shown apart. The
   projection for ImageNet-1k train divides the CPU time per image by 32 cores: it assumes linear
   scaling and storage that keeps up.
Every timing is the least of --repeats runs. CPU times hold on a busy machine; wall times do not.
4. Size vs decode cost, over R at Q and over Q at R: the stored JPEG's mean size (and ImageNet's
   projected total), the CPU time to decode it with PIL (libjpeg-turbo, as FFCV's CPU decoder), and
   how much RandomResizedCrop(224) enlarges an average crop of it (what a smaller R costs).
"""

from __future__ import annotations

import argparse
import functools
import io
import multiprocessing
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from pipelines.sample_images import natural_image  # noqa: E402
from pipelines.convert import convert  # noqa: E402
from pipelines.convert.options import JPEG_QUALITY, MAX_RESOLUTION, Options  # noqa: E402
from pipelines.convert.source import RESAMPLE, fit_within  # noqa: E402

IMAGENET_TRAIN = 1_281_167
PROJECT_CORES = 32


def make_sources(root: Path, n: int, size: tuple[int, int], classes: int = 10) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        folder = root / f"class_{i % classes:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        wh = size if i % 2 == 0 else size[::-1]
        paths.append(folder / f"img_{i:05d}.JPEG")
        natural_image(wh, rng).save(paths[-1], "JPEG", quality=90)
    return paths


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the converter's processes)."""
    for child in multiprocessing.active_children():  # FFCV's writer leaves its processes unjoined
        child.join()  # a child's time is counted once it is reaped
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def best_of(repeats: int, fn) -> tuple[float, float]:
    """(wall, CPU) seconds of `fn`, each the least of `repeats` runs: other work on a shared
    machine only ever adds time. CPU time is what a core spends, whatever else runs."""
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), cpu_seconds()
        fn()
        walls.append(time.perf_counter() - wall)
        cpus.append(cpu_seconds() - cpu)
    return min(walls), min(cpus)


def plain_pil(paths: list[Path], max_side: int, quality: int) -> None:
    """What any converter must do per image: decode, RGB, resize, encode (plain PIL, one process)."""
    for p in paths:
        with Image.open(p) as img:
            rgb = img.convert("RGB")
            rgb = rgb.resize(fit_within(rgb.size, max_side), RESAMPLE)
            rgb.save(io.BytesIO(), "JPEG", quality=quality)


def convert_once(src: Path, out: Path, fmt: str, workers: int, max_side: int, quality: int,
                 shard_size: int, limit: int | None = None) -> None:
    shutil.rmtree(out, ignore_errors=True)
    convert(src, out, Options(fmt, max_side, quality, shard_size, limit), workers=workers, progress=False,
            log=lambda msg: None)


# RandomResizedCrop(224, scale=(0.08, 1)) takes a crop of area s * image area, s uniform: its side is
# on average E[sqrt(s)] = 0.708 times sqrt(image area), then resized to 224.
MEAN_CROP_SIDE = (2 / 3) * (1 - 0.08**1.5) / (1 - 0.08)


def size_vs_decode(paths: list[Path], settings: list[tuple[int, int]], repeats: int) -> list[tuple]:
    """Per (R, Q): mean JPEG bytes, mean decode CPU seconds, PSNR of the JPEG against the resized
    image (what Q loses), and how much an average RRC-224 crop of the stored image is enlarged
    (> 1: the crop has fewer pixels than the network sees; what R loses)."""
    rows = []
    for side, q in settings:
        encoded, psnr = [], []
        for p in paths:
            with Image.open(p) as img:
                rgb = img.convert("RGB").resize(fit_within(img.size, side), RESAMPLE)
            buf = io.BytesIO()
            rgb.save(buf, "JPEG", quality=q)
            encoded.append((buf.getvalue(), rgb.size))
            err = np.asarray(Image.open(buf), np.float64) - np.asarray(rgb, np.float64)
            psnr.append(10 * np.log10(255**2 / np.mean(err**2)))
        _, decode = best_of(repeats, lambda: [Image.open(io.BytesIO(d)).load() for d, _ in encoded])
        scale_up = np.mean([224 / (MEAN_CROP_SIDE * np.sqrt(w * h)) for _, (w, h) in encoded])
        rows.append((side, q, np.mean([len(d) for d, _ in encoded]), decode / len(encoded), np.mean(psnr),
                     scale_up))
    return rows


def environment() -> str:
    with open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")),
                   platform.processor())
    return (f"{cpu}, {len(os.sched_getaffinity(0))} cores available; Python {platform.python_version()}, "
            f"Pillow {Image.__version__}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=400, help="number of source images (default 400)")
    parser.add_argument("--size", default="500x375", help="source size WxH (default 500x375)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--shard-size", type=int, default=50,
                        help="small, so W processes have shards to share (default 50)")
    parser.add_argument("--rq-images", type=int, default=100, help="images for the R/Q table (default 100)")
    parser.add_argument("--repeats", type=int, default=2, help="timings are the least of this many runs")
    args = parser.parse_args()
    size = tuple(int(x) for x in args.size.split("x"))
    R, Q = MAX_RESOLUTION, JPEG_QUALITY

    import ffcv.writer  # noqa: F401  (seconds of import, kept out of the timings)

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "train"
        paths = make_sources(src, args.images, size)
        mean_kb = np.mean([p.stat().st_size for p in paths]) / 1e3
        print(f"# bench_convert: {args.images} sources, {size[0]}x{size[1]} and {size[1]}x{size[0]}, "
              f"{mean_kb:.0f} KB mean; R={R} Q={Q}, shard size {args.shard_size}")
        print(f"# {environment()}; load average before: {os.getloadavg()[0]:.1f}\n")

        _, base = best_of(args.repeats, lambda: plain_pil(paths, R, Q))
        base /= args.images
        print(f"plain PIL decode+resize+encode, 1 process: {base * 1e3:.2f} ms CPU/image\n")
        print("| format | W | images/s | CPU ms/image | per-core cost vs plain PIL | fixed CPU s "
              "| ImageNet-1k train, 32 cores |")
        print("|---|---|---|---|---|---|---|")
        quarter = args.images // 4
        for fmt in ("dali", "ffcv"):
            for w in args.workers:
                run = functools.partial(convert_once, src, Path(tmp) / "out", fmt, w, R, Q, args.shard_size)
                wall, cpu = best_of(args.repeats, run)
                _, cpu_quarter = best_of(args.repeats, lambda: run(limit=quarter))
                per_image = (cpu - cpu_quarter) / (args.images - quarter)  # fixed costs cancel out
                fixed = cpu - per_image * args.images
                project = IMAGENET_TRAIN * per_image / PROJECT_CORES
                print(f"| {fmt} | {w} | {args.images / wall:.0f} | {per_image * 1e3:.2f} | "
                      f"{per_image / base:.2f}x | {fixed:.1f} | {project / 60:.1f} min |", flush=True)

        settings = [(side, Q) for side in (160, 192, 256, 320, 384, 512)] + \
                   [(R, q) for q in (75, 85, 95)]
        rows = size_vs_decode(paths[: args.rq_images], settings, repeats=5)  # decoding is quick: repeat more
        print(f"\nSize vs decode cost ({args.rq_images} images; decode = PIL/libjpeg-turbo, CPU time):\n")
        print("| R | Q | KB/image | ImageNet-1k train | decode ms/image | PSNR | avg RRC-224 crop scale-up |")
        print("|---|---|---|---|---|---|---|")
        for side, q, nbytes, decode, psnr, scale_up in rows:
            print(f"| {side} | {q} | {nbytes / 1e3:.1f} | {nbytes * IMAGENET_TRAIN / 1e9:.0f} GB | "
                  f"{decode * 1e3:.2f} | {psnr:.1f} dB | {scale_up:.2f}x |")
        print(f"\n# load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
