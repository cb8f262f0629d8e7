#!/usr/bin/env python
"""Two-view pairs/s of the data backends, all in one run on one generated JPEG set.

    .venv/bin/python scripts/bench_pipelines.py                 # 4-6 minutes on 2 cores
    .venv/bin/python scripts/bench_pipelines.py --only-mixing   # the class-mixing table alone, ~1.5 min
    .venv/bin/python scripts/bench_pipelines.py --device cuda --batch 256 --workers 8

Data: N photo-like JPEGs (tests/make_images.natural_image, ImageNet-like 500x375 and 375x500, ~110
KB) in an image folder, converted to FFCV and DALI at the default R and Q. Rows, at --size px with
--workers workers each (DataLoader processes, FFCV threads, DALI threads):

- torchvision baseline: the official code's pipeline, ImageFolder over the source folder + the
  per-image PIL two-view transform (torchvision_data.official_transform) in DataLoader workers;
- ffcv / dali, end to end: pipelines.build_loader, i.e. decode + crop + flip by the backend, then
  the batched photometric augmentation (pipelines.augment) on --device;
- CPU stage: a backend's crop source alone, decode + random-resized-crop + flip of both views,
  uint8, before the photometric half (DALI decodes on the GPU with --device cuda);
- the FFCV CPU stage with bilinear instead of bicubic resizing (AugSpec.interpolation), and FFCV's
  stock way to two views (two crop decoders: each image decoded twice) for comparison;
- decode-only ceiling: the stored JPEGs (the .beton's), already in memory, decoded whole with
  FFCV's libjpeg-turbo binding by --workers threads, nothing else;
- the photometric augmentation alone, on fixed crops: what the end-to-end rows add.

Class mixing (printed after the rows; `--only-mixing` prints it alone): on a class-sorted source of
--mix-classes classes of 40 small images, converted with shards of one class each when sorted (as
ImageNet's 1,000-image shards are), the mean distinct classes per batch of --batch, epochs 0 and 3,
against the exact expectation for uniformly random batches (tests/mixing.py). "Before" is the
conversion as fastbt did it before shuffled shards (class-sorted shards) read the way each loader
read it then: DALI's stock readers.webdataset over the shards in a seeded per-epoch order with a
shuffle buffer of --mix-buffer-shards shards (4,096 samples is ~4 ImageNet shards); "after" is
today's: shuffled shards, read by today's loaders (and, for reference, by the same stock reader).

The end-to-end rows augment in this process with --torch-threads torch threads (default 1: on a
CPU, torch's OpenMP threads spinning beside the loader's threads slowed it up to 10x). A row's
rate: batches after the first --warmup ones (JIT compilation), over at least --seconds,
across epoch boundaries (an epoch's start-up is part of the cost). images/s counts decoded images,
one per pair. CPU ms: CPU time of this process and its DataLoader workers per pair (per image for
the decode-only row), which holds up better than wall time on a busy machine. Compare rows of one
run; the load average is printed at the start and the end.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import itertools
import multiprocessing
import os
import resource
import sys
import tempfile
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from torchvision.datasets import ImageFolder  # noqa: E402

import pipelines  # noqa: E402
from make_images import make_image_folder  # noqa: E402
from mixing import (class_sorted_shards, expected_distinct, mean_distinct,  # noqa: E402
                    streamed_label_batches)
from pipelines.augment import AugSpec, augment_pair  # noqa: E402
from pipelines.convert import convert  # noqa: E402
from pipelines.manifest import MANIFEST_NAME, load  # noqa: E402
from pipelines.options import JPEG_QUALITY, MAX_RESOLUTION, Options  # noqa: E402
from pipelines.torchvision_data import official_transform  # noqa: E402

CLASSES = 8
SIZES = [(500, 375), (375, 500)]


def make_data(root: Path, n: int, workers: int) -> dict[str, str]:
    """{backend: path}: the source folder and its two conversions (kept and reused in `root`)."""
    src = root / "src"
    if not src.is_dir():  # a class per process: natural_image takes ~50 ms per image
        with multiprocessing.Pool(workers) as pool:
            pool.starmap(functools.partial(make_image_folder, natural=True),
                         [(src, [f"class_{i:02d}"], n // CLASSES, SIZES, i) for i in range(CLASSES)])
    for fmt in ("ffcv", "dali"):
        if not (root / fmt / MANIFEST_NAME).is_file():
            convert(src, root / fmt, Options(fmt), workers=workers, progress=False, log=lambda *_: None)
    return {"torchvision": str(src), "ffcv": str(root / "ffcv"), "dali": str(root / "dali")}


class _TwoViews:
    """The official code's transform: both views of one PIL image (facebookresearch/barlowtwins)."""

    def __init__(self, aug: AugSpec):
        self.views = official_transform(aug.view1, aug), official_transform(aug.view2, aug)

    def __call__(self, image):
        return self.views[0](image), self.views[1](image)


