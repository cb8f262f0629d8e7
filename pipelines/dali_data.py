"""DALI data: webdataset tar shards with their DALI index files. The writer comes first; the DALI
two-view loader that reads the shards goes below it (its DALI graphs are in `dali_ops`).

A shard `shard-000042.tar` holds, per sample, `<key>.jpg` (an RGB JPEG, longest side <= R, quality
Q) then `<key>.cls` (the label in ASCII digits: DALI returns it as raw bytes). The key is the
sample's position in the sorted source list, so a shard's content never depends on when or where it
was written. `shard-000042.idx` is the index DALI's own `wds2idx` tool makes for it, so
`fn.readers.webdataset(paths=tars, index_paths=idxs, ext=["jpg", "cls"])` opens the shards without
scanning them. Shards are written under a temporary name; the converter renames them when they are
complete (`commit_shard`).
"""

from __future__ import annotations

import io
import itertools
import os
import tarfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from PIL import Image

from pipelines import manifest
from pipelines.source import UnreadableImage, read_rgb

IMAGE_EXT, LABEL_EXT = "jpg", "cls"
INDEX_VERSION = "v1.2"  # first word of a wds2idx index file


# ---- writing ---------------------------------------------------------------------------------

def shard_name(index: int) -> str:
    return f"shard-{index:06d}"


def sample_key(position: int) -> str:
    return f"{position:09d}"  # no dots: webdataset splits a member name at its first dot


@dataclass(frozen=True)
class ShardJob:
    index: int
    items: tuple[tuple[int, str, int], ...]  # (position in the source list, relative path, label)


@dataclass(frozen=True)
class ShardResult:
    """What one shard holds; also a line of the converter's journal (see `to_json`)."""
    index: int
    samples: int
    bytes: int  # size of the .tar; 0 when every file of the shard was unreadable (no files written)
    label_counts: dict[int, int] = field(default_factory=dict)
    skipped: tuple[tuple[str, str], ...] = ()  # (relative path, reason) of unreadable files

    @property
    def tar(self) -> str:
        return shard_name(self.index) + ".tar"

    @property
    def idx(self) -> str:
        return shard_name(self.index) + ".idx"

    def to_json(self) -> dict:
        return {"index": self.index, "samples": self.samples, "bytes": self.bytes,
                "label_counts": sorted(self.label_counts.items()), "skipped": list(self.skipped)}

    @classmethod
    def from_json(cls, d: dict) -> ShardResult:
        return cls(d["index"], d["samples"], d["bytes"], dict(map(tuple, d["label_counts"])),
                   tuple(map(tuple, d["skipped"])))


def encode_jpeg(img: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)  # 4:2:0 chroma, baseline: what nvJPEG and libjpeg decode fastest
    return buf.getvalue()


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)  # mtime 0, uid 0: identical inputs give identical shards
    info.size, info.mode = len(data), 0o644
    tar.addfile(info, io.BytesIO(data))


