"""FFCV data: a .beton with fields `image` (RGBImageField, JPEG) and `label` (IntField). The writer
comes first; the FFCV two-view loader that reads the .beton goes below it.

The .beton is packed from webdataset shards the converter has just written (`dali_data`), so FFCV
and DALI datasets made with the same options hold byte-identical JPEGs, and an image is decoded and
encoded once. FFCV's writer must know the number of samples before it starts, which is only known
after every file has been tried; packing afterwards also gives FFCV conversions the shards'
resume. `ffcv` is imported inside the functions: the import alone takes seconds.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image

from pipelines.dali_data import shard_samples

BETON_NAME = "data.beton"
IMAGE_FIELD, LABEL_FIELD = "image", "label"  # batches come out in this order
MIN_PAGE_SIZE = 8 << 20  # ffcv's default page (4 x 2 MiB)


# ---- writing ---------------------------------------------------------------------------------

class _ShardJpegs:
    """The samples of a list of shards as FFCV's writer indexes them: i -> ((jpeg, w, h), label).
    Arrays, not Python objects, so the writer's forked workers share them without copying."""

    def __init__(self, shards: list[Path]):
        per_shard = [shard_samples(p) for p in shards]
        self.paths = [str(p) for p in shards]
        self.shard = np.concatenate([np.full(len(s), i, np.int32) for i, s in enumerate(per_shard)])
        self.offset, self.size, self.label = (
            np.array([getattr(x, a) for s in per_shard for x in s], np.int64)
            for a in ("offset", "size", "label"))

    def __len__(self) -> int:
        return len(self.label)

    def __getitem__(self, i: int):
        with open(self.paths[self.shard[i]], "rb") as f:
            data = os.pread(f.fileno(), int(self.size[i]), int(self.offset[i]))
        width, height = Image.open(io.BytesIO(data)).size  # header only
        return (np.frombuffer(data, np.uint8), width, height), int(self.label[i])


def _store_encoded_jpeg(destination, value, malloc) -> None:
    """RGBImageField.encode for an already-encoded JPEG: the same metadata and bytes it would write
    in write_mode="jpg", without decoding and re-encoding (which would compress the image twice)."""
    from ffcv.fields.rgb_image import IMAGE_MODES

    data, width, height = value
    destination["mode"] = IMAGE_MODES["jpg"]
    destination["width"], destination["height"] = width, height
    destination["data_ptr"], storage = malloc(data.nbytes)
    storage[:] = data


def write_beton(path: Path, shards: list[Path], workers: int) -> int:
    """Pack the shards' JPEGs and labels into a .beton at `path` (via `path.tmp`, renamed when
    complete) with FFCV's own DatasetWriter. Returns the number of samples."""
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    data = _ShardJpegs(shards)
    image = RGBImageField(write_mode="jpg")
    # The writer records a field's type from type(field), so this stays a stock RGBImageField that
    # stock ffcv readers decode; only this instance's encode is replaced.
    image.encode = _store_encoded_jpeg
    # A sample larger than a page makes FFCV's writer workers fail and its main process wait forever.
    page_size = max(MIN_PAGE_SIZE, 1 << int(data.size.max(initial=0) * 2).bit_length())
    tmp = path.with_name(path.name + ".tmp")
    writer = DatasetWriter(str(tmp), {IMAGE_FIELD: image, LABEL_FIELD: IntField()},
                           page_size=page_size, num_workers=workers)
    writer.from_indexed_dataset(data)
    os.replace(tmp, path)
    return len(data)


# ---- reading a .beton without a Loader (inspect) ---------------------------------------------

def beton_contents(path: Path):
    """(labels, widths, heights, jpeg(i)) of a .beton, read with FFCV's own Reader (no JIT).
    Raises ValueError when the file's structure does not hold together."""
    from ffcv.reader import Reader

    try:
        reader = Reader(str(path))
    except (ValueError, AssertionError, IndexError, OSError) as err:
        raise ValueError(f"{path}: not a readable .beton ({type(err).__name__}: {err})") from None
    if reader.field_names != [IMAGE_FIELD, LABEL_FIELD]:
        raise ValueError(f"{path}: fields {reader.field_names}, expected {[IMAGE_FIELD, LABEL_FIELD]}")
    image, labels = reader.metadata["f0"], reader.metadata["f1"]
    if len(image) != reader.num_samples:
        raise ValueError(f"{path}: metadata for {len(image)} of {reader.num_samples} samples (truncated?)")
    sizes = {int(ptr): int(size) for ptr, size in zip(reader.alloc_table["ptr"], reader.alloc_table["size"])}
    lost = np.setdiff1d(image["data_ptr"], reader.alloc_table["ptr"]).size
    if lost:
        raise ValueError(f"{path}: {lost} samples' image data missing from its allocation table (truncated?)")
    file_size = path.stat().st_size

    def jpeg(i: int) -> bytes:
        ptr = int(image["data_ptr"][i])
        if ptr + sizes[ptr] > file_size:
            raise ValueError(f"{path}: sample {i}'s image data is outside the file (truncated?)")
        with open(path, "rb") as f:
            return os.pread(f.fileno(), sizes[ptr], ptr)

    return np.asarray(labels), np.asarray(image["width"]), np.asarray(image["height"]), jpeg
