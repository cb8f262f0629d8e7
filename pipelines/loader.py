"""The one loader type every backend returns: crops from a decode backend, augmented on the device.

A backend (FFCV, DALI, torchvision) is a *crop source*: it decodes, random-resized-crops and flips
both views of each image and hands over uint8 NCHW batches on the target device. `TwoViewLoader`
adds the photometric half of the recipe with `pipelines.augment`, batched, on that device. Its
random parameters come from a generator seeded by (seed, rank, epoch, batch index) with
`pipelines.order.batch_seed`, so a batch's augmentation does not depend on what ran before it: a
resumed run replays it exactly.
"""

from __future__ import annotations

from typing import Iterator, Protocol

import torch
from torch import Tensor

from pipelines.augment import AugSpec, augment_pair, normalize, to_float
from pipelines.order import batch_seed


class CropSource(Protocol):
    dataset_size: int  # images in the whole dataset (all ranks)
    num_classes: int

    def __len__(self) -> int: ...  # batches per epoch, for this rank

    def set_epoch(self, epoch: int) -> None: ...

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor, Tensor]]: ...  # crops1, crops2, labels


class TwoViewLoader:
    """Iterates (view1, view2): normalized views in `dtype` (the training dtype: bf16 on CUDA; None:
    float32), in the crops' memory format, on the device. `compiled`: the photometric chain runs
    as one torch.compile(fullgraph=True) graph per shape (pipelines.augment.compiled_apply_view)."""

    def __init__(self, crops: CropSource, aug: AugSpec, seed: int = 0, rank: int = 0,
                 dtype: torch.dtype | None = None, compiled: bool = False):
        self.crops = crops
        self.aug = aug
        self.seed = seed
        self.rank = rank
        self.dtype = dtype or torch.float32
        self.compiled = compiled
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
        return augment_pair(crops1, crops2, self.aug, generator, self.dtype, self.compiled)

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
