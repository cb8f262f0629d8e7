#!/usr/bin/env python
"""The loader at scale (issue 23): time from `build_loader` to the first batch, each epoch's
start-up, and memory over epochs, for a converted dataset; crops only (no photometric augment).

    nice -n 10 .venv/bin/python scripts/bench_load_scale.py DATASET [--epochs 3] [--batches 40] [--cold]

Runs in this process (start one per backend: RSS is per process). Per epoch: the seconds to its
first batch (set_epoch + iter + next: the order, FFCV's pipeline or DALI's feed), the CPU seconds
and batches read (at most --batches: a partial epoch when smaller than the epoch), then the RSS of
this process and its children, its file-backed part (mapped dataset pages), the machine's page cache
and the load average. `--batches 0` reads whole epochs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pipelines  # noqa: E402
from pipelines.augment import AugSpec  # noqa: E402


def _status_kb(pid: str, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next((int(line.split()[1]) for line in f if line.startswith(key)), 0)
    except OSError:
        return 0


def tree_rss_mb() -> tuple[float, float]:
    """(VmRSS, RssFile) in MB of this process and its children (DALI and FFCV use threads, so
    usually this process alone)."""
    me = str(os.getpid())
    pids = [me] + [p for p in os.listdir("/proc") if p.isdigit() and _parent(p) == me]
    return (sum(_status_kb(p, "VmRSS:") for p in pids) / 1024, sum(_status_kb(p, "RssFile:") for p in pids) / 1024)


def page_cache_mb() -> float:
    """The machine's page cache (Cached in /proc/meminfo): the dataset pages read so far, shared by
    every rank of a node (and by whatever else runs on the machine)."""
    with open("/proc/meminfo") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("Cached:")) / 1024


def _parent(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[1]
    except (OSError, IndexError):
        return ""


def drop_page_cache() -> None:
    """Start cold, as a node that has not read the dataset yet (root only)."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("1\n")
    except OSError as err:
        raise SystemExit(f"--cold: cannot write /proc/sys/vm/drop_caches ({err.strerror}): run as root or leave --cold out")


def measure(path: str, epochs: int, batches: int, batch_size: int, size: int, workers: int,
            cold: bool = False) -> dict:
    backend = pipelines.detect_format(path)
    if cold:
        drop_page_cache()
    rss0, cache0 = tree_rss_mb(), page_cache_mb()
    t0, c0 = time.perf_counter(), time.process_time()
    loader = pipelines.build_loader(backend, path, aug=AugSpec(size=size), batch_size=batch_size, device="cpu",
                                    workers=workers)
    built = time.perf_counter() - t0
    rows = []
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        t, c = time.perf_counter(), time.process_time()
        it = loader.crop_batches()
        next(it)
        first = time.perf_counter() - t
        n = 1
        for _ in it:
            n += 1
            if n == batches:
                break
        it.close()
        rss, rss_file = tree_rss_mb()
        rows.append({"epoch": epoch, "first_batch_s": round(first, 2), "batches": n,
                     "cpu_s": round(time.process_time() - c, 2), "wall_s": round(time.perf_counter() - t, 2),
                     "rss_mb": round(rss, 1), "rss_file_mb": round(rss_file, 1),
                     "page_cache_mb": round(page_cache_mb(), 1),
                     "loadavg": round(os.getloadavg()[0], 2)})
    return {"backend": backend, "n": loader.dataset_size, "batch_size": batch_size, "size": size,
            "workers": workers, "cold": cold, "rss_before_mb": round(rss0[0], 1),
            "page_cache_before_mb": round(cache0, 1), "build_loader_s": round(built, 2),
            "build_to_first_batch_s": round(built + rows[0]["first_batch_s"], 2),
            "cpu_to_end_s": round(time.process_time() - c0, 2), "epochs": rows}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("dataset")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batches", type=int, default=40, help="at most this many batches per epoch (0: the whole epoch)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--size", type=int, default=112, help="crop size")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--cold", action="store_true", help="drop the page cache first (root)")
    a = p.parse_args(argv)
    print(json.dumps(measure(a.dataset, a.epochs, a.batches, a.batch_size, a.size, a.workers, a.cold)))


if __name__ == "__main__":
    main()
