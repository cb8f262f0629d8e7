"""Labeled datasets for evaluation: which format a path holds, its classes and size, its batches.

`pipelines.detect_format` says which backend reads a path: a folder with a manifest.json is a
converted dataset (FFCV or DALI, as the manifest says; a file inside such a folder, e.g. its .beton,
names it too); any other folder is read as an ImageNet-layout image folder (the torchvision
backend). A train and a val set must have the same classes: labels are indices into the sorted
class names, so a val set missing one class would shift them all.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pipelines
from pipelines.convert import manifest
from pipelines.augment import AugSpec, ViewSpec
from pipelines.errors import DataError
from pipelines.convert.source import scan


@dataclass(frozen=True)
class LabeledSet:
    path: str
    format: str  # the pipelines backend that reads it (pipelines.BACKENDS): "ffcv", "dali", ...
    classes: tuple[str, ...]  # index = label
    size: int  # images


def labeled_set(path: str | Path) -> LabeledSet:
    p = Path(path)
    backend = pipelines.detect_format(p)
    if pipelines.backend(backend).converted:
        m = manifest.load(p, format=backend)
        return LabeledSet(str(path), backend, tuple(m.class_names), m.num_images)
    source = scan(p)  # DataError for anything that is not an image folder
    if not source.samples:
        raise DataError(f"{p}: no images found under its class folders")
    return LabeledSet(str(path), backend, source.classes, len(source.samples))


def train_and_val(train: str | Path, val: str | Path) -> tuple[LabeledSet, LabeledSet]:
    """Both sets, checked to share their classes."""
    sets = labeled_set(train), labeled_set(val)
    ours, theirs = sets[1].classes, sets[0].classes
    if ours != theirs:
        diff = next((f"'{a}' where the train set has '{b}'" for a, b in zip(ours, theirs) if a != b),
                    "one list is longer")
        raise DataError(f"{val}: its classes differ from those of the train set {train} ({len(ours)} "
                        f"classes vs {len(theirs)}; first difference: {diff})")
    return sets


def center_crops(data: LabeledSet, *, size: int, resize: int, aug: AugSpec, batch_size: int, device,
                 rank: int = 0, world_size: int = 1, workers: int):
    """(images, labels) batches on `device`: every image once, in order (this rank's share)."""
    return pipelines.build_eval_loader(data.format, data.path, size=size, resize=resize, mean=aug.mean,
                                       std=aug.std, batch_size=batch_size, device=device, rank=rank,
                                       world_size=world_size, workers=workers)


def random_crops(data: LabeledSet, *, view: ViewSpec, size: int, interpolation: str, batch_size: int,
                 device, seed: int, workers: int, rank: int = 0, world_size: int = 1, subset=None):
    """A crop source (pipelines.loader.CropSource) of uint8 random-resized-crop + flip batches,
    seeded per epoch (call set_epoch), this rank's share, the last partial batch dropped. Of each
    pair it yields, use the first crop: the sources decode once and crop twice, for pretraining.
    `subset`: indices into the set's samples (an image folder only) to read instead of all."""
    aug = AugSpec(view1=view, view2=view, size=size, interpolation=interpolation)
    return pipelines.build_crops(data.format, data.path, aug=aug, batch_size=batch_size, device=device,
                                 seed=seed, workers=workers, rank=rank, world_size=world_size, subset=subset)
