"""The reference backend's reader: an image folder read with PIL in DataLoader workers.

`torchvision_crops`: a crop source like the FFCV and DALI ones (random-resized-crop + flip of both
views in PIL, uint8 to the device), so all three backends share the batched augmentation; and
`center_crop_loader`, the evaluation crops. (The official per-image transform: `official`.)
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from pipelines.augment import AugSpec, ViewSpec
from pipelines.errors import DataError
from pipelines.order import batch_seed, epoch_order, rank_range
from pipelines.convert.source import UnreadableImage, printable, read_rgb, scan

_INTERPOLATION = {"bicubic": v2.InterpolationMode.BICUBIC, "bilinear": v2.InterpolationMode.BILINEAR}


def crop_and_flip(view: ViewSpec, size: int, interpolation: str = "bicubic") -> v2.Compose:
    """The geometric half of a view, as torchvision does it: random-resized-crop, then flip."""
    return v2.Compose([
        v2.RandomResizedCrop(size, scale=view.crop_scale, ratio=view.crop_ratio,
                             interpolation=_INTERPOLATION[interpolation], antialias=True),
        v2.RandomHorizontalFlip(view.flip_p),
    ])


class _Unreadable(str):
    """What a dataset item is when its image does not decode: the one-line error, as data. An
    exception raised in a DataLoader worker would reach the user as the worker's traceback;
    this travels through the batch instead (`_collate`) and is raised by `_batches` in the main
    process, naming the file."""


def _read(root: Path, sample):
    try:
        return read_rgb(root / sample.path)
    except UnreadableImage as err:
        return _Unreadable(f"{printable(root / sample.path)}: {err}")


def _collate(items: list):
    """default_collate, unless an item is _Unreadable: then that is the batch."""
    failed = [x for x in items if isinstance(x, _Unreadable)]
    return failed[0] if failed else default_collate(items)


def _batches(loader: DataLoader):
    for batch in loader:
        if isinstance(batch, _Unreadable):  # found mid-run: stop with the file's name
            raise DataError(batch)
        yield batch


class _TwoCrops(Dataset):
    """Image i -> (crop1, crop2, label); crops are uint8 CHW, seeded by (seed, epoch, i)."""

    def __init__(self, root: Path, samples, aug: AugSpec, seed: int):
        self.root = root
        self.samples = samples
        self.aug = aug
        self.seed = seed
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Crops of `epoch`: its seeds, and its size (the resolution schedule)."""
        self.epoch = epoch
        size = self.aug.size_at(epoch)
        self.views = [crop_and_flip(v, size, self.aug.interpolation) for v in (self.aug.view1, self.aug.view2)]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        sample = self.samples[i]
        image = _read(self.root, sample)
        if isinstance(image, _Unreadable):
            return image
        torch.manual_seed(batch_seed(self.seed, 0, self.epoch, i))  # crops independent of worker
        crops = [TF.pil_to_tensor(view(image)) for view in self.views]
        return crops[0], crops[1], sample.label


class ShardedShuffle(Sampler):
    """This rank's share of a seeded per-epoch permutation (`pipelines.order.epoch_order`), from
    sample `skip` of it on (a resumed run: the samples before are neither read nor decoded)."""

    def __init__(self, n: int, rank: int, world_size: int, seed: int):
        self.n, self.rank, self.world_size, self.seed = n, rank, world_size, seed
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def __len__(self) -> int:
        return max(0, self.n // self.world_size - self.skip)

    def __iter__(self):
        order = epoch_order(self.n, self.rank, self.world_size, self.seed, self.epoch)
        return iter(order[self.skip:].tolist())


class TorchvisionCrops:
    """Crop source over an ImageNet-layout folder (see pipelines.loader.CropSource)."""

    def __init__(self, path: str, aug: AugSpec, batch_size: int, device, rank: int, world_size: int,
                 seed: int, workers: int, subset=None):
        source = scan(path)
        if not source.samples:
            raise DataError(f"{path}: no images found under its class folders")
        samples = source.samples if subset is None else [source.samples[i] for i in subset]
        self.dataset_size = len(samples)
        self.num_classes = len(source.classes)
        self.batch_size, self.per_rank = batch_size, self.dataset_size // world_size
        self.device = torch.device(device)
        self.dataset = _TwoCrops(Path(path), samples, aug, seed)
        self.sampler = ShardedShuffle(self.dataset_size, rank, world_size, seed)
        self.loader = DataLoader(self.dataset, batch_size=batch_size, sampler=self.sampler,
                                 num_workers=workers, drop_last=True, collate_fn=_collate,
                                 pin_memory=self.device.type == "cuda")

    def __len__(self) -> int:
        return self.per_rank // self.batch_size  # a whole epoch, whatever set_epoch skips

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.sampler.set_epoch(epoch, skip * self.batch_size)
        self.dataset.set_epoch(epoch)  # workers start per epoch and take a copy of the dataset

    def __iter__(self):
        for crops1, crops2, labels in _batches(self.loader):
            yield (_to_device(crops1, self.device), _to_device(crops2, self.device),
                   labels.to(self.device, non_blocking=True))


def _to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    return x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)


def torchvision_crops(path: str, *, aug: AugSpec, batch_size: int, device, rank: int = 0,
                      world_size: int = 1, seed: int = 0, workers: int, subset=None) -> TorchvisionCrops:
    """`subset`: indices into scan(path).samples to read (a label subset), instead of all."""
    return TorchvisionCrops(path, aug, batch_size, device, rank, world_size, seed, workers, subset)


# ---- evaluation: one center crop per image ---------------------------------------------------

class _CenterCrops(Dataset):
    def __init__(self, root: Path, samples, transform):
        self.root, self.samples, self.transform = root, samples, transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        sample = self.samples[i]
        image = _read(self.root, sample)
        return image if isinstance(image, _Unreadable) else (self.transform(image), sample.label)


def center_crop_loader(path: str, *, size: int, resize: int, mean, std, batch_size: int, device="cpu",
                       rank: int = 0, world_size: int = 1, workers: int):
    """(images, labels) batches on `device` in dataset order (rank r: its contiguous share):
    resize the short side to `resize`, center-crop `size`, normalize (e.g. 256 / 224)."""
    samples = scan(path).samples
    samples = [samples[i] for i in rank_range(len(samples), rank, world_size)]
    transform = v2.Compose([v2.PILToTensor(), v2.Resize(resize, antialias=True), v2.CenterCrop(size),
                            v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])
    device = torch.device(device)
    loader = DataLoader(_CenterCrops(Path(path), samples, transform), batch_size=batch_size,
                        num_workers=workers, collate_fn=_collate, pin_memory=device.type == "cuda")
    return _OnDevice(loader, device)


class _OnDevice:
    """A re-iterable view of a DataLoader whose batches are moved to `device`."""

    def __init__(self, loader: DataLoader, device: torch.device):
        self.loader, self.device = loader, device

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for images, labels in _batches(self.loader):
            yield images.to(self.device, non_blocking=True), labels.to(self.device)
