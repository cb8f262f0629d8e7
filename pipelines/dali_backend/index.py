"""The DALI backend's writer half: the index of each webdataset shard (`pipelines.convert.shards`).

`shard-000042.idx` is the index DALI's own `wds2idx` tool makes for `shard-000042.tar`, so
`fn.readers.webdataset(paths=tars, index_paths=idxs, ext=["jpg", "cls"])` opens the shards without
scanning them, and fastbt's loader finds any sample's bytes without reading the tars' headers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipelines.convert.shards import TMP, ShardResult, shard_name

INDEX_VERSION = "v1.2"  # first word of a wds2idx index file


def index_name(result: ShardResult) -> str:
    return shard_name(result.index) + ".idx"


def write_index(folder: Path, result: ShardResult) -> None:
    """The DALI index of a shard just written (`<shard>.tar.tmp` -> `<shard>.idx.tmp`), made by
    DALI's own `wds2idx` (IndexCreator), not re-implemented."""
    from wds2idx import IndexCreator  # a top-level module installed by nvidia-dali

    tar, idx = folder / (result.tar + TMP), folder / (index_name(result) + TMP)
    with IndexCreator(str(tar), str(idx), verbose=False) as creator:
        creator.create_index()


def check_index(folder: Path, result: ShardResult) -> str | None:
    """Cheap check that a committed shard's index is there and counts its samples: None if fine."""
    if not result.samples:
        return None
    idx = folder / index_name(result)
    if not idx.is_file():
        return f"{idx}: missing"
    with open(idx) as f:
        header = f.readline().split()
    if header != [INDEX_VERSION, str(result.samples)]:
        return f"{idx}: header {' '.join(header)!r}, expected '{INDEX_VERSION} {result.samples}'"
    return None


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


def read_offsets(idx_path: Path, extensions: tuple[str, ...]) -> np.ndarray:
    """(offset, size) of each of `extensions` per sample of a wds2idx index, as an int64 array of
    shape (samples, 2 * len(extensions)): parsed by numpy, not as a dict per sample, so opening
    ImageNet's 1.28M samples takes seconds (issue 23). Every sample must have every extension."""
    header, _, body = idx_path.read_bytes().partition(b"\n")
    version, count = header.decode().split()
    lines = body.count(b"\n") + bool(body and not body.endswith(b"\n"))
    if version != INDEX_VERSION or int(count) != lines:
        raise ValueError(f"{idx_path}: header {header.decode()!r} does not match its {lines} lines")
    n = int(count)
    tokens = np.array(body.split())  # per sample: repeated (extension, offset, size, name)
    if n == 0 or tokens.size % (4 * n):
        return _offsets_per_line(idx_path, extensions)  # empty, or samples of different members
    table = tokens.reshape(n, -1, 4)
    out = np.empty((n, 2 * len(extensions)), np.int64)
    for k, ext in enumerate(extensions):
        column = np.flatnonzero((table[:, :, 0] == ext.encode()).all(0))
        if not column.size:  # not where every sample has it: the members differ from sample to sample
            return _offsets_per_line(idx_path, extensions)
        out[:, 2 * k:2 * k + 2] = table[:, column[0], 1:3].astype(np.int64)
    return out


def _offsets_per_line(idx_path: Path, extensions: tuple[str, ...]) -> np.ndarray:
    try:
        rows = [[v for ext in extensions for v in e[ext]] for e in read_index(idx_path)]
        return np.array(rows, np.int64).reshape(-1, 2 * len(extensions))
    except KeyError as missing:
        raise ValueError(f"{idx_path}: a sample without a {missing} member") from None
