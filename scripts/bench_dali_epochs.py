#!/usr/bin/env python
"""Per-epoch time of the DALI crop source with its pipeline built once per loader (today) vs built
anew every epoch, on one generated dataset; optionally vs another fastbt checkout's DALI loader.

    .venv/bin/python scripts/bench_dali_epochs.py                  # ~2 minutes on 2 CPU cores
    mkdir /tmp/fastbt-old && git archive 8c1ac88 pipelines | tar -x -C /tmp/fastbt-old  # the loader before
    .venv/bin/python scripts/bench_dali_epochs.py --baseline /tmp/fastbt-old
    .venv/bin/python scripts/bench_dali_epochs.py --device cuda --batch 256 --images 4096

An epoch: decode + two crops of every image at --size px, through `pipelines.build_loader(...).crops`.
Modes: "built once" (this tree); "rebuilt" (this tree, the pipeline dropped before each epoch, so
every epoch pays for building one: graph, decoder and its threads, and releasing the old one);
"baseline" (the `pipelines` of the --baseline checkout, on the same dataset). Each mode runs in its
own process, --epochs epochs after one untimed warm-up epoch; --rounds rounds, the modes' order
rotated each round. Prints each mode's median epoch time and spread (min-max), and the time saved
per epoch relative to "built once", all from this run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def epochs(args) -> None:
    """In a child process: print the per-epoch seconds of one loader (the tree is on sys.path)."""
    import torch

    import pipelines
    from pipelines.augment import AugSpec

    torch.set_num_threads(1)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    crops = pipelines.build_loader("dali", args.data, aug=AugSpec(size=args.size), batch_size=args.batch,
                                   device=device, workers=args.workers).crops

    def one(epoch: int) -> float:
        start = time.perf_counter()
        if args.rebuild:
            crops.batches = None  # the next iteration builds a new pipeline; the old one is released here
        crops.set_epoch(epoch)
        for _ in crops:
            pass
        sync()
        return time.perf_counter() - start

    one(0)  # warm-up: DALI's first pipeline, the page cache
    print(" ".join(f"{one(e):.4f}" for e in range(1, args.epochs + 1)))


def make_data(folder: Path, images: int, workers: int) -> str:
    sys.path.insert(0, str(ROOT))
    from pipelines.sample_images import make_image_folder
    from pipelines.convert import convert
    from pipelines.convert.options import Options

    make_image_folder(folder / "src", classes=[f"c{i}" for i in range(8)], per_class=images // 8,
                      size=[(500, 375), (375, 500)], natural=True)
    convert(folder / "src", folder / "dali", Options("dali"), workers=workers, progress=False, log=lambda *_: None)
    return str(folder / "dali")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=112)
    ap.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--epochs", type=int, default=3, help="timed epochs per process")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--baseline", type=Path, help="another fastbt checkout whose DALI loader to time too")
    ap.add_argument("--data", help=argparse.SUPPRESS)  # the child processes' arguments
    ap.add_argument("--rebuild", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.data:
        return epochs(args)

    modes = {"built once": (ROOT, []), "rebuilt": (ROOT, ["--rebuild"])}
    if args.baseline:
        modes["baseline"] = (args.baseline.resolve(), [])
    times = {name: [] for name in modes}
    with tempfile.TemporaryDirectory() as tmp:
        data = make_data(Path(tmp), args.images, args.workers)
        common = [f"--{k}={getattr(args, k)}" for k in ("device", "batch", "size", "workers", "epochs")]
        for r in range(args.rounds):
            names = list(modes)[r % len(modes):] + list(modes)[:r % len(modes)]
            for name in names:
                tree, extra = modes[name]
                out = subprocess.run([sys.executable, __file__, f"--data={data}", *common, *extra], check=True,
                                     capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(tree)})
                times[name] += [float(x) for x in out.stdout.split()]

    print(f"DALI crop source, {args.images} photo-like JPEGs at the default R, batches of {args.batch}, "
          f"{args.size} px, {args.workers} threads, device {args.device}; {args.rounds} rounds x {args.epochs} "
          f"epochs per mode, interleaved; load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    once = statistics.median(times["built once"])
    for name, t in times.items():
        median = statistics.median(t)
        print(f"{name:>10}: median {median:.3f} s per epoch (min {min(t):.3f}, max {max(t):.3f}); "
              f"{median - once:+.3f} s per epoch vs built once, {median / once:.2f}x")


if __name__ == "__main__":
    main()
