"""The memory pre-flight of the FFCV loader (issue 23): will the .beton fit the node's memory the
way FFCV is about to cache it?

FFCV caches a .beton in one of two ways. The OS cache (`os_cache=True`, FFCV's default) maps the
file: its pages sit in the page cache once per node, shared by every rank; a .beton larger than the
available memory still works, but each epoch then reads it from disk. The process cache
(`os_cache=False`, chosen with FFCV's environment variable FFCV_DEFAULT_CACHE_PROCESS=1) gives each
process its own buffers, and a random order (fastbt's, every epoch) needs about the whole dataset in
each: ranks per node x .beton size, which is how nodes run out of memory or end in FFCV's "Not
enough memory; try QUASI_RANDOM" (ffcv issues 120, ffcv-imagenet 10). fastbt keeps its own order
(the same samples as every other backend), so the fix is the cache, not QUASI_RANDOM.
"""

from __future__ import annotations

import os
import warnings

from pipelines.errors import DataError

PROCESS_CACHE_VARIABLE = "FFCV_DEFAULT_CACHE_PROCESS"  # read by ffcv.loader at import
HEADROOM = 0.8  # of MemAvailable: the model, the batches and the other processes need the rest


def mem_available() -> int:
    """MemAvailable of /proc/meminfo in bytes (what the kernel can give without swapping)."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise OSError("/proc/meminfo has no MemAvailable line")


def ranks_per_node() -> int:
    """Training processes on this node: torchrun's LOCAL_WORLD_SIZE (1 outside torchrun)."""
    return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def choose_os_cache(beton: str, dataset_bytes: int | None = None, ranks: int | None = None,
                    available: int | None = None) -> bool:
    """The `os_cache` to give FFCV's Loader for `beton`: the process cache only where the user asked
    for it (FFCV_DEFAULT_CACHE_PROCESS=1) and a copy per rank fits; refused in one line (DataError)
    where it does not. With the OS cache, a .beton larger than the available memory gets a warning."""
    size = os.path.getsize(beton) if dataset_bytes is None else dataset_bytes
    ranks = ranks_per_node() if ranks is None else ranks
    available = mem_available() if available is None else available
    gb = 1e9
    if int(os.environ.get(PROCESS_CACHE_VARIABLE, "0")):
        if size * ranks > HEADROOM * available:
            raise DataError(f"{beton}: {size / gb:.1f} GB x {ranks} rank(s) on this node = {size * ranks / gb:.1f} GB, "
                            f"more than {HEADROOM:.0%} of the {available / gb:.1f} GB available, with FFCV's process "
                            f"cache ({PROCESS_CACHE_VARIABLE}=1, one copy per rank): unset {PROCESS_CACHE_VARIABLE} "
                            "to share one copy in the page cache")
        return False
    if size > HEADROOM * available:
        warnings.warn(f"{beton}: {size / gb:.1f} GB, more than {HEADROOM:.0%} of the {available / gb:.1f} GB "
                      "available on this node: the page cache cannot hold it, every epoch reads it from disk",
                      stacklevel=2)
    return True
