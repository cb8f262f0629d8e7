#!/usr/bin/env python
"""Two-view pairs/s of the data backends, all in one run on one generated JPEG set.

    .venv/bin/python scripts/bench_pipelines.py                 # ~10 minutes on 2 cores (3 rounds)
    .venv/bin/python scripts/bench_pipelines.py --only-mixing   # the class-mixing table alone, ~1.5 min
    .venv/bin/python scripts/bench_pipelines.py --device cuda --batch 256 --workers 8

Data: N photo-like JPEGs (pipelines.sample_images.natural_image, ImageNet-like 500x375 and 375x500, ~110
KB) in an image folder, converted to FFCV and DALI at the default R and Q. Rows, at --size px with
--workers workers each (DataLoader processes, FFCV threads, DALI threads):

- torchvision baseline: the official code's pipeline, ImageFolder over the source folder + the
  per-image PIL two-view transform (torchvision_data.official_transform) in DataLoader workers;
- ffcv / dali / torchvision, end to end: a backend's crop source (decode + crop + flip), then the
  batched photometric augmentation (pipelines.augment) on --device, two rows each over the same
  warm crop source: "compiled", the path training takes with runtime.compile on
  (pipelines.build_loader(..., dtype=, compiled=True): the chain compiled, views in the training
  dtype, fp32 on a CPU and bf16 on CUDA), and "eager", the same ops uncompiled;
- CPU stage: a backend's crop source alone, decode + random-resized-crop + flip of both views,
  uint8, before the photometric half (DALI decodes on the GPU with --device cuda);
- the FFCV CPU stage with bilinear instead of bicubic resizing (AugSpec.interpolation), and FFCV's
  stock way to two views (two crop decoders: each image decoded twice) for comparison;
- decode-only ceiling: the stored JPEGs (the .beton's), already in memory, decoded whole with
  FFCV's libjpeg-turbo binding by --workers threads, nothing else;
- the photometric augmentation alone (compiled and eager), on fixed crops: what the end-to-end
  rows add.

Class mixing (printed after the rows; `--only-mixing` prints it alone): on a class-sorted source of
--mix-classes classes of 40 small images, converted with shards of one class each when sorted (as
ImageNet's 1,000-image shards are), the mean distinct classes per batch of --batch, epochs 0 and 3,
against the exact expectation for uniformly random batches (pipelines.class_mixing). "Before" is the
conversion as fastbt did it before shuffled shards (class-sorted shards) read the way each loader
read it then: DALI's stock readers.webdataset over the shards in a seeded per-epoch order with a
shuffle buffer of --mix-buffer-shards shards (4,096 samples is ~4 ImageNet shards); "after" is
today's: shuffled shards, read by today's loaders (and, for reference, by the same stock reader).

The end-to-end rows augment in this process with --torch-threads torch threads (default 1: on a
CPU, torch's OpenMP threads spinning beside the loader's threads slowed it up to 10x). A row's
rate: batches after the first --warmup ones (JIT compilation, torch.compile: "warm-up s", first
round only), over at least --seconds, across epoch boundaries (an epoch's start-up is part of the
cost). All rows run once per round, in order, for --repeats interleaved rounds; a row's ratio is
to the baseline of the same round, and the table gives the median and the min-max over rounds.
images/s counts decoded images, one per pair. CPU ms: CPU time of this process and its
DataLoader workers per pair (per image for the decode-only row), which holds up better than wall
time on a busy machine. Compare rows of one run; the load average is printed at the start and the
end. A smoke-sized run (tests/test_bench_pipelines.py): --images 16 --image-size 48 40 --size 32
--batch 4 --seconds 0.2 --repeats 1 --mix-classes 4.
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
import statistics
import sys
import tempfile
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from torchvision.datasets import ImageFolder  # noqa: E402

import pipelines  # noqa: E402
from fastbt.precision import autocast_dtype  # noqa: E402
from pipelines.augment import AugSpec, augment_pair  # noqa: E402
from pipelines.class_mixing import (class_sorted_shards, expected_distinct, mean_distinct,  # noqa: E402
                                    streamed_label_batches)
from pipelines.convert import convert  # noqa: E402
from pipelines.convert.manifest import MANIFEST_NAME, load  # noqa: E402
from pipelines.convert.options import JPEG_QUALITY, MAX_RESOLUTION, Options  # noqa: E402
from pipelines.loader import Augment, TwoViewLoader  # noqa: E402
from pipelines.sample_images import make_image_folder  # noqa: E402
from pipelines.torchvision_backend.official import official_transform  # noqa: E402

CLASSES = 8
SIZES = [(500, 375), (375, 500)]


def make_data(root: Path, n: int, workers: int, sizes=tuple(SIZES)) -> dict[str, str]:
    """{backend: path}: the source folder and its two conversions (kept and reused in `root`)."""
    src = root / "src"
    if not src.is_dir():  # a class per process: natural_image takes ~50 ms per image
        with multiprocessing.Pool(workers) as pool:
            pool.starmap(functools.partial(make_image_folder, natural=True),
                         [(src, [f"class_{i:02d}"], max(1, n // CLASSES), list(sizes), i) for i in range(CLASSES)])
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

    from pipelines.ffcv_backend.beton import beton_contents
    from pipelines.ffcv_backend.reader import open_dataset

    _, widths, heights, jpeg = beton_contents(Path(open_dataset(path)[1]))
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

    from pipelines.ffcv_backend.reader import loader_threads, open_dataset
    from pipelines.ffcv_backend.ops import EpochOrder

    def view(v):
        return RandomResizedCropRGBImageDecoder((aug.size, aug.size), v.crop_scale, v.crop_ratio), \
            [RandomHorizontalFlip(v.flip_p)]
    loader = Loader(open_dataset(path)[1], batch_size=batch, num_workers=loader_threads(workers), order=EpochOrder(0, 1, 0),
                    pipelines={"image": PipelineSpec("image", *view(aug.view1)), "label": None,
                               "image2": PipelineSpec("image", *view(aug.view2))})
    return lambda _: iter(loader)


def epochs_of(source):
    """A loader or crop source as epoch -> iterator (set_epoch first)."""
    def epoch(e):
        source.set_epoch(e)
        return iter(source)
    return epoch


def augment_only(aug: AugSpec, batch: int, device: torch.device, dtype=None, compiled: bool = False):
    """The photometric half alone, on fixed uint8 crops (what the end-to-end rows add)."""
    crops = [torch.randint(0, 256, (batch, 3, aug.size, aug.size), dtype=torch.uint8, device=device)
             .contiguous(memory_format=torch.channels_last) for _ in range(2)]
    generator = torch.Generator().manual_seed(0)

    def epoch(_):
        while True:
            yield augment_pair(*crops, aug, generator, dtype or torch.float32, compiled)
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


def backend_rows(backend: str, name: str, crops, aug: AugSpec, dtype) -> list:
    """A backend's end-to-end rows over one warm crop source: the path training takes (the chain
    compiled, views in the training dtype: pipelines.build_loader(..., dtype=, compiled=True) as
    fastbt.train.run does with runtime.compile on) and the eager chain beside it."""
    dtype_name = str(dtype or torch.float32).removeprefix("torch.")
    return [(f"{name}, end to end (compiled, {dtype_name}: as training)",
             lambda: epochs_of(TwoViewLoader(crops(backend), Augment(aug, dtype=dtype, compiled=True))), None),
            (f"{name}, end to end (eager, {dtype_name})",
             lambda: epochs_of(TwoViewLoader(crops(backend), Augment(aug, dtype=dtype))), None)]


def build_rows(args, paths: dict[str, str], aug: AugSpec, device: torch.device) -> list:
    """(name, () -> (epoch -> batches), images per batch: None for pairs); the baseline first."""
    sources = {}

    def crops(backend):  # built when first needed and kept warm: every row of a backend reads it
        if backend not in sources:
            sources[backend] = pipelines.build_loader(backend, paths[backend], aug=aug, batch_size=args.batch,
                                                      device=device, workers=args.workers).crops
        return sources[backend]

    dtype = autocast_dtype("auto", device)  # the training dtype: bf16 on CUDA, fp32 on the CPU
    dali = "dali (GPU decode)" if device.type == "cuda" else "dali (CPU)"
    return [
        # torchvision first: DataLoader forks its workers before other backends start threads
        ("torchvision baseline: official PIL transform", lambda: official_batches(
            paths["torchvision"], aug, args.batch, args.workers, device), None),
        *backend_rows("ffcv", "ffcv", crops, aug, dtype),
        *backend_rows("dali", dali, crops, aug, dtype),
        *backend_rows("torchvision", "torchvision (PIL crops)", crops, aug, dtype),
        ("ffcv CPU stage: decode + 2 x (crop + flip)", lambda: epochs_of(crops("ffcv")), None),
        ("ffcv CPU stage, bilinear (aug.interpolation)", lambda: epochs_of(pipelines.build_loader(
            "ffcv", paths["ffcv"], aug=dataclasses.replace(aug, interpolation="bilinear"),
            batch_size=args.batch, device=device, workers=args.workers).crops), None),
        ("ffcv stock: 2 x RandomResizedCropRGBImageDecoder (decodes twice)", lambda: stock_two_decoder_batches(
            paths["ffcv"], aug, args.batch, args.workers), None),
        ("decode-only ceiling (ffcv's libjpeg-turbo)", lambda: decode_only_batches(
            paths["ffcv"], args.batch, args.workers), args.batch),
        (f"{dali} stage: decode + 2 x (crop + flip)", lambda: epochs_of(crops("dali")), None),
        ("torchvision (PIL) stage: decode + 2 x (crop + flip)", lambda: epochs_of(crops("torchvision")), None),
        (f"photometric augmentation alone ({device.type}, batched, compiled)",
         lambda: augment_only(aug, args.batch, device, dtype, compiled=True), None),
        (f"photometric augmentation alone ({device.type}, batched, eager)",
         lambda: augment_only(aug, args.batch, device, dtype), None),
    ]


@dataclasses.dataclass
class Row:
    name: str
    images: int | None  # images per batch for a decode-only row, None: rates in pairs
    rates: list = dataclasses.field(default_factory=list)  # images/s, one per round
    ratios: list = dataclasses.field(default_factory=list)  # to the baseline of the same round
    cpu_ms: list = dataclasses.field(default_factory=list)  # CPU ms per pair (per image: decode-only)
    ready: float = 0.0  # seconds to the first round's warm-up end (JIT, compilation)


def run_rounds(rows: list, args, sync) -> list[Row]:
    """Every row once per round, in order, for --repeats rounds; a row's ratio is to the baseline
    (rows[0]) of its own round, so a load that changes between rounds cancels out."""
    results = [Row(name, images) for name, _, images in rows]
    makers = [functools.cache(make) for _, make, _ in rows]  # built once: later rounds run warm
    for round_ in range(args.repeats):
        for make, row in zip(makers, results):
            torch.set_num_threads(args.torch_threads)  # a plain ffcv Loader sets it to its worker count
            count, wall, cpu, ready = measure(make(), args.seconds, args.warmup, sync)
            row.rates.append(count * args.batch / wall)  # a pair is one decoded image
            row.ratios.append(row.rates[-1] / results[0].rates[-1])
            row.cpu_ms.append(cpu / (count * args.batch) * 1e3)
            row.ready = row.ready if round_ else ready
            print(f"  {row.name}: {row.rates[-1]:,.0f} images/s, {row.ratios[-1]:.2f}x", flush=True)
        print(f"round {round_ + 1}/{args.repeats} done, load average {os.getloadavg()[0]:.1f}", flush=True)
    return results


def print_table(results: list[Row]) -> None:
    med = statistics.median
    print("| row | pairs/s | images/s | vs baseline: median (min-max) | CPU ms per pair | warm-up s |\n"
          "|---|---|---|---|---|---|")
    for row in results:
        rate = med(row.rates)
        print(f"| {row.name} | {'-' if row.images else f'{rate:,.0f}'} | {rate:,.0f} | {med(row.ratios):.2f}x "
              f"({min(row.ratios):.2f}-{max(row.ratios):.2f}) | {med(row.cpu_ms):.2f} | {row.ready:.1f} |")
    by_name = {row.name: row for row in results}
    e2e = by_name[results[1].name]
    print(f"\n{e2e.name} / {results[0].name}: {med(e2e.ratios):.2f}x, {min(e2e.ratios):.2f}-"
          f"{max(e2e.ratios):.2f} over {len(e2e.ratios)} rounds (goal >= 2.5x on 2 CPU cores: "
          f"{'met' if med(e2e.ratios) >= 2.5 else 'NOT met'})")
    stage, ceiling, bilinear, twice = (med(by_name[n].rates) for n in (
        "ffcv CPU stage: decode + 2 x (crop + flip)", "decode-only ceiling (ffcv's libjpeg-turbo)",
        "ffcv CPU stage, bilinear (aug.interpolation)",
        "ffcv stock: 2 x RandomResizedCropRGBImageDecoder (decodes twice)"))
    print(f"FFCV CPU stage / decode-only ceiling, images/s: {stage / ceiling:.2f} (target >= 0.5: "
          f"{'met' if stage / ceiling >= 0.5 else 'NOT met'}); with bilinear resizing: {bilinear / ceiling:.2f}; "
          f"decoding once vs twice: {stage / twice:.2f}x the pairs/s")


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--seconds", type=float, default=8.0, help="timed seconds per row and round")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds of all rows")
    ap.add_argument("--torch-threads", type=int, default=1,
                    help="torch's threads in this process, which augments (the workers have the other cores)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed batches per row (JIT compilation)")
    ap.add_argument("--data", type=Path, help="keep the generated data here and reuse it (default: temporary)")
    ap.add_argument("--image-size", type=int, nargs=2, metavar=("W", "H"), default=SIZES[0],
                    help="source image size (and its transpose); default ImageNet-like 500 375")
    ap.add_argument("--mix-classes", type=int, default=50, help="classes of the class-mixing source")
    ap.add_argument("--mix-buffer-shards", type=int, default=3,
                    help="the stock reader's shuffle buffer, in shards (DALI loader before)")
    ap.add_argument("--only-mixing", action="store_true", help="print the class-mixing table alone")
    return ap.parse_args()


def main() -> None:
    args = parse_args()
    sys.unraisablehook = _quiet_numba_finalizer
    torch.set_num_threads(args.torch_threads)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    aug = AugSpec(size=args.size)
    load = os.getloadavg()
    if not args.only_mixing:
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            sizes = [tuple(args.image_size), tuple(args.image_size[::-1])]
            paths = make_data(args.data or Path(tmp), args.images, args.workers, sizes)
            prepared = time.perf_counter() - start
            print(f"{args.images} JPEGs ({' / '.join(f'{w}x{h}' for w, h in sizes)}, photo-like), converted at "
                  f"R={MAX_RESOLUTION} Q={JPEG_QUALITY} (ready in {prepared:.0f} s); {args.size} px, batch "
                  f"{args.batch}, {args.workers} workers + {args.torch_threads} torch thread(s), device {device}; "
                  f"{args.repeats} interleaved rounds of {args.seconds:g} s per row; torch {torch.__version__}, "
                  f"{len(os.sched_getaffinity(0))} cores, load average {' '.join(f'{x:.1f}' for x in load)}",
                  flush=True)
            print_table(run_rounds(build_rows(args, paths, aug, device), args, sync))
        print(f"load average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory() as tmp:
        mixing(Path(tmp), args.mix_classes, args.batch, args.mix_buffer_shards, args.workers)


if __name__ == "__main__":
    main()
