"""DALI graphs for the loaders in `pipelines.dali_backend.reader` (this module imports DALI and torch: import it only to
build a loader).

Two views: the JPEG is decoded once (nvJPEG with device="mixed" on a GPU, libjpeg-turbo on the
CPU) and resized twice, each time from its own region of interest (the random-resized-crop box,
mirrored when the view is flipped). Samples and boxes come from a Python external source
(`reader.EpochFeed`), so the pipeline is built once per loader and every epoch's order and
crops are a pure function of (seed, epoch): no DALI random op, whose state would carry over from
one epoch to the next. Outputs reach torch through DALIGenericIterator: on a GPU, device memory
handed over without a host copy.
"""

from __future__ import annotations

import torch
from nvidia.dali import fn, pipeline_def, types
from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

from pipelines.convert.shards import IMAGE_EXT, LABEL_EXT

DALI_INTERPOLATION = {"bicubic": types.INTERP_CUBIC, "bilinear": types.INTERP_LINEAR}
# nvJPEG's buffers, sized up front as NVIDIA's DALI ImageNet training example does (its
# `create_dali_pipeline`), so the mixed decoder does not reallocate during the first epochs.
MIXED_DECODER_PADDING = dict(device_memory_padding=211025920, host_memory_padding=140544512)


def _decode(jpegs, decoder: str):
    padding = MIXED_DECODER_PADDING if decoder == "mixed" else {}
    return fn.decoders.image(jpegs, device=decoder, output_type=types.RGB, **padding)


@pipeline_def
def _two_views(feed, aug, decoder):
    jpegs, labels, size, *rois = fn.external_source(source=feed, num_outputs=7, batch=True, batch_info=True)
    images = _decode(jpegs, decoder)
    # the size is an input, not a constant: the resolution schedule changes it between epochs
    views = [fn.resize(images, size=size, roi_start=start, roi_end=end, antialias=True,
                       interp_type=DALI_INTERPOLATION[aug.interpolation])
             for start, end in (rois[:2], rois[2:])]
    return *views, labels


@pipeline_def
def _center_crops(m, rank, world_size, size, resize, decoder):
    jpegs, labels = fn.readers.webdataset(
        paths=[str(p) for p in m.data_paths()], index_paths=[str(p) for p in m.index_paths()],
        ext=[IMAGE_EXT, LABEL_EXT], missing_component_behavior="error", shard_id=rank,
        num_shards=world_size, random_shuffle=False, name="reader")
    images = fn.resize(_decode(jpegs, decoder), resize_shorter=resize, interp_type=types.INTERP_LINEAR,
                       antialias=True)
    return fn.crop(images, crop=(size, size)), fn.pad(labels, fill_value=0)  # labels: padded ASCII


def _device_args(device: torch.device, workers: int) -> dict:
    """The decoder backend and pipeline placement: nvJPEG ("mixed") on a GPU, else CPU only."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return dict(decoder="mixed", device_id=index, num_threads=workers)
    return dict(decoder="cpu", device_id=None, num_threads=workers)


def _ascii_labels(digits: torch.Tensor, device: torch.device) -> torch.Tensor:
    """(N, L) uint8 ASCII digits, zero-padded at the end -> (N,) int64 on `device`."""
    value = torch.zeros(len(digits), dtype=torch.int64)
    for column in digits.to(torch.int64).unbind(1):
        value = torch.where(column > 0, value * 10 + column - ord("0"), value)
    return value.to(device, non_blocking=True)


def _nchw(images: torch.Tensor) -> torch.Tensor:
    return images.permute(0, 3, 1, 2)  # HWC batches -> a channels-last NCHW view, no copy


class TwoViewBatches:
    """One two-view pipeline over `feed` (a reader.EpochFeed), built once; `epoch(order, e)`
    runs it over the samples `order` and yields (crops1, crops2, labels) batches."""

    def __init__(self, feed, aug, batch_size: int, device: torch.device, seed: int, workers: int):
        self.feed, self.device = feed, device
        pipe = _two_views(feed, aug, batch_size=batch_size, seed=seed % (1 << 31), **_device_args(device, workers))
        # prepare_first_batch=False: nothing is read before the first epoch's order is set
        self.iterator = DALIGenericIterator(pipe, ["view1", "view2", "labels"], prepare_first_batch=False)
        self.run = 0  # epochs started; DALI's iterator needs a reset between two
        self.open = False  # an epoch started and not run to its end

    def epoch(self, order, epoch: int, size: int):
        self._finish()
        self.feed.start(order, epoch, size)
        if self.run:
            self.iterator.reset()  # after start(): the reset already prefetches the new epoch's batches
        self.run += 1
        self.open = True
        return self._batches(self.run)

    def _batches(self, run: int):
        try:
            for [batch] in self.iterator:
                labels = batch["labels"].to(self.device, non_blocking=True)
                yield _nchw(batch["view1"]), _nchw(batch["view2"]), labels
            self.open = False
        finally:
            if run == self.run:  # left early (break, islice): drop what DALI has prefetched
                self._finish()

    def _finish(self) -> None:
        """End the open epoch: the feed stops, the few batches already scheduled are drained."""
        if self.open:
            self.feed.stop = True
            for _ in self.iterator:
                pass
            self.open = False


def center_crop_batches(m, *, size: int, resize: int, batch_size: int, device: torch.device, rank: int,
                        world_size: int, workers: int):
    """(uint8 images, labels) of this rank's share in dataset order; the last batch may be smaller."""
    pipe = _center_crops(m, rank, world_size, size, resize, batch_size=batch_size, seed=0,
                         **_device_args(device, workers))
    for [batch] in DALIGenericIterator(pipe, ["images", "labels"], reader_name="reader",
                                       last_batch_policy=LastBatchPolicy.PARTIAL):
        yield _nchw(batch["images"]), _ascii_labels(batch["labels"], device)