def official_batches(path: str, aug: AugSpec, batch: int, workers: int, device: torch.device):
    data = ImageFolder(path, _TwoViews(aug))
    loader = DataLoader(data, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True,
                        pin_memory=device.type == "cuda")

    def epoch(_):
        for (view1, view2), _labels in loader:
            yield view1.to(device, non_blocking=True), view2.to(device, non_blocking=True)
    return epoch


def decode_only_batches(path: str, batch: int, workers: int):
    """The stored JPEGs (the .beton's), read into memory first, decoded whole by `workers` threads
    with FFCV's libjpeg-turbo binding (as the FFCV loader decodes), a batch at a time."""
    from ffcv.libffcv import imdecode

    from pipelines.ffcv_data import _dataset, beton_contents

    _, widths, heights, jpeg = beton_contents(Path(_dataset(path)[1]))
    jpegs = [np.frombuffer(jpeg(i), np.uint8) for i in range(len(widths))]
    shapes = np.stack([heights, widths], 1).tolist()
    pool = ThreadPoolExecutor(workers)

    def decode(samples):
        pixels = np.empty(int(heights.max()) * int(widths.max()) * 3, np.uint8)
        for i in samples:
            h, w = shapes[i]
            imdecode(jpegs[i], pixels, h, w, h, w, 0, 0, 1, 1, False, False)

    def epoch(_):
        for start in range(0, len(jpegs) - batch + 1, batch):
            for _ in pool.map(decode, [range(start + k, start + batch, workers) for k in range(workers)]):
                pass
            yield start
    return epoch


def stock_two_decoder_batches(path: str, aug: AugSpec, batch: int, workers: int):
    """FFCV's own way to two views: two RandomResizedCropRGBImageDecoders (two decodes, OpenCV
    INTER_AREA, unseeded numba RNG) + RandomHorizontalFlip each."""
    from ffcv.fields.decoders import RandomResizedCropRGBImageDecoder
    from ffcv.loader import Loader
    from ffcv.pipeline import PipelineSpec
    from ffcv.transforms import RandomHorizontalFlip

    from pipelines.ffcv_data import _dataset, _threads
    from pipelines.ffcv_ops import EpochOrder

    def view(v):
        return RandomResizedCropRGBImageDecoder((aug.size, aug.size), v.crop_scale, v.crop_ratio), \
            [RandomHorizontalFlip(v.flip_p)]
    loader = Loader(_dataset(path)[1], batch_size=batch, num_workers=_threads(workers), order=EpochOrder(0, 1, 0),
                    pipelines={"image": PipelineSpec("image", *view(aug.view1)), "label": None,
                               "image2": PipelineSpec("image", *view(aug.view2))})
    return lambda _: iter(loader)


def epochs_of(source):
    """A loader or crop source as epoch -> iterator (set_epoch first)."""
    def epoch(e):
        source.set_epoch(e)
        return iter(source)
    return epoch


def augment_only(aug: AugSpec, batch: int, device: torch.device):
    """The photometric half alone, on fixed uint8 crops (what the end-to-end rows add)."""
    crops = [torch.randint(0, 256, (batch, 3, aug.size, aug.size), dtype=torch.uint8, device=device)
             .contiguous(memory_format=torch.channels_last) for _ in range(2)]
    generator = torch.Generator().manual_seed(0)

    def epoch(_):
        while True:
            yield augment_pair(*crops, aug, generator)
    return epoch


