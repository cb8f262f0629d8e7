"""FFCV pipeline pieces for the two-view loader in `reader` (this module imports ffcv, which
takes seconds: import it only to build a loader).

Decode once, crop twice: the field's decoder `JpegBytes` only copies each sample's JPEG out of the
.beton; `TwoCrops` decodes it (FFCV's libjpeg-turbo binding), then random-resized-crops and flips
it for both views (OpenCV), on a pool of threads, outside the GIL. The crops' randomness is a pure
function of (seed, epoch, view, sample index), drawn in numpy (`pipelines.crop_params`); not
numba's per-thread generators, which FFCV's own crop decoders use: ffcv 1.0.2 never seeds them,
and which thread draws for which sample varies. So epoch e's crops are the same in every run,
whatever the rank count, batch size or thread count, and a resumed run replays them.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import cv2
import numpy as np
from ffcv.libffcv import imdecode
from ffcv.pipeline.allocation_query import AllocationQuery
from ffcv.pipeline.operation import Operation
from ffcv.traversal_order.base import TraversalOrder

from pipelines.augment import AugSpec
from pipelines.crop_params import crops_and_flips
from pipelines.order import epoch_order

# ---- the ops ---------------------------------------------------------------------------------

class JpegBytes(Operation):
    """Decoder, in FFCV's sense: each sample's stored JPEG copied out of the .beton, after its
    length in 8 bytes (little-endian). `max_bytes`: the largest sample of the dataset."""

    def __init__(self, max_bytes: int):
        super().__init__()
        self.shape = (8 + max_bytes,)

    def declare_state_and_memory(self, previous_state):
        return (replace(previous_state, jit_mode=True, shape=self.shape, dtype=np.dtype("u1")),
                AllocationQuery(self.shape, np.dtype("u1")))

    def generate_code(self):
        mem_read = self.memory_read

        def copy(batch_indices, destination, metadata, storage_state):
            for i in range(len(batch_indices)):
                data = mem_read(metadata[batch_indices[i]]["data_ptr"], storage_state)
                for b in range(8):
                    destination[i, b] = (data.shape[0] >> (8 * b)) & 255
                destination[i, 8:8 + data.shape[0]] = data
            return destination[:len(batch_indices)]

        return copy


# OpenCV's resize, as the recipe's interpolation (FFCV's own crop decoders use INTER_AREA only).
CV2_INTERPOLATION = {"bicubic": cv2.INTER_CUBIC, "bilinear": cv2.INTER_LINEAR}


class TwoCrops(Operation):
    """Decode each image once, then random-resized-crop (to size x size) and flip it twice, one
    crop per view of `aug`: (N, 2, size, size, 3) uint8.

    Runs as plain Python per batch (FFCV puts it in a non-JIT stage): it draws the batch's crop
    boxes and flips from (seed, `epoch`, view, sample index), then each of `threads` threads of
    `pool` decodes (FFCV's libjpeg-turbo binding) and crops (OpenCV) its share of the samples,
    all outside the GIL; an image is cropped while it is still in the core's cache. Set `epoch`
    before each epoch.

    A JPEG that does not decode (a corrupt .beton) leaves its crops black and its dataset index in
    `undecodable`, which the loader checks before handing the batch on: never crops of an
    uninitialized buffer. (Raising here would kill FFCV's loader thread and leave its consumer
    waiting forever.)
    """

    def __init__(self, aug: AugSpec, seed: int, pool: ThreadPoolExecutor, threads: int):
        super().__init__()
        self.views, self.size, self.seed = (aug.view1, aug.view2), aug.size, seed
        self.interpolation = CV2_INTERPOLATION[aug.interpolation]
        self.pool, self.threads = pool, threads
        self.epoch = 0
        self.undecodable: list[int] = []  # dataset indices whose JPEG failed to decode

    def declare_state_and_memory(self, previous_state):
        shape = (2, self.size, self.size, 3)
        return (replace(previous_state, jit_mode=False, shape=shape, dtype=np.dtype("u1")),
                AllocationQuery(shape, np.dtype("u1")))

    def generate_code(self):
        heights, widths = self.metadata["height"], self.metadata["width"]
        largest = int(heights.max()) * int(widths.max()) * 3
        size, interpolation = (self.size, self.size), self.interpolation

        def crops(jpegs, destination, batch_indices):
            h, w = heights[batch_indices].astype(np.int64), widths[batch_indices].astype(np.int64)
            shapes = np.stack([h, w], 1).tolist()  # Python ints, for ctypes
            views = [crops_and_flips(self.seed, self.epoch, index, view, batch_indices, h, w).tolist()
                     for index, view in enumerate(self.views)]  # per view, per sample: top, left, h, w, flip
            out = destination[:len(batch_indices)]

            def some(samples):
                pixels = np.empty(largest, np.uint8)
                for i in samples:
                    height, width = shapes[i]
                    image = pixels[:height * width * 3].reshape(height, width, 3)
                    length = int.from_bytes(jpegs[i, :8].tobytes(), "little")
                    if imdecode(jpegs[i, 8:8 + length], image, height, width, height, width,
                                0, 0, 1, 1, False, False) != 0:  # libjpeg-turbo: -1 on an error
                        self.undecodable.append(int(batch_indices[i]))
                        out[i] = 0
                        continue
                    for v, (top, left, crop_h, crop_w, flip) in enumerate(view[i] for view in views):
                        cv2.resize(image[top:top + crop_h, left:left + crop_w], size, dst=out[i, v],
                                   interpolation=interpolation)
                        if flip:
                            cv2.flip(out[i, v], 1, dst=out[i, v])

            for _ in self.pool.map(some, [range(k, len(out), self.threads) for k in range(self.threads)]):
                pass
            return out

        crops.with_indices = True  # FFCV then passes batch_indices
        return crops


class EpochOrder(TraversalOrder):
    """FFCV traversal order = `pipelines.order.epoch_order`: the same samples in the same order as
    the torchvision backend, for any rank count. Works without torch.distributed (FFCV's own
    `distributed=True` needs an initialized process group and pads ranks to equal size).

    `skip`: batches of the epoch to leave out at its start (a resumed run): the order starts after
    them, so FFCV never reads nor decodes them; the batches after are those of the whole epoch."""

    def __init__(self, rank: int, world_size: int, seed: int):
        self.rank, self.world_size, self.order_seed = rank, world_size, seed
        self.skip = 0

    def __call__(self, loader):  # ffcv 1.0.2 calls a TraversalOrder instance with the loader
        super().__init__(loader)
        return self

    def sample_order(self, epoch: int) -> np.ndarray:
        order = epoch_order(len(self.indices), self.rank, self.world_size, self.order_seed, epoch).numpy()
        batch = self.loader.batch_size
        return order[self.skip * batch:len(order) // batch * batch]  # whole batches only (drop_last)
