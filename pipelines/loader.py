"""The one loader type every backend returns: crops from a decode backend, augmented on the device.

A backend (FFCV, DALI, torchvision) is a *crop source*: it decodes, random-resized-crops and flips
both views of each image and hands over uint8 NCHW batches on the target device. `TwoViewLoader`
adds the photometric half of the recipe with `pipelines.augment`, batched, on that device. Its
random parameters come from a generator seeded by (seed, rank, epoch, batch index), so a batch's
augmentation does not depend on what ran before it: a resumed run replays it exactly.
"""

from __future__ import annotations

from typing import Iterator, Protocol

import torch
from torch import Tensor

from pipelines.augment import AugSpec, augment_pair, normalize, to_float


class CropSource(Protocol):
    dataset_size: int  # images in the whole dataset (all ranks)
    num_classes: int

    def __len__(self) -> int: ...  # batches per epoch, for this rank

    def set_epoch(self, epoch: int) -> None: ...

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor, Tensor]]: ...  # crops1, crops2, labels


def batch_seed(seed: int, rank: int, epoch: int, index: int) -> int:
    """A 63-bit seed per (seed, rank, epoch, batch): distinct streams without shared state."""
    h = seed
    for v in (rank, epoch, index):
        h = (h * 0x9E3779B97F4A7C15 + v + 1) % (1 << 63)
    return h


def epoch_order(n: int, rank: int, world_size: int, seed: int, epoch: int) -> Tensor:
    """The sample indices rank `rank` reads in `epoch`, in order: a permutation of range(n) seeded
    by (seed, epoch), every world_size-th from position `rank`, all ranks the same count (the
    remainder is dropped, as DistributedSampler(drop_last=True) does)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))
    return order[rank::world_size][:n // world_size]


def rank_range(n: int, rank: int, world_size: int) -> range:
    """Rank `rank`'s contiguous share of n samples for evaluation, as DALI's readers shard: shares
    differ by at most one sample and together cover every sample once."""
    return range(rank * n // world_size, (rank + 1) * n // world_size)


class TwoViewLoader:
    """Iterates (view1, view2): float, normalized, channels-last, on the device."""

    def __init__(self, crops: CropSource, aug: AugSpec, seed: int = 0, rank: int = 0):
        self.crops = crops
        self.aug = aug
        self.seed = seed
        self.rank = rank
        self.epoch = 0

    @property
    def dataset_size(self) -> int:
        return self.crops.dataset_size

    def __len__(self) -> int:
        return len(self.crops)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.crops.set_epoch(epoch)

    def augment(self, crops1: Tensor, crops2: Tensor, index: int) -> tuple[Tensor, Tensor]:
        generator = torch.Generator().manual_seed(batch_seed(self.seed, self.rank, self.epoch, index))
        return augment_pair(crops1, crops2, self.aug, generator)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        for index, (crops1, crops2, _labels) in enumerate(self.crops):
            yield self.augment(crops1, crops2, index)


class NormalizedBatches:
    """Evaluation batches from a backend's uint8 NCHW crops: (float32 normalized images, labels),
    on the crops' device. Re-iterable, with the source's len()."""

    def __init__(self, batches, mean, std):
        self.batches, self.mean, self.std = batches, mean, std

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        for images, labels in self.batches:
            yield normalize(to_float(images), self.mean, self.std), labels
