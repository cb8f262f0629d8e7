"""The FFCV backend's reader: the two-view crop source over a .beton (its FFCV operations are in
`pipelines.ffcv_backend.ops`) and the evaluation center crops. `ffcv` is imported inside the
functions (the import alone takes seconds), each under `torch_threads_kept` (importing ffcv changes
torch's thread count: `pipelines.ffcv_backend.threads`).
"""

from __future__ import annotations

import contextlib
import queue
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np

from pipelines.convert import manifest
from pipelines.errors import DataError
from pipelines.ffcv_backend.beton import IMAGE_FIELD, LABEL_FIELD, check_header
from pipelines.ffcv_backend.memory import choose_os_cache
from pipelines.ffcv_backend.threads import torch_threads_kept

if TYPE_CHECKING:  # torch and pipelines.loader are imported where used
    import torch

    from pipelines.augment import AugSpec
    from pipelines.loader import NormalizedBatches


# ---- the two-view loader (its FFCV operations are in pipelines.ffcv_backend.ops) -------------

def open_dataset(path) -> tuple[manifest.Manifest, str]:
    """(manifest, .beton path) of an FFCV dataset folder, its header checked (DataError if bad)."""
    m = manifest.load(path, format="ffcv")
    beton = m.data_paths()[0]
    try:
        check_header(beton)
    except ValueError as err:
        raise DataError(str(err)) from None
    return m, str(beton)


def _largest_sample(beton: str) -> int:
    from ffcv.reader import Reader

    return int(Reader(beton).alloc_table["size"].max())


def loader_threads(workers: int) -> int:
    """ffcv's Loader passes its worker count to numba.set_num_threads, which refuses more than
    NUMBA_NUM_THREADS (the core count, by default)."""
    import numba

    return max(1, min(workers, numba.config.NUMBA_NUM_THREADS))


def _to_tensor(device: torch.device, *ops) -> list:
    """What ends a pipeline: a tensor, on a GPU moved there by FFCV's ToDevice (from pinned memory,
    on its own CUDA streams)."""
    from ffcv.transforms import ToDevice, ToTensor

    return [ToTensor(), *ops] + ([ToDevice(device, non_blocking=True)] if device.type == "cuda" else [])


def _owned(t: torch.Tensor) -> torch.Tensor:
    """A contiguous copy of an FFCV output, which FFCV overwrites a few batches later (on the CPU
    and on the GPU). On the CPU with numpy: a torch copy wakes torch's OpenMP threads, whose
    spinning afterwards takes the cores from FFCV's threads (measured: +40% CPU time per pair)."""
    import torch

    return t.clone(memory_format=torch.contiguous_format) if t.is_cuda else torch.from_numpy(np.array(t.numpy()))


def _nchw(images: torch.Tensor) -> torch.Tensor:
    return _owned(images).permute(0, 3, 1, 2)  # (N, H, W, C) -> NCHW, channels-last


class _Batches:
    """An ffcv Loader's epochs, keeping the caller's torch threads and stopping an epoch left
    unfinished. Batches are FFCV's own buffers: take copies."""

    def __init__(self, loader):
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        with torch_threads_kept():
            batches = iter(self.loader)
        try:
            yield from batches
        finally:  # stop FFCV's thread before another epoch starts one
            batches.close()
            while batches.is_alive():  # it may be waiting to hand over a batch (ffcv 1.0.2's queue)
                with contextlib.suppress(queue.Empty):
                    batches.output_queue.get(timeout=0.1)


class FFCVCrops:
    """Crop source over a .beton (see pipelines.loader.CropSource): one decode, two crops."""

    @torch_threads_kept()
    def __init__(self, path, aug: AugSpec, batch_size: int, device, rank: int, world_size: int,
                 seed: int, workers: int):
        from ffcv.fields.basics import IntDecoder
        from ffcv.loader import Loader
        from ffcv.pipeline import PipelineSpec
        from ffcv.transforms import Squeeze
        import torch

        from pipelines.ffcv_backend.ops import EpochOrder, JpegBytes, TwoCrops

        m, beton = open_dataset(path)
        self.dataset_size, self.num_classes = m.num_images, len(m.classes)
        self.beton, self.aug, self.epoch, self.skip = beton, aug, 0, 0
        device = torch.device(device)
        workers = loader_threads(workers)
        self.crops = TwoCrops(aug, seed, ThreadPoolExecutor(workers, thread_name_prefix="ffcv-crops"), workers)
        self.order = EpochOrder(rank, world_size, seed)
        self.loader = Loader(beton, batch_size=batch_size, num_workers=workers, os_cache=choose_os_cache(beton),
                             order=self.order, seed=seed, drop_last=True, pipelines={
            IMAGE_FIELD: PipelineSpec(IMAGE_FIELD, JpegBytes(_largest_sample(beton)),
                                      [self.crops, *_to_tensor(device)]),
            LABEL_FIELD: [IntDecoder(), *_to_tensor(device, Squeeze(1))]})

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def __iter__(self):
        self.crops.epoch, self.order.skip = self.epoch, self.skip  # skipped batches: not in the order
        size = self.aug.size_at(self.epoch)
        if size != self.crops.size:  # the crop's shape is part of FFCV's generated pipeline
            self.crops.size = size
            self.loader.generate_code()
        self.loader.next_epoch = self.epoch  # ffcv counts epochs itself; make it follow set_epoch
        for pairs, labels in _Batches(self.loader):  # pairs: (N, 2, H, W, C)
            if self.crops.undecodable:  # set before FFCV queued this batch
                raise DataError(f"{self.beton}: sample {self.crops.undecodable[0]}: the stored JPEG does not "
                                "decode (corrupt .beton?); `fastbt inspect` lists every bad sample")
            yield _nchw(pairs[:, 0]), _nchw(pairs[:, 1]), _owned(labels)


def ffcv_crops(path: str, *, aug: AugSpec, batch_size: int, device, rank: int = 0, world_size: int = 1,
               seed: int = 0, workers: int) -> FFCVCrops:
    return FFCVCrops(path, aug, batch_size, device, rank, world_size, seed, workers)


class _CenterCrops:
    def __init__(self, loader):
        self.batches = _Batches(loader)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        for images, labels in self.batches:
            yield _nchw(images), _owned(labels)


@torch_threads_kept()
def ffcv_center_crops(path: str, *, size: int, resize: int, mean, std, batch_size: int, device,
                      rank: int = 0, world_size: int = 1, workers: int) -> NormalizedBatches:
    """Evaluation batches (see pipelines.build_eval_loader). FFCV's center-crop decoder keeps the
    central square of side short side x size / resize, what Resize(resize) + CenterCrop(size)
    keep, and resizes it with OpenCV's INTER_AREA."""
    from ffcv.fields.basics import IntDecoder
    from ffcv.fields.decoders import CenterCropRGBImageDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.transforms import Squeeze
    import torch

    from pipelines.loader import NormalizedBatches
    from pipelines.order import rank_range

    m, beton = open_dataset(path)
    device = torch.device(device)
    share = rank_range(m.num_images, rank, world_size)
    loader = Loader(beton, batch_size=batch_size, num_workers=loader_threads(workers), order=OrderOption.SEQUENTIAL,
                    os_cache=choose_os_cache(beton),
                    indices=np.arange(share.start, share.stop), drop_last=False, pipelines={
        IMAGE_FIELD: [CenterCropRGBImageDecoder((size, size), size / resize), *_to_tensor(device)],
        LABEL_FIELD: [IntDecoder(), *_to_tensor(device, Squeeze(1))]})
    return NormalizedBatches(_CenterCrops(loader), mean, std)
