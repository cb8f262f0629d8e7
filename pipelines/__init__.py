"""Data in for fastbt: dataset formats (FFCV .beton, DALI webdataset shards, image folders) and the
two-view loader.

    pipelines/
      backends.py          the registry: name -> Backend(crops, eval_crops, writer), refuses duplicates
      ffcv_backend/ dali_backend/ torchvision_backend/    one folder per backend, reader and writer
      convert/             source scan, shards, journal, manifest, the convert driver, inspect
      augment/             the recipe (AugSpec, ViewSpec) and the batched photometric ops
      loader.py            TwoViewLoader (set_epoch(epoch, skip), iter -> views), Augment
      order.py, crop_params.py, resolution.py, errors.py

`BACKENDS` is the one table of data backends. Adding a backend is one folder whose `__init__`
registers one entry (`register(name, Backend(...))`), imported below. This package never imports
`fastbt`: it can be used (and tested) on its own; importing it imports no torch, ffcv nor DALI.
"""

from __future__ import annotations

from pathlib import Path

from pipelines.backends import BACKENDS, Backend, Writer, backend, register

# The built-in backends, each registering itself (light: their functions import the libraries).
from pipelines import ffcv_backend, dali_backend, torchvision_backend  # noqa: E402,F401  isort: skip

__all__ = ["BACKENDS", "Backend", "Writer", "backend", "register", "detect_format", "build_loader", "build_crops",
           "build_eval_loader", "TwoViewLoader", "Augment"]


def __getattr__(name: str):
    """`pipelines.TwoViewLoader`, `pipelines.Augment`: imported when first asked for (torch)."""
    if name in ("TwoViewLoader", "Augment"):
        from pipelines import loader

        return getattr(loader, name)
    raise AttributeError(f"module 'pipelines' has no attribute {name!r}")


def detect_format(path: str | Path) -> str:
    """The backend that reads `path` as it is: the format its manifest.json names when it is a
    converted dataset (the folder, or a file in it), else the first backend that reads image
    folders in place (torchvision)."""
    from pipelines.convert import manifest  # lazily: `import pipelines` stays light (no json, no metadata)

    if manifest.manifest_path(Path(path)).is_file():
        return manifest.read(path).format
    return next(name for name, b in BACKENDS.items() if not b.converted)


def build_loader(backend_name: str, path: str, *, aug, batch_size: int, device, workers: int,
                 rank: int = 0, world_size: int = 1, seed: int = 0, dtype=None, compiled: bool = False):
    """A `TwoViewLoader` over `path`: iterates (view1, view2) batches of `batch_size` per process,
    augmented with the recipe `aug` (an AugSpec) on `device`, this rank's shard of a seeded,
    per-epoch shuffle, the last partial batch dropped. The views come out in `dtype` (default
    float32), through the compiled photometric chain when `compiled`.

    Every backend yields the same shapes and dtype; they differ in where decoding happens.
    """
    from pipelines.loader import Augment, TwoViewLoader

    crops = build_crops(backend_name, path, aug=aug, batch_size=batch_size, device=device, rank=rank,
                        world_size=world_size, seed=seed, workers=workers)
    return TwoViewLoader(crops, Augment(aug, seed=seed, rank=rank, dtype=dtype, compiled=compiled))


def build_crops(backend_name: str, path: str, *, aug, batch_size: int, device, workers: int, rank: int = 0,
                world_size: int = 1, seed: int = 0, subset=None):
    """The crop source (pipelines.loader.CropSource) under `build_loader`: uint8 random-resized-crop
    + flip pairs of `aug`, before the photometric half. `subset`: indices into the dataset's
    samples (in the order of pipelines.convert.source.scan) to read instead of all of them; only
    a backend that reads image folders in place takes one."""
    from pipelines.errors import DataError

    chosen = backend(backend_name)
    kwargs = {"subset": subset} if subset is not None else {}
    if subset is not None and chosen.converted:
        raise DataError(f"{path}: a subset of a converted ({backend_name}) dataset is not supported; "
                         "read the image folder it was made from")
    return chosen.crops(path, aug=aug, batch_size=batch_size, device=device, rank=rank,
                        world_size=world_size, seed=seed, workers=workers, **kwargs)


def build_eval_loader(backend_name: str, path: str, *, size: int, resize: int, mean, std, batch_size: int,
                      device, workers: int, rank: int = 0, world_size: int = 1):
    """Iterates (images, labels) for evaluation: every image once, in dataset order (this rank's
    contiguous share when world_size > 1), resized so the short side is `resize`, center-cropped
    to `size`, normalized; float32 on `device`. The last batch may be smaller."""
    make = backend(backend_name).eval_crops
    return make(path, size=size, resize=resize, mean=mean, std=std, batch_size=batch_size,
                device=device, rank=rank, world_size=world_size, workers=workers)
