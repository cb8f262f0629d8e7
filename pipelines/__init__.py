"""Data in for fastbt: dataset formats (FFCV .beton, DALI webdataset shards) and two-view loaders.

`BACKENDS` is the one table of data backends: name -> the functions that read it. Adding a backend
is one crop-source function (and an evaluation one) plus one `register` call (or line below).
This package never imports `fastbt`: it can be used (and tested) on its own.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Union

Ref = Union[str, Callable]  # a function, or "module:function", imported on first use


@dataclass(frozen=True)
class Backend:
    """How one data backend reads a dataset. Each function is given as "module:function" (imported
    when first called: `import ffcv` alone takes seconds) or as the function itself.

    crops(path, *, aug, batch_size, device, rank, world_size, seed, workers) -> a CropSource
        (pipelines.loader): uint8 random-resized-crop + flip pairs, this rank's share of a seeded
        per-epoch order (pipelines.order), the last partial batch dropped.
    eval_crops(path, *, size, resize, mean, std, batch_size, device, rank, world_size, workers)
        -> re-iterable (float images, labels) batches: every image once, in dataset order.
    verify(manifest, chosen, skip) -> (labels, problems, decoded): `fastbt inspect`'s deep check of
        a converted dataset; None for a backend that reads image folders in place.
    """

    crops: Ref
    eval_crops: Ref
    verify: Ref | None = None

    @property
    def converted(self) -> bool:
        """Reads what `fastbt convert` writes (a folder whose manifest.json names this backend's
        format), rather than an image folder as it is."""
        return self.verify is not None


BACKENDS: dict[str, Backend] = {
    "ffcv": Backend("pipelines.ffcv_data:ffcv_crops", "pipelines.ffcv_data:ffcv_center_crops",
                    verify="pipelines.verify:verify_ffcv"),
    "dali": Backend("pipelines.dali_data:dali_crops", "pipelines.dali_data:dali_center_crops",
                    verify="pipelines.verify:verify_dali"),
    "torchvision": Backend("pipelines.torchvision_data:torchvision_crops",
                           "pipelines.torchvision_data:center_crop_loader"),
}


def register(name: str, backend: Backend) -> None:
    """Add (or replace) a backend: `data.backend` then accepts `name`."""
    BACKENDS[name] = backend


def backend(name: str) -> Backend:
    try:
        return BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown data backend {name!r}; choose one of {', '.join(BACKENDS)}") from None


def resolve(ref: Ref) -> Callable:
    """The function a Backend field names."""
    if callable(ref):
        return ref
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


def detect_format(path: str | Path) -> str:
    """The backend that reads `path` as it is: the format its manifest.json names when it is a
    converted dataset (the folder, or a file in it), else the first backend that reads image
    folders in place (torchvision)."""
    from pipelines import manifest  # not at the top: manifest -> options -> this package

    if manifest.manifest_path(Path(path)).is_file():
        return manifest.read(path).format
    return next(name for name, b in BACKENDS.items() if not b.converted)


def build_loader(backend_name: str, path: str, *, aug, batch_size: int, device, workers: int,
                 rank: int = 0, world_size: int = 1, seed: int = 0):
    """A `TwoViewLoader` over `path`: iterates (view1, view2) batches of `batch_size` per process,
    augmented with the recipe `aug` (an AugSpec) on `device`, this rank's shard of a seeded,
    per-epoch shuffle, the last partial batch dropped.

    Every backend yields the same shapes and dtype; they differ in where decoding happens.
    """
    from pipelines.loader import TwoViewLoader

    make_crops = resolve(backend(backend_name).crops)
    crops = make_crops(path, aug=aug, batch_size=batch_size, device=device, rank=rank,
                       world_size=world_size, seed=seed, workers=workers)
    return TwoViewLoader(crops, aug, seed=seed, rank=rank)


def build_eval_loader(backend_name: str, path: str, *, size: int, resize: int, mean, std, batch_size: int,
                      device, workers: int, rank: int = 0, world_size: int = 1):
    """Iterates (images, labels) for evaluation: every image once, in dataset order (this rank's
    contiguous share when world_size > 1), resized so the short side is `resize`, center-cropped
    to `size`, normalized; float32 on `device`. The last batch may be smaller."""
    make = resolve(backend(backend_name).eval_crops)
    return make(path, size=size, resize=resize, mean=mean, std=std, batch_size=batch_size,
                device=device, rank=rank, world_size=world_size, workers=workers)