def write_shard(job: ShardJob, src_root: Path, folder: Path, max_side: int, quality: int,
                on_file: Callable[[], None] = lambda: None) -> ShardResult:
    """Read, resize and encode the job's images into `<folder>/<shard>.tar.tmp` and `.idx.tmp`.
    Unreadable files are skipped and reported. `on_file` is called after each file (progress)."""
    tar_tmp = folder / (shard_name(job.index) + ".tar.tmp")
    counts, skipped = Counter(), []
    with tarfile.open(tar_tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
        for position, rel, label in job.items:
            try:
                jpeg = encode_jpeg(read_rgb(src_root / rel, max_side), quality)
            except UnreadableImage as err:
                skipped.append((rel, str(err)))
            else:
                _add_member(tar, f"{sample_key(position)}.{IMAGE_EXT}", jpeg)
                _add_member(tar, f"{sample_key(position)}.{LABEL_EXT}", str(label).encode())
                counts[label] += 1
            on_file()
    samples = sum(counts.values())
    if samples == 0:  # an empty tar has no valid DALI index; keep no files for this shard
        tar_tmp.unlink()
        return ShardResult(job.index, 0, 0, {}, tuple(skipped))
    write_index(tar_tmp, folder / (shard_name(job.index) + ".idx.tmp"))
    return ShardResult(job.index, samples, tar_tmp.stat().st_size, dict(counts), tuple(skipped))


def write_index(tar_path: Path, idx_path: Path) -> None:
    """The DALI index of one shard, made by DALI's own `wds2idx` (IndexCreator), not re-implemented."""
    from wds2idx import IndexCreator  # a top-level module installed by nvidia-dali

    with IndexCreator(str(tar_path), str(idx_path), verbose=False) as creator:
        creator.create_index()


def commit_shard(folder: Path, result: ShardResult) -> None:
    """Give a finished shard its final names (each rename is atomic)."""
    if result.samples:
        os.replace(folder / (result.idx + ".tmp"), folder / result.idx)
        os.replace(folder / (result.tar + ".tmp"), folder / result.tar)


def check_shard(folder: Path, result: ShardResult) -> str | None:
    """Cheap check that a committed shard is still what was written: None if fine, else why not."""
    if not result.samples:
        return None
    tar, idx = folder / result.tar, folder / result.idx
    if not tar.is_file():
        return f"{tar}: missing"
    if tar.stat().st_size != result.bytes:
        return f"{tar}: {tar.stat().st_size} bytes, expected {result.bytes} (truncated or replaced)"
    if not idx.is_file():
        return f"{idx}: missing"
    with open(idx) as f:
        header = f.readline().split()
    if header != [INDEX_VERSION, str(result.samples)]:
        return f"{idx}: header {' '.join(header)!r}, expected '{INDEX_VERSION} {result.samples}'"
    return None


# ---- reading a shard without DALI (packing into FFCV, inspecting) ----------------------------

@dataclass(frozen=True)
class ShardSample:
    key: str
    offset: int  # of the JPEG bytes in the tar
    size: int
    label: int


def shard_samples(tar_path: Path) -> list[ShardSample]:
    """The samples of one shard, in order, from its tar headers and .cls members."""
    samples, pending = [], {}
    with tarfile.open(tar_path, "r:") as tar:
        for member in tar:
            if not member.isfile():  # a link's data would come from elsewhere (or nowhere)
                raise ValueError(f"{tar_path}: member {member.name!r} is not a regular file")
            key, _, ext = member.name.partition(".")
            if ext == IMAGE_EXT:
                pending[key] = (member.offset_data, member.size)
            elif ext == LABEL_EXT and key in pending:
                label = int(tar.extractfile(member).read())
                samples.append(ShardSample(key, *pending.pop(key), label))
    if pending:
        raise ValueError(f"{tar_path}: {len(pending)} .{IMAGE_EXT} members without .{LABEL_EXT}")
    return samples


def read_index(idx_path: Path) -> list[dict[str, tuple[int, int]]]:
    """A wds2idx index file as one {extension: (offset, size)} dict per sample."""
    lines = idx_path.read_text().splitlines()
    version, count = lines[0].split()
    if version != INDEX_VERSION or int(count) != len(lines) - 1:
        raise ValueError(f"{idx_path}: header {lines[0]!r} does not match its {len(lines) - 1} lines")
    out = []
    for line in lines[1:]:
        words = line.split()  # repeated: extension offset size name
        out.append({words[i]: (int(words[i + 1]), int(words[i + 2])) for i in range(0, len(words), 4)})
    return out



# ---- the two-view loader (its DALI graphs are in pipelines.dali_ops) -------------------------

def _dataset(path) -> manifest.Manifest:
    return manifest.load(path, format="dali")


class DALICrops:
    """Crop source over webdataset shards (see pipelines.loader.CropSource).

    Each epoch builds its pipeline anew from (seed, epoch): the shards are read in a seeded
    per-epoch order, split between the ranks in contiguous parts (DALI's sharding), and shuffled
    within a buffer of `dali_ops.SHUFFLE_BUFFER` samples. Every rank yields
    (num_images // world_size) // batch_size batches, the same count on every rank.
    """

    def __init__(self, path, aug, batch_size: int, device, rank: int, world_size: int, seed: int,
                 workers: int):
        import torch

        self.manifest = _dataset(path)
        self.dataset_size, self.num_classes = self.manifest.num_images, len(self.manifest.classes)
        self.aug, self.batch_size, self.device = aug, batch_size, torch.device(device)
        self.rank, self.world_size, self.seed, self.workers = rank, world_size, seed, workers
        self.epoch = 0

    def __len__(self) -> int:
        return (self.dataset_size // self.world_size) // self.batch_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        from pipelines import dali_ops
        from pipelines.loader import batch_seed, epoch_order

        files = epoch_order(len(self.manifest.files), 0, 1, self.seed, self.epoch).tolist()  # all ranks alike
        batches = dali_ops.two_view_batches(
            self.manifest, files, self.aug, self.batch_size, self.device, self.rank, self.world_size,
            seed=batch_seed(self.seed, self.rank, self.epoch, 0), workers=self.workers)
        yield from itertools.islice(batches, len(self))  # ranks whose share is larger stop here too


def dali_crops(path: str, *, aug, batch_size: int, device, rank: int = 0, world_size: int = 1,
               seed: int = 0, workers: int = 2) -> DALICrops:
    return DALICrops(path, aug, batch_size, device, rank, world_size, seed, workers)


class _CenterCrops:
    """uint8 center crops and labels of this rank's share, in dataset order; the last batch partial."""

    def __init__(self, path, size: int, resize: int, batch_size: int, device, rank: int, world_size: int,
                 workers: int):
        import torch

        from pipelines.loader import rank_range

        self.manifest = _dataset(path)
        self.args = dict(size=size, resize=resize, batch_size=batch_size, device=torch.device(device),
                         rank=rank, world_size=world_size, workers=workers)
        self.count = len(rank_range(self.manifest.num_images, rank, world_size))  # = DALI's sharding

    def __len__(self) -> int:
        return -(-self.count // self.args["batch_size"])

    def __iter__(self):
        from pipelines import dali_ops

        return dali_ops.center_crop_batches(self.manifest, **self.args)


def dali_center_crops(path: str, *, size: int, resize: int, mean, std, batch_size: int, device,
                      rank: int = 0, world_size: int = 1, workers: int = 2):
    """Evaluation batches (see pipelines.build_eval_loader)."""
    from pipelines.loader import NormalizedBatches

    return NormalizedBatches(_CenterCrops(path, size, resize, batch_size, device, rank, world_size, workers),
                             mean, std)
