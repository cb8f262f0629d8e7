"""The FFCV backend's writer half: a .beton with fields `image` (RGBImageField, JPEG) and `label`
(IntField), packed from the webdataset shards the converter has just written
(`pipelines.convert.shards`), in their order (a seeded shuffle of the source), so FFCV and DALI
datasets made with the same options hold byte-identical JPEGs in the same order, and an image is
decoded and encoded once. FFCV's writer must know the number of samples before it starts, which is
only known after every file has been tried; packing afterwards also gives FFCV conversions the
shards' resume. Also the .beton read without a Loader (`fastbt inspect`). `ffcv` is imported inside
the functions (the import alone takes seconds), each under `torch_threads_kept` (importing ffcv
changes torch's thread count: `pipelines.ffcv_backend.threads`).
"""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from pipelines.convert.shards import shard_samples
from pipelines.errors import DISK_FULL, DataError, NoSpace
from pipelines.ffcv_backend.threads import torch_threads_kept

BETON_NAME = "data.beton"
IMAGE_FIELD, LABEL_FIELD = "image", "label"  # batches come out in this order
MIN_PAGE_SIZE = 8 << 20  # ffcv's default page (4 x 2 MiB)


# ---- writing ---------------------------------------------------------------------------------

class _ShardJpegs:
    """The samples of a list of shards as FFCV's writer indexes them: i -> ((jpeg, w, h), label).
    Arrays, not Python objects, so the writer's forked workers share them without copying."""

    def __init__(self, shards: list[Path]):
        self.paths = [str(p) for p in shards]
        # One shard's sample objects at a time: a list of every sample held ~250 bytes each (~300 MB
        # for ImageNet) until the arrays were built.
        per_shard = [np.array([(x.offset, x.size, x.label) for x in shard_samples(p)], np.int64).reshape(-1, 3)
                     for p in shards]
        self.shard = np.concatenate([np.full(len(s), i, np.int32) for i, s in enumerate(per_shard)])
        self.offset, self.size, self.label = np.concatenate(per_shard).T

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


@torch_threads_kept()
def write_beton(path: Path, shards: list[Path], workers: int, progress: bool = True) -> int:
    """Pack the shards' JPEGs and labels into a .beton at `path` (via `path.tmp`, renamed when
    complete) with FFCV's own DatasetWriter, watched so that a failing writer process ends the
    call within a second instead of hanging (`pipelines.ffcv_backend.writer`). Returns the number of samples.

    Raises NoSpace, before writing, when the free space is below what the .beton may take, or
    when the disk fills anyway; DataError when a writer process fails otherwise. The .tmp file
    is removed on any failure."""
    from ffcv.fields import IntField, RGBImageField

    from pipelines.ffcv_backend.writer import WatchedWriter, WriterFailed

    data = _ShardJpegs(shards)
    image = RGBImageField(write_mode="jpg")
    # The writer records a field's type from type(field), so this stays a stock RGBImageField that
    # stock ffcv readers decode; only this instance's encode is replaced.
    image.encode = _store_encoded_jpeg
    # A sample larger than a page makes FFCV's writer workers fail and its main process wait forever.
    page_size = max(MIN_PAGE_SIZE, 1 << int(data.size.max(initial=0) * 2).bit_length())
    tmp = path.with_name(path.name + ".tmp")
    writer = WatchedWriter(str(tmp), {IMAGE_FIELD: image, LABEL_FIELD: IntField()},
                           page_size=page_size, num_workers=workers)
    writer.progress = progress
    bound = beton_size_bound(data.size, writer.metadata_type.itemsize, page_size, workers)
    free = shutil.disk_usage(path.parent).free
    if bound > free:
        raise NoSpace(tmp, bound - free)
    try:
        writer.from_indexed_dataset(data)
    except BaseException as err:
        tmp.unlink(missing_ok=True)  # of no use, and maybe what filled the disk
        if isinstance(err, OSError) and err.errno in DISK_FULL:
            raise NoSpace(err.filename or tmp, bound - shutil.disk_usage(path.parent).free,
                          os.strerror(err.errno)) from None
        if isinstance(err, WriterFailed):
            raise DataError(f"{tmp}: {err}; the finished shards are kept: rerun to resume") from None
        raise
    os.replace(tmp, path)
    return len(data)


@torch_threads_kept()
def beton_size_bound(sizes: np.ndarray, metadata_bytes: int, page_size: int, workers: int) -> int:
    """The most bytes ffcv 1.0.2's writer can make of samples with these JPEG sizes: a header,
    the metadata, then whole pages (each worker fills its own; a sample never straddles two, so a
    page wastes less than the largest sample) and the allocation table (24 bytes a sample)."""
    from ffcv.types import ALLOC_TABLE_TYPE, FieldDescType, HeaderType

    start = HeaderType.itemsize + 2 * FieldDescType.itemsize + len(sizes) * metadata_bytes
    usable = page_size - int(sizes.max(initial=0))
    pages = -(-int(sizes.sum()) // usable) + workers
    return -(-start // page_size) * page_size + pages * page_size + len(sizes) * ALLOC_TABLE_TYPE.itemsize


# ---- reading a .beton without a Loader (inspect) ---------------------------------------------

@torch_threads_kept()
def check_header(path: Path) -> None:
    """Check a .beton's header against what fastbt writes and against the file's size, before
    ffcv's Reader allocates what the header says (a corrupt count once asked for 1.49 EiB).
    Raises ValueError naming the field at fault."""
    from ffcv.fields import IntField, RGBImageField
    from ffcv.types import CURRENT_VERSION, FieldDescType, HeaderType, TYPE_ID_HANDLER, get_metadata_type

    size = os.path.getsize(path)
    fields_end = HeaderType.itemsize + 2 * FieldDescType.itemsize
    if size < fields_end:
        raise ValueError(f"{path}: {size} bytes, too short for a .beton header")
    header = np.fromfile(path, HeaderType, count=1)[0]
    if header["version"] != CURRENT_VERSION:
        raise ValueError(f"{path}: format version {header['version']}, expected {CURRENT_VERSION}")
    if header["num_fields"] != 2:
        raise ValueError(f"{path}: header says {header['num_fields']} fields, a fastbt .beton has 2 (image, label)")
    type_ids = np.fromfile(path, FieldDescType, count=2, offset=HeaderType.itemsize)["type_id"].tolist()
    expected = [k for t in (RGBImageField, IntField) for k, v in TYPE_ID_HANDLER.items() if v is t]
    if type_ids != expected:
        raise ValueError(f"{path}: field type ids {type_ids}, expected {expected} (RGBImageField, IntField)")
    per_sample = get_metadata_type([RGBImageField(), IntField()]).itemsize
    if header["num_samples"] > (size - fields_end) // per_sample:
        raise ValueError(f"{path}: header says {header['num_samples']} samples, more than its {size} bytes hold")
    if not fields_end + header["num_samples"] * per_sample <= header["alloc_table_ptr"] <= size:
        raise ValueError(f"{path}: allocation table at byte {header['alloc_table_ptr']}, outside the "
                         f"file's data ({size} bytes)")


@torch_threads_kept()
def beton_contents(path: Path):
    """(labels, widths, heights, jpeg(i)) of a .beton, read with FFCV's own Reader (no JIT).
    Raises ValueError when the file's structure does not hold together."""
    from ffcv.reader import Reader

    check_header(path)
    try:
        reader = Reader(str(path))
    except (ValueError, AssertionError, IndexError, KeyError, TypeError, OSError) as err:
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


