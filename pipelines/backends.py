"""The table of data backends: name -> the functions that read (and, for a converted format, write)
a dataset. Standard library only, and a leaf: each backend folder (`pipelines/<name>_backend/`)
registers its own entry when `pipelines` is imported, so the manifest, the options and the
converter read the table without importing any backend's library.

A backend is one folder plus one `register` call. Its entry holds functions, not names: small
functions of the backend's `__init__` that import ffcv / nvidia.dali inside them (`import ffcv`
alone takes seconds; the GPU machine has neither library).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional


@dataclass(frozen=True)
class Writer:
    """The writer half of a converted format: what `fastbt convert` does for it beyond writing the
    webdataset shards every format starts from (pipelines.convert.shards), and how `fastbt inspect`
    checks what it wrote.

    pack(partial, shard_dir, results, workers, progress) -> [DataFile]: after every shard is
        written (results: ShardResults by index), make the dataset's data files in `partial` and
        list them for the manifest (DALI: the shards themselves; FFCV: one .beton packed from them).
    check_files(files) -> None or the problem of a manifest's file list ("an ffcv dataset has one
        .beton").
    verify(manifest, chosen, skip) -> (labels, problems, decoded): the deep check of `inspect`.
    shard_files(result) -> names of the files written next to each shard (DALI: its index),
        committed with it; `write_shard_files(folder, result)` writes them (in the shard's worker,
        as <name>.tmp), `check_shard_files(folder, result)` checks them on resume (None if fine).
    spooled: the shards are an intermediate (in OUT.partial/shards/), deleted once packed.
    """

    pack: Callable
    check_files: Callable
    verify: Callable
    shard_files: Callable = lambda result: []
    write_shard_files: Optional[Callable] = None
    check_shard_files: Callable = lambda folder, result: None
    spooled: bool = False


@dataclass(frozen=True)
class Backend:
    """How one data backend reads a dataset (and writes it, for a format `convert` makes).

    crops(path, *, aug, batch_size, device, rank, world_size, seed, workers) -> a CropSource
        (pipelines.loader): uint8 random-resized-crop + flip pairs, this rank's share of a seeded
        per-epoch order (pipelines.order), the last partial batch dropped; `set_epoch(e, skip)`.
    eval_crops(path, *, size, resize, mean, std, batch_size, device, rank, world_size, workers)
        -> re-iterable (float images, labels) batches: every image once, in dataset order.
    writer: the format's writer half (`Writer`); None for a backend that reads image folders in place.
    """

    crops: Callable
    eval_crops: Callable
    writer: Optional[Writer] = None

    @property
    def converted(self) -> bool:
        """Reads what `fastbt convert` writes (a folder whose manifest.json names this backend's
        format), rather than an image folder as it is."""
        return self.writer is not None


BACKENDS: dict[str, Backend] = {}


def register(name: str, backend: Backend) -> None:
    """Add a backend: `data.backend` (and, with a writer, `convert --format`) then accepts `name`.
    A name is registered once: a second registration raises (it would replace the first silently)."""
    if name in BACKENDS:
        raise ValueError(f"data backend {name!r} is already registered")
    BACKENDS[name] = backend


def backend(name: str) -> Backend:
    try:
        return BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown data backend {name!r}; choose one of {', '.join(BACKENDS)}") from None


def formats() -> tuple[str, ...]:
    """The formats `convert` writes: the backends with a writer (ffcv, dali)."""
    return tuple(name for name, b in BACKENDS.items() if b.converted)
