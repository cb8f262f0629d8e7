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


def build_eval_loader(backend: str, path: str, *, size: int, resize: int, mean, std, batch_size: int,
                      device, rank: int = 0, world_size: int = 1, workers: int = 2):
    """Iterates (images, labels) for evaluation: every image once, in dataset order (this rank's
    contiguous share when world_size > 1), resized so the short side is `resize`, center-cropped
    to `size`, normalized; float32 on `device`. The last batch may be smaller."""
    if backend == "ffcv":
        from pipelines.ffcv_data import ffcv_center_crops as make
    elif backend == "dali":
        from pipelines.dali_data import dali_center_crops as make
    elif backend == "torchvision":
        from pipelines.torchvision_data import center_crop_loader as make
    else:
        raise ValueError(f"unknown data backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    return make(path, size=size, resize=resize, mean=mean, std=std, batch_size=batch_size,
                device=device, rank=rank, world_size=world_size, workers=workers)
