"""Random-resized-crop and flip parameters as a pure function of (seed, epoch, view, sample index).

Counter-based random numbers (splitmix64 on the key), not a generator's stream: a sample's crops do
not depend on which thread, process or batch draws them, nor on what was drawn before, so epoch e's
crops are the same in every run and a resumed run replays them. The FFCV and DALI crop sources both
draw their boxes here (numpy only: neither backend's import is needed).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pipelines.augment imports torch; `convert` (which shuffles with `uniforms`) needs none
    from pipelines.augment import ViewSpec

_M1, _M2, _GOLDEN = (np.uint64(c) for c in (0xBF58476D1CE4E5B9, 0x94D049BB133111EB, 0x9E3779B97F4A7C15))
ATTEMPTS = 10  # as torchvision: random boxes tried before the fallback
DRAWS = 2 * ATTEMPTS + 3  # uniforms per sample and view: the flip, then crop_boxes' draws


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


def crops_and_flips(seed: int, epoch: int, view_index: int, view: ViewSpec, indices: np.ndarray,
                    heights: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """(N, 5) int64: top, left, height, width, flip (0/1) of view `view_index` for samples `indices`."""
    u = uniforms(seed, epoch, view_index, indices, DRAWS)
    return np.stack([*crop_boxes(u[:, 1:], heights, widths, view), u[:, 0] < view.flip_p], 1)
