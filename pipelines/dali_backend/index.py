"""The DALI backend's writer half: the index of each webdataset shard (`pipelines.convert.shards`).

`shard-000042.idx` is the index DALI's own `wds2idx` tool makes for `shard-000042.tar`, so
`fn.readers.webdataset(paths=tars, index_paths=idxs, ext=["jpg", "cls"])` opens the shards without
scanning them, and fastbt's loader finds any sample's bytes without reading the tars' headers.
"""

from __future__ import annotations

from pathlib import Path

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


