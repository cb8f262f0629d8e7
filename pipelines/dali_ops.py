"""DALI graphs for the loaders in `dali_data` (this module imports DALI and torch: import it only to
build a loader).

Two views: the JPEG is decoded once (nvJPEG with device="mixed" on a GPU, libjpeg-turbo on the
CPU) and random-resized-cropped twice, each crop flipped with its own coin. DALI's random ops draw
from per-sample generators seeded by the pipeline's seed, so a pipeline built with the same seed
gives the same crops, whatever the thread count. Outputs reach torch through
DALIGenericIterator: on a GPU, device memory handed over without a host copy.
"""

from __future__ import annotations

import torch
from nvidia.dali import fn, pipeline_def, types
from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

from pipelines.dali_data import IMAGE_EXT, LABEL_EXT

SHUFFLE_BUFFER = 4096  # samples the reader shuffles among (encoded: ~40 kB each at the default R)
DALI_INTERPOLATION = {"bicubic": types.INTERP_CUBIC, "bilinear": types.INTERP_LINEAR}


def _read(m, files: list[int], rank: int, world_size: int, shuffle: bool):
    """The webdataset reader over the shards `files` (indices into m.files, in reading order); this
    rank reads its contiguous part of their samples. Returns (jpegs, labels as padded ASCII)."""
    tars, idxs = m.data_paths(), m.index_paths()
    jpegs, labels = fn.readers.webdataset(
        paths=[str(tars[i]) for i in files], index_paths=[str(idxs[i]) for i in files],
        ext=[IMAGE_EXT, LABEL_EXT], missing_component_behavior="error", shard_id=rank,
        num_shards=world_size, random_shuffle=shuffle, initial_fill=SHUFFLE_BUFFER, name="reader")
    return jpegs, fn.pad(labels, fill_value=0)  # zero-padded to the batch's longest: one tensor


@pipeline_def
def _two_views(m, files, rank, world_size, aug, decoder):
    jpegs, labels = _read(m, files, rank, world_size, shuffle=True)
    images = fn.decoders.image(jpegs, device=decoder, output_type=types.RGB)
    views = []
    for view in (aug.view1, aug.view2):
        crop = fn.random_resized_crop(images, size=(aug.size, aug.size), random_area=view.crop_scale,
                                      random_aspect_ratio=view.crop_ratio, antialias=True,
                                      interp_type=DALI_INTERPOLATION[aug.interpolation])
        views.append(fn.flip(crop, horizontal=fn.random.coin_flip(probability=view.flip_p)))
    return *views, labels


@pipeline_def
def _center_crops(m, rank, world_size, size, resize, decoder):
    jpegs, labels = _read(m, list(range(len(m.files))), rank, world_size, shuffle=False)
    images = fn.decoders.image(jpegs, device=decoder, output_type=types.RGB)
    images = fn.resize(images, resize_shorter=resize, interp_type=types.INTERP_LINEAR, antialias=True)
    return fn.crop(images, crop=(size, size)), labels


def _device_args(device: torch.device, workers: int) -> dict:
    """The decoder backend and pipeline placement: nvJPEG ("mixed") on a GPU, else CPU only."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return dict(decoder="mixed", device_id=index, num_threads=workers)
    return dict(decoder="cpu", device_id=None, num_threads=workers)


def _labels(digits: torch.Tensor, device: torch.device) -> torch.Tensor:
    """(N, L) uint8 ASCII digits, zero-padded at the end -> (N,) int64 on `device`."""
    value = torch.zeros(len(digits), dtype=torch.int64)
    for column in digits.to(torch.int64).unbind(1):
        value = torch.where(column > 0, value * 10 + column - ord("0"), value)
    return value.to(device, non_blocking=True)


def _nchw(images: torch.Tensor) -> torch.Tensor:
    return images.permute(0, 3, 1, 2)  # HWC batches -> a channels-last NCHW view, no copy


def two_view_batches(m, files, aug, batch_size: int, device: torch.device, rank: int, world_size: int,
                     seed: int, workers: int):
    """(crops1, crops2, labels) batches of a fresh pipeline seeded by `seed`; full batches only."""
    pipe = _two_views(m, files, rank, world_size, aug, batch_size=batch_size, seed=seed % (1 << 31),
                      **_device_args(device, workers))
    for [batch] in DALIGenericIterator(pipe, ["view1", "view2", "labels"], reader_name="reader",
                                       last_batch_policy=LastBatchPolicy.DROP):
        yield _nchw(batch["view1"]), _nchw(batch["view2"]), _labels(batch["labels"], device)


def center_crop_batches(m, *, size: int, resize: int, batch_size: int, device: torch.device, rank: int,
                        world_size: int, workers: int):
    """(uint8 images, labels) of this rank's share in dataset order; the last batch may be smaller."""
    pipe = _center_crops(m, rank, world_size, size, resize, batch_size=batch_size, seed=0,
                         **_device_args(device, workers))
    for [batch] in DALIGenericIterator(pipe, ["images", "labels"], reader_name="reader",
                                       last_batch_policy=LastBatchPolicy.PARTIAL):
        yield _nchw(batch["images"]), _labels(batch["labels"], device)