def cpu_seconds() -> float:
    """CPU time of this process's threads and of its reaped children (DataLoader workers)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def measure(epoch, seconds: float, warmup: int, sync) -> tuple[int, float, float, float]:
    """(batches, wall seconds, CPU seconds, seconds to the warm-up's end) of an endless run of
    epochs, timed after `warmup` batches for at least `seconds`."""
    batches = itertools.chain.from_iterable(epoch(e) for e in itertools.count())
    start = time.perf_counter()
    for _ in range(warmup):
        next(batches)
    sync()
    ready, count = time.perf_counter() - start, 0
    wall, cpu = time.perf_counter(), cpu_seconds()
    while time.perf_counter() - wall < seconds:
        next(batches)
        count += 1
    sync()
    wall = time.perf_counter() - wall
    del batches  # stops (and reaps) the backend's workers: their CPU time counts, and the next row runs alone
    return count, wall, cpu_seconds() - cpu, ready


def _quiet_numba_finalizer(unraisable) -> None:
    """numba 0.68's dispatcher finalizer may raise a harmless KeyError at garbage collection."""
    frames = traceback.extract_tb(unraisable.exc_traceback)
    if not (unraisable.exc_type is KeyError and frames and frames[-1].filename.endswith("dispatcher.py")):
        sys.__unraisablehook__(unraisable)


MIX_PER_CLASS, MIX_EPOCHS = 40, (0, 3)


def mixing(root: Path, classes: int, batch: int, buffer_shards: int, workers: int) -> None:
    """Print the class-mixing table: distinct classes per batch before and after, per loader."""
    src = root / "src"
    make_image_folder(src, classes=[f"class_{i:03d}" for i in range(classes)], per_class=MIX_PER_CLASS,
                      size=(32, 24))
    paths = {"torchvision": str(src)}
    options = dict(max_resolution=32, shard_size=MIX_PER_CLASS)  # sorted: one class per shard
    for when in ("before", "after"):
        with class_sorted_shards() if when == "before" else contextlib.nullcontext():
            for fmt in ("dali", "ffcv"):
                convert(src, root / f"{fmt}-{when}", Options(fmt, **options), workers=workers, progress=False,
                        log=lambda *_: None)
                paths[f"{fmt}-{when}"] = str(root / f"{fmt}-{when}")
    expected = expected_distinct([MIX_PER_CLASS] * classes, batch)

    def loader(path, backend):
        crops = pipelines.build_loader(backend, path, aug=AugSpec(size=16), batch_size=batch, device="cpu",
                                       workers=workers).crops

        def labels(epoch):
            crops.set_epoch(epoch)
            return [y for _, _, y in crops]
        return labels

    def stock(path):
        return lambda epoch: streamed_label_batches(load(path), batch, buffer_shards * MIX_PER_CLASS, 0, epoch)

    rows = [  # (loader, before: epoch -> label batches, after)
        ("dali (fastbt loader; before: its stock-reader scheme)", stock(paths["dali-before"]),
         loader(paths["dali-after"], "dali")),
        ("dali stock readers.webdataset + shuffle buffer", stock(paths["dali-before"]),
         stock(paths["dali-after"])),
        ("ffcv", loader(paths["ffcv-before"], "ffcv"), loader(paths["ffcv-after"], "ffcv")),
        ("torchvision (reads the source folder)", loader(paths["torchvision"], "torchvision"), None),
    ]
    print(f"\nclass mixing: {classes} classes x {MIX_PER_CLASS} images, class-sorted source, batch {batch}, "
          f"stock-reader buffer {buffer_shards} shards; uniformly random batches: {expected:.2f} "
          "distinct classes")
    print("| loader | " + " | ".join(f"{w} epoch {e}" for w in ("before", "after") for e in MIX_EPOCHS)
          + " | after / random |\n|---|---|---|---|---|---|")
    for name, before, after in rows:
        figures = [mean_distinct(before(e)) for e in MIX_EPOCHS]
        figures += [mean_distinct(after(e)) for e in MIX_EPOCHS] if after else figures
        print(f"| {name} | " + " | ".join(f"{f:.2f}" for f in figures)
              + f" | {min(figures[2:]) / expected:.3f}-{max(figures[2:]) / expected:.3f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--seconds", type=float, default=8.0, help="timed seconds per row")
    ap.add_argument("--torch-threads", type=int, default=1,
                    help="torch's threads in this process, which augments (the workers have the other cores)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed batches per row (JIT compilation)")
    ap.add_argument("--data", type=Path, help="keep the generated data here and reuse it (default: temporary)")
    ap.add_argument("--mix-classes", type=int, default=50, help="classes of the class-mixing source")
    ap.add_argument("--mix-buffer-shards", type=int, default=3,
                    help="the stock reader's shuffle buffer, in shards (DALI loader before)")
    ap.add_argument("--only-mixing", action="store_true", help="print the class-mixing table alone")
    args = ap.parse_args()
    sys.unraisablehook = _quiet_numba_finalizer
    torch.set_num_threads(args.torch_threads)

    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    aug = AugSpec(size=args.size)
    load = os.getloadavg()
    if args.only_mixing:
        with tempfile.TemporaryDirectory() as tmp:
            mixing(Path(tmp), args.mix_classes, args.batch, args.mix_buffer_shards, args.workers)
        return
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        paths = make_data(args.data or Path(tmp), args.images, args.workers)
        prepared = time.perf_counter() - start
        built = {}

        def loader(backend):  # built when first needed: the crop-stage rows reuse the warm loaders
            if backend not in built:
                built[backend] = pipelines.build_loader(backend, paths[backend], aug=aug, batch_size=args.batch,
                                                        device=device, workers=args.workers)
            return built[backend]

        dali = "dali (GPU decode)" if device.type == "cuda" else "dali (CPU)"
        rows = [  # (name, () -> (epoch -> batches), images per batch: None for pairs)
            # torchvision first: DataLoader forks its workers before other backends start threads
            ("torchvision baseline: official PIL transform", lambda: official_batches(
                paths["torchvision"], aug, args.batch, args.workers, device), None),
            ("torchvision (PIL) stage: decode + 2 x (crop + flip)", lambda: epochs_of(loader("torchvision").crops), None),
            ("ffcv, end to end", lambda: epochs_of(loader("ffcv")), None),
            ("ffcv CPU stage: decode + 2 x (crop + flip)", lambda: epochs_of(loader("ffcv").crops), None),
            ("ffcv CPU stage, bilinear (aug.interpolation)", lambda: epochs_of(pipelines.build_loader(
                "ffcv", paths["ffcv"], aug=dataclasses.replace(aug, interpolation="bilinear"),
                batch_size=args.batch, device=device, workers=args.workers).crops), None),
            ("ffcv stock: 2 x RandomResizedCropRGBImageDecoder (decodes twice)", lambda: stock_two_decoder_batches(
                paths["ffcv"], aug, args.batch, args.workers), None),
            ("decode-only ceiling (ffcv's libjpeg-turbo)", lambda: decode_only_batches(
                paths["ffcv"], args.batch, args.workers), args.batch),
            (f"{dali}, end to end", lambda: epochs_of(loader("dali")), None),
            (f"{dali} stage: decode + 2 x (crop + flip)", lambda: epochs_of(loader("dali").crops), None),
            (f"photometric augmentation alone ({device.type}, batched)",
             lambda: augment_only(aug, args.batch, device), None),
        ]
        print(f"{args.images} JPEGs ({' / '.join(f'{w}x{h}' for w, h in SIZES)}, photo-like), converted at "
              f"R={MAX_RESOLUTION} Q={JPEG_QUALITY} (ready in {prepared:.0f} s); {args.size} px, batch "
              f"{args.batch}, {args.workers} workers + {args.torch_threads} torch thread(s), device {device}; "
              f"torch {torch.__version__}, "
              f"{len(os.sched_getaffinity(0))} cores, load average {' '.join(f'{x:.1f}' for x in load)}")
        print("| row | pairs/s | images/s | vs baseline | CPU ms per pair | warm-up s |\n|---|---|---|---|---|---|")
        images_per_s = {}
        for name, make, images in rows:
            epoch = make()
            torch.set_num_threads(args.torch_threads)  # a plain ffcv Loader sets it to its worker count
            count, wall, cpu, ready = measure(epoch, args.seconds, args.warmup, sync)
            images_per_s[name] = count * args.batch / wall  # a pair is one decoded image
            ratio = images_per_s[name] / images_per_s[rows[0][0]]
            pairs = "-" if images else f"{images_per_s[name]:,.0f}"
            print(f"| {name} | {pairs} | {images_per_s[name]:,.0f} | {ratio:.2f}x | "
                  f"{cpu / (count * args.batch) * 1e3:.2f} | {ready:.1f} |", flush=True)
    e2e, stage = (images_per_s[rows[i][0]] / images_per_s[rows[j][0]] for i, j in ((2, 0), (3, 6)))
    print(f"\nFFCV end to end / torchvision baseline: {e2e:.2f}x (target >= 3x: {'met' if e2e >= 3 else 'NOT met'})")
    print(f"FFCV CPU stage / decode-only ceiling, images/s: {stage:.2f} "
          f"(target >= 0.5: {'met' if stage >= 0.5 else 'NOT met'}); with bilinear resizing: "
          f"{images_per_s[rows[4][0]] / images_per_s[rows[6][0]]:.2f}; "
          f"decoding once vs twice: {images_per_s[rows[3][0]] / images_per_s[rows[5][0]]:.2f}x the pairs/s")
    print(f"load average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory() as tmp:
        mixing(Path(tmp), args.mix_classes, args.batch, args.mix_buffer_shards, args.workers)


if __name__ == "__main__":
    main()
