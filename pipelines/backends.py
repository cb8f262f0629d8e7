"""The table of data backends: name -> the functions that read it (standard library only).

A leaf module: `pipelines.options` (and through it the manifest) reads it without importing the
package's loaders, so the package, its options and its manifest import no cycle.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
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
