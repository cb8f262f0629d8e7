#!/usr/bin/env python
"""The start-up of the loaders at ImageNet scale, on synthetic datasets (issue 23): no image data.

    nice -n 10 .venv/bin/python scripts/bench_start_scale.py [--n 1281167] [--world-size 8]

A synthetic DALI dataset of N samples (shards of 1,000: sparse .tar files of the right size,
wds2idx indexes, a manifest) is opened as the DALI loader opens it (`manifest.load` +
`ShardReader`), and the per-epoch order is drawn as every backend draws it
(`pipelines.order.epoch_order`; FFCV's `EpochOrder.sample_order` is that plus a slice). Prints CPU
seconds (process time, which holds on a busy machine), wall seconds, the Python heap held per
sample (tracemalloc) and the load average, as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipelines.convert import manifest  # noqa: E402
from pipelines.convert.options import Options  # noqa: E402
from pipelines.convert.shards import shard_name  # noqa: E402
from pipelines.dali_backend.index import INDEX_VERSION  # noqa: E402

JPEG_BYTES, SAMPLE_STRIDE = 39_000, 40_448  # a 320 px JPEG and its tar members' span


def synthetic_dali_dataset(folder: Path, n: int, shard_size: int = 1000, classes: int = 1000) -> manifest.Manifest:
    """A DALI dataset folder the loaders open, with sparse shards: indexes and sizes, no image data."""
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for shard, start in enumerate(range(0, n, shard_size)):
        count = min(shard_size, n - start)
        lines = [f"{INDEX_VERSION} {count}"]
        for k in range(start, start + count):
            at = 512 + (k - start) * SAMPLE_STRIDE
            lines.append(f"jpg {at} {JPEG_BYTES} {k:09d}.jpg cls {at + JPEG_BYTES + 512} 3 {k:09d}.cls")
        name = shard_name(shard)
        (folder / f"{name}.idx").write_text("\n".join(lines) + "\n")
        tar_bytes = 512 + count * SAMPLE_STRIDE + 1024
        with open(folder / f"{name}.tar", "wb") as f:
            f.truncate(tar_bytes)  # sparse: takes no disk
        files.append(manifest.DataFile(f"{name}.tar", tar_bytes, count, f"{name}.idx"))
    names = [f"n{i:08d}" for i in range(classes)]
    per_class = {c: n // classes + (i < n % classes) for i, c in enumerate(names)}
    m = manifest.Manifest(format="dali", options=Options("dali", shard_size=shard_size).recorded(), classes={c: i for i, c in enumerate(names)},
                          images_per_class=per_class, num_images=n, files=tuple(files), skipped=(),
                          source="synthetic", fastbt_version=manifest.fastbt_version(), created=manifest.now())
    manifest.write(folder, m)
    return manifest.read(folder)


def time_start(folder: Path, world_size: int, epochs: int = 3) -> dict:
    """Open the dataset as the DALI loader does, then draw `epochs` epochs' orders for rank 0."""
    from pipelines.dali_backend.reader import ShardReader
    from pipelines.order import epoch_order

    cpu0, wall0 = time.process_time(), time.perf_counter()
    reader = ShardReader(manifest.load(folder, format="dali"))
    cpu1, wall1 = time.process_time(), time.perf_counter()
    del reader
    tracemalloc.start()  # again, for the memory it holds (tracemalloc slows allocations)
    reader = ShardReader(manifest.load(folder, format="dali"))
    held, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    orders = []
    for epoch in range(epochs):
        c, w = time.process_time(), time.perf_counter()
        order = epoch_order(len(reader), 0, world_size, 0, epoch).numpy()
        orders.append((time.process_time() - c, time.perf_counter() - w))
    del order
    n = len(reader)
    return {"n": n, "world_size": world_size, "index_read_cpu_s": round(cpu1 - cpu0, 3),
            "index_read_wall_s": round(wall1 - wall0, 3), "index_bytes_per_sample": round(held / n, 1),
            "index_peak_bytes_per_sample": round(peak / n, 1),
            "epoch_order_cpu_s": [round(c, 3) for c, _ in orders], "epoch_order_wall_s": [round(w, 3) for _, w in orders],
            "loadavg": round(os.getloadavg()[0], 2)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=1_281_167)
    p.add_argument("--world-size", type=int, default=8)
    p.add_argument("--folder", type=Path, help="where to build the synthetic dataset (default: a temporary folder)")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=a.folder) as tmp:
        t = time.perf_counter()
        synthetic_dali_dataset(Path(tmp) / "dali", a.n)
        made = time.perf_counter() - t
        result = {**time_start(Path(tmp) / "dali", a.world_size), "synthetic_dataset_made_s": round(made, 1)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
