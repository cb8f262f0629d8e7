"""Data in for fastbt: dataset formats (FFCV .beton, DALI webdataset shards) and two-view loaders.

This package never imports `fastbt`: it can be used (and tested) on its own.
"""

from __future__ import annotations

BACKENDS = ("ffcv", "dali", "torchvision")


def build_loader(backend: str, path: str, *, aug, batch_size: int, device, rank: int = 0,
                 world_size: int = 1, seed: int = 0, workers: int = 2):
    """A `TwoViewLoader` over `path`: iterates (view1, view2) batches of `batch_size` per process,
    augmented with the recipe `aug` (an AugSpec) on `device`, this rank's shard of a seeded,
    per-epoch shuffle, the last partial batch dropped.

    Every backend yields the same shapes and dtype; they differ in where decoding happens.
    """
    from pipelines.loader import TwoViewLoader

    if backend == "ffcv":
        from pipelines.ffcv_data import ffcv_crops as make_crops
    elif backend == "dali":
        from pipelines.dali_data import dali_crops as make_crops
    elif backend == "torchvision":
        from pipelines.torchvision_data import torchvision_crops as make_crops
    else:
        raise ValueError(f"unknown data backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    crops = make_crops(path, aug=aug, batch_size=batch_size, device=device, rank=rank,
                       world_size=world_size, seed=seed, workers=workers)
    return TwoViewLoader(crops, aug, seed=seed, rank=rank)
