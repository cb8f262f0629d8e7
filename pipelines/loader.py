"""The one loader type every backend returns: crops from a decode backend, augmented on the device.

A backend (FFCV, DALI, torchvision) is a *crop source*: it decodes, random-resized-crops and flips
both views of each image and hands over uint8 NCHW batches on the target device. `TwoViewLoader`
adds the photometric half of the recipe through an `Augment` (pipelines.augment.view), batched, on
that device. Its random parameters come from a generator seeded by (seed, rank, epoch, batch index)
with `pipelines.order.batch_seed`, so a batch's augmentation does not depend on what ran before it:
a resumed run replays it exactly.

    loader.set_epoch(epoch, skip=k)   # batches k.. of `epoch` (a resumed run: k batches were done)
    for view1, view2 in loader: ...   # augmented, batch index k, k + 1, ... for the seeds
"""

from __future__ import annotations

from typing import Iterator, Protocol

from torch import Tensor

from pipelines.augment import Augment, normalize, to_float

__all__ = ["CropSource", "TwoViewLoader", "Augment", "NormalizedBatches"]  # Augment: pipelines.augment.view


class CropSource(Protocol):
    dataset_size: int  # images in the whole dataset (all ranks)
    num_classes: int

    def __len__(self) -> int: ...  # batches per (whole) epoch, for this rank

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """The next iteration yields batches skip, skip + 1, ... of `epoch`: exactly those of a
        whole epoch, without decoding the first `skip` where the format allows."""

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor, Tensor]]: ...  # crops1, crops2, labels


class TwoViewLoader:
    """Iterates (view1, view2) for the rest of the epoch chosen by `set_epoch(epoch, skip)`: the
    crop source's batches `skip`.. through `augment`, the batch index continuing from `skip`.
    `len()`: batches per whole epoch. `crop_batches()`: the same batches before augmentation, as
    (index, crops1, crops2), for code that times or augments them itself."""

    def __init__(self, crops: CropSource, augment: Augment):
        self.crops = crops
        self.augment = augment
        self.epoch, self.skip = 0, 0

    @property
    def dataset_size(self) -> int:
        return self.crops.dataset_size

    @property
    def num_classes(self) -> int:
        return self.crops.num_classes

    def __len__(self) -> int:
        return len(self.crops)

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        if not 0 <= skip <= len(self):
            raise ValueError(f"skip {skip}: expected 0 to {len(self)} (batches per epoch)")
        self.epoch, self.skip = epoch, skip
        self.crops.set_epoch(epoch, skip)

    def crop_batches(self) -> Iterator[tuple[int, Tensor, Tensor]]:
        for index, (crops1, crops2, _labels) in enumerate(self.crops, start=self.skip):
            yield index, crops1, crops2

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        for index, crops1, crops2 in self.crop_batches():
            yield self.augment(crops1, crops2, self.epoch, index)


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
