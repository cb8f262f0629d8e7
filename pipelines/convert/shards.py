"""The neutral intermediate of both formats: webdataset tar shards, written in a seeded shuffled order.

A shard `shard-000042.tar` holds, per sample, `<key>.jpg` (an RGB JPEG, longest side <= R, quality
Q) then `<key>.cls` (the label in ASCII digits). The key is the sample's position in the sorted
source list; which shard a sample goes to, and where in it, follows a seeded permutation of that
list (`shard_jobs`), so every shard holds a uniform random sample of the classes (class-sorted
shards give class-clustered batches to any reader that streams them: DALI's webdataset reader
shuffles only inside a buffer of a few thousand samples). The same source and seed give the same
shards, whenever and wherever they are written.

The DALI format adds an index per shard (`pipelines.dali_backend.index`); the FFCV format packs the
shards into a .beton (`pipelines.ffcv_backend.beton`). Shards are written under a temporary name; the converter renames them when
they are complete (`commit_shard`).
"""

from __future__ import annotations

import io
import os
import tarfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from pipelines.crop_params import uniforms
from pipelines.convert.source import UnreadableImage, read_rgb

IMAGE_EXT, LABEL_EXT = "jpg", "cls"
TMP = ".tmp"  # suffix of a file still being written


def shard_name(index: int) -> str:
    return f"shard-{index:06d}"


def sample_key(position: int) -> str:
    return f"{position:09d}"  # no dots: webdataset splits a member name at its first dot


# ---- which sample goes where -----------------------------------------------------------------

@dataclass(frozen=True)
class ShardJob:
    index: int
    items: tuple[tuple[int, str, int], ...]  # (position in the source list, relative path, label)


def shuffled_order(n: int, seed: int) -> np.ndarray:
    """A permutation of range(n), a pure function of (n, seed): sorted by counter-based random
    keys, so it does not depend on the numpy version's generators."""
    return np.argsort(uniforms(seed, 0, 0, np.arange(n), 1)[:, 0], kind="stable")


class ShardPlan(Sequence):
    """The shard jobs of a source list (objects with .path and .label) cut into shards of
    `shard_size` in the order of `shuffled_order(len(samples), seed)`, each job built when asked
    for: the plan holds the order (8 bytes a sample), not a (position, path, label) tuple per sample
    (~100 bytes: ~130 MB at ImageNet scale, held for the whole conversion)."""

    def __init__(self, samples: Sequence, shard_size: int, seed: int):
        self.samples, self.shard_size = samples, shard_size
        self.order = shuffled_order(len(samples), seed)

    def __len__(self) -> int:
        return -(-len(self.samples) // self.shard_size)

    def __getitem__(self, index: int) -> ShardJob:
        if not -len(self) <= index < len(self):
            raise IndexError(f"shard {index} of {len(self)}")
        index %= len(self)
        positions = self.order[index * self.shard_size:(index + 1) * self.shard_size].tolist()
        return ShardJob(index, tuple((pos, self.samples[pos].path, self.samples[pos].label) for pos in positions))

    def size(self, index: int) -> int:
        """How many samples shard `index` holds (without building its job)."""
        return min(self.shard_size, len(self.samples) - index * self.shard_size)


def shard_jobs(samples: Sequence, shard_size: int, seed: int) -> ShardPlan:
    return ShardPlan(samples, shard_size, seed)


# ---- writing ---------------------------------------------------------------------------------

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
    """Read, resize and encode the job's images, in the job's order, into `<folder>/<shard>.tar.tmp`.
    Unreadable files are skipped and reported. `on_file` is called after each file (progress)."""
    tar_tmp = folder / (shard_name(job.index) + ".tar" + TMP)
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
    if samples == 0:  # an empty tar is no use to any reader; keep no files for this shard
        tar_tmp.unlink()
        return ShardResult(job.index, 0, 0, {}, tuple(skipped))
    return ShardResult(job.index, samples, tar_tmp.stat().st_size, dict(counts), tuple(skipped))


def commit_shard(folder: Path, result: ShardResult, companions: Sequence[str] = ()) -> None:
    """Give a finished shard its final names (each rename is atomic): its `companions` (file names,
    e.g. its DALI index) first, the tar last, so a committed tar has its companions."""
    if result.samples:
        for name in (*companions, result.tar):
            os.replace(folder / (name + TMP), folder / name)


def check_shard(folder: Path, result: ShardResult) -> str | None:
    """Cheap check that a committed shard's tar is still what was written: None if fine, else why not."""
    if not result.samples:
        return None
    tar = folder / result.tar
    if not tar.is_file():
        return f"{tar}: missing"
    if tar.stat().st_size != result.bytes:
        return f"{tar}: {tar.stat().st_size} bytes, expected {result.bytes} (truncated or replaced)"
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
