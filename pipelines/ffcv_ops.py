"""FFCV pipeline pieces for the two-view loader in `ffcv_data` (this module imports ffcv, which
takes seconds: import it only to build a loader).

Decode once, crop twice: the field's decoder `JpegBytes` only copies each sample's JPEG out of the
.beton; `TwoCrops` decodes it (FFCV's libjpeg-turbo binding), then random-resized-crops and flips
it for both views (OpenCV), on a pool of threads, outside the GIL. The crops' randomness is a pure
function of (seed, epoch, view, sample index), drawn in numpy; not numba's per-thread generators,
which FFCV's own crop decoders use: ffcv 1.0.2 never seeds them, and which thread draws for which
sample varies. So epoch e's crops are the same in every run, whatever the rank count, batch size
or thread count, and a resumed run replays them.
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

from pipelines.augment import AugSpec, ViewSpec
from pipelines.loader import epoch_order

# ---- crop parameters: counter-based random numbers, torchvision's RandomResizedCrop ------------

_M1, _M2, _GOLDEN = (np.uint64(c) for c in (0xBF58476D1CE4E5B9, 0x94D049BB133111EB, 0x9E3779B97F4A7C15))
ATTEMPTS = 10  # as torchvision: random boxes tried before the fallback


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer, elementwise on uint64 arrays (wrapping arithmetic)."""
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


def uniforms(seed: int, epoch: int, view: int, indices: np.ndarray, n: int) -> np.ndarray:
    """(len(indices), n) floats in [0, 1), a pure function of (seed, epoch, view, sample index)."""
    key = np.zeros(1, np.uint64)
    for v in (seed, epoch, view):
        key = _mix(key + np.uint64(v % (1 << 64)))
    keys = _mix(key ^ np.asarray(indices, np.uint64))
    bits = _mix(keys[:, None] + _GOLDEN * np.arange(1, n + 1, dtype=np.uint64))
    return (bits >> np.uint64(11)) * 2.0**-53


def crop_boxes(u: np.ndarray, heights: np.ndarray, widths: np.ndarray, view: ViewSpec):
    """torchvision's RandomResizedCrop.get_params for a batch, from uniforms u (N, 2 ATTEMPTS + 2):
    (top, left, height, width) int arrays."""
    heights, widths = heights.astype(np.int64), widths.astype(np.int64)
    area = (heights * widths)[:, None]
    target = area * (view.crop_scale[0] + (view.crop_scale[1] - view.crop_scale[0]) * u[:, :ATTEMPTS])
    lo, hi = np.log(view.crop_ratio)
    aspect = np.exp(lo + (hi - lo) * u[:, ATTEMPTS:2 * ATTEMPTS])
    w = np.rint(np.sqrt(target * aspect)).astype(np.int64)
    h = np.rint(np.sqrt(target / aspect)).astype(np.int64)
    fits = (w > 0) & (w <= widths[:, None]) & (h > 0) & (h <= heights[:, None])
    first = fits.argmax(axis=1)[:, None]  # the first attempt that fits, as torchvision's loop
    w, h = np.take_along_axis(w, first, 1)[:, 0], np.take_along_axis(h, first, 1)[:, 0]
    # No attempt fits: the whole image, cut to the nearest allowed aspect ratio, centered.
    ratio = widths / heights
    fw = np.where(ratio > view.crop_ratio[1], np.rint(heights * view.crop_ratio[1]), widths).astype(np.int64)
    fh = np.where(ratio < view.crop_ratio[0], np.rint(widths / view.crop_ratio[0]), heights).astype(np.int64)
    found = fits.any(axis=1)
    w, h = np.where(found, w, fw), np.where(found, h, fh)
    top = np.where(found, np.floor(u[:, -2] * (heights - h + 1)), (heights - h) // 2).astype(np.int64)
    left = np.where(found, np.floor(u[:, -1] * (widths - w + 1)), (widths - w) // 2).astype(np.int64)
    return top, left, h, w


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
            views = []  # per view, per sample: top, left, height, width, flip
            for index, view in enumerate(self.views):
                u = uniforms(self.seed, self.epoch, index, batch_indices, 2 * ATTEMPTS + 3)
                views.append(np.stack([*crop_boxes(u[:, 1:], h, w, view), u[:, 0] < view.flip_p], 1).tolist())
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
    """FFCV traversal order = `pipelines.loader.epoch_order`: the same samples in the same order as
    the torchvision backend, for any rank count. Works without torch.distributed (FFCV's own
    `distributed=True` needs an initialized process group and pads ranks to equal size)."""

    def __init__(self, rank: int, world_size: int, seed: int):
        self.rank, self.world_size, self.order_seed = rank, world_size, seed

    def __call__(self, loader):  # ffcv 1.0.2 calls a TraversalOrder instance with the loader
        super().__init__(loader)
        return self

    def sample_order(self, epoch: int) -> np.ndarray:
        return epoch_order(len(self.indices), self.rank, self.world_size, self.order_seed, epoch).numpy()
