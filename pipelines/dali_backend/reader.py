"""The DALI backend's reader: the two-view crop source over the converter's webdataset shards and
their indexes (`pipelines.dali_backend.index`), fed to DALI through an external source (its DALI
graphs are in `pipelines.dali_backend.ops`), and the evaluation center crops.
"""

from __future__ import annotations

import io
import mmap

import numpy as np
from PIL import Image

from pipelines.convert import manifest
from pipelines.convert.shards import IMAGE_EXT, LABEL_EXT
from pipelines.crop_params import crops_and_flips
from pipelines.dali_backend.index import read_offsets


# ---- the two-view loader (its DALI graphs are in pipelines.dali_backend.ops) -----------------

def _dataset(path) -> manifest.Manifest:
    return manifest.load(path, format="dali")


class ShardReader:
    """Random access to a DALI dataset's samples by dataset index (shard order, then order within
    a shard), through the shards' indexes: JPEG bytes as views of the memory-mapped shards (DALI's
    own reader maps them too; the external source copies them), labels, and each image's size,
    read from its JPEG header the first time it is needed."""

    def __init__(self, m: manifest.Manifest):
        self.paths = [str(p) for p in m.data_paths()]
        self.maps: dict[int, mmap.mmap] = {}  # shard -> its mapping, opened when first read
        where = [read_offsets(idx, (IMAGE_EXT, LABEL_EXT)) for idx in m.index_paths()]
        self.shard = np.repeat(np.arange(len(where), dtype=np.int64), [len(w) for w in where])
        self.where = np.concatenate(where or [np.zeros((0, 4), np.int64)])  # jpeg offset, size, label offset, size
        self.heights, self.widths = np.zeros(len(self.shard), np.int64), np.zeros(len(self.shard), np.int64)

    def __len__(self) -> int:
        return len(self.shard)

    def _map(self, shard: int) -> mmap.mmap:
        if shard not in self.maps:
            with open(self.paths[shard], "rb") as f:
                self.maps[shard] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        return self.maps[shard]

    def read(self, indices: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
        """The samples' JPEGs (uint8 arrays) and labels (int64), in the order of `indices`."""
        jpegs, labels = [], np.empty(len(indices), np.int64)
        for k, (shard, (offset, size, label_offset, label_size)) in enumerate(
                zip(self.shard[indices].tolist(), self.where[indices].tolist())):
            data = self._map(shard)
            jpegs.append(np.frombuffer(data, np.uint8, size, offset))
            labels[k] = int(data[label_offset:label_offset + label_size])
        for k in np.flatnonzero(self.heights[indices] == 0).tolist():
            self.widths[indices[k]], self.heights[indices[k]] = Image.open(io.BytesIO(jpegs[k])).size
        return jpegs, labels


class EpochFeed:
    """What the DALI pipeline's external source calls for each batch (`__call__(BatchInfo)`): this
    epoch's samples `order` in batches, each as (JPEGs, labels, the epoch's crop size per sample
    (pipelines.resolution), then per view the crop's region of interest start and end, (y, x) in pixels, x swapped when the view is flipped). Crops and flips
    are `crop_params.crops_and_flips` of (seed, epoch, view, dataset index), as the FFCV loader
    draws them. Raises StopIteration after the last full batch, or when `stop` is set."""

    def __init__(self, reader: ShardReader, views, batch_size: int, seed: int):
        self.reader, self.views, self.batch_size, self.seed = reader, views, batch_size, seed
        self.order, self.epoch, self.stop = np.zeros(0, np.int64), 0, False
        self.size = np.zeros((batch_size, 2), np.float32)

    def start(self, order: np.ndarray, epoch: int, size: int) -> None:
        self.order, self.epoch, self.stop = np.asarray(order, np.int64), epoch, False
        self.size = np.full((self.batch_size, 2), size, np.float32)  # the epoch's crop size (h, w)

    def __call__(self, info):
        start = info.iteration * self.batch_size
        if self.stop or start + self.batch_size > len(self.order):
            raise StopIteration
        indices = self.order[start:start + self.batch_size]
        jpegs, labels = self.reader.read(indices)
        h, w = self.reader.heights[indices], self.reader.widths[indices]
        rois = []
        for v, view in enumerate(self.views):
            top, left, crop_h, crop_w, flip = crops_and_flips(self.seed, self.epoch, v, view, indices, h, w).T
            x0, x1 = np.where(flip, left + crop_w, left), np.where(flip, left, left + crop_w)
            rois += [np.stack([top, x0], 1).astype(np.float32), np.stack([top + crop_h, x1], 1).astype(np.float32)]
        return jpegs, labels, list(self.size), *rois


class DALICrops:
    """Crop source over webdataset shards (see pipelines.loader.CropSource).

    One DALI pipeline per loader, built on the first epoch and reused: its external source
    (`EpochFeed`) hands it each epoch's samples in the seeded global order of
    `pipelines.loader.epoch_order` (the order the FFCV loader reads its .beton in), with crop boxes
    and flips that are a pure function of (seed, epoch, view, sample), so set_epoch(e) replays
    epoch e exactly. Every rank yields (num_images // world_size) // batch_size batches.
    """

    def __init__(self, path, aug, batch_size: int, device, rank: int, world_size: int, seed: int,
                 workers: int):
        import torch

        self.manifest = _dataset(path)
        self.dataset_size, self.num_classes = self.manifest.num_images, len(self.manifest.classes)
        self.aug, self.batch_size, self.device = aug, batch_size, torch.device(device)
        self.rank, self.world_size, self.seed, self.workers = rank, world_size, seed, workers
        self.epoch, self.skip = 0, 0
        self.batches = None  # the pipeline, built when first iterated

    def __len__(self) -> int:
        return (self.dataset_size // self.world_size) // self.batch_size

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def __iter__(self):
        from pipelines.dali_backend import ops as dali_ops
        from pipelines.order import epoch_order

        if self.batches is None:
            feed = EpochFeed(ShardReader(self.manifest), (self.aug.view1, self.aug.view2), self.batch_size,
                             self.seed)
            self.batches = dali_ops.TwoViewBatches(feed, self.aug, self.batch_size, self.device, self.seed,
                                                   self.workers)
        order = epoch_order(self.dataset_size, self.rank, self.world_size, self.seed, self.epoch).numpy()
        # skipped batches are not fed: the external source starts at the first batch wanted
        return self.batches.epoch(order[self.skip * self.batch_size:len(self) * self.batch_size], self.epoch,
                                  self.aug.size_at(self.epoch))


def dali_crops(path: str, *, aug, batch_size: int, device, rank: int = 0, world_size: int = 1,
               seed: int = 0, workers: int) -> DALICrops:
    return DALICrops(path, aug, batch_size, device, rank, world_size, seed, workers)


class _CenterCrops:
    """uint8 center crops and labels of this rank's share, in dataset order; the last batch partial."""

    def __init__(self, path, size: int, resize: int, batch_size: int, device, rank: int, world_size: int,
                 workers: int):
        import torch

        from pipelines.order import rank_range

        self.manifest = _dataset(path)
        self.args = dict(size=size, resize=resize, batch_size=batch_size, device=torch.device(device),
                         rank=rank, world_size=world_size, workers=workers)
        self.count = len(rank_range(self.manifest.num_images, rank, world_size))  # = DALI's sharding

    def __len__(self) -> int:
        return -(-self.count // self.args["batch_size"])

    def __iter__(self):
        from pipelines.dali_backend import ops as dali_ops

        return dali_ops.center_crop_batches(self.manifest, **self.args)


def dali_center_crops(path: str, *, size: int, resize: int, mean, std, batch_size: int, device,
                      rank: int = 0, world_size: int = 1, workers: int):
    """Evaluation batches (see pipelines.build_eval_loader)."""
    from pipelines.loader import NormalizedBatches

    return NormalizedBatches(_CenterCrops(path, size, resize, batch_size, device, rank, world_size, workers),
                             mean, std)
