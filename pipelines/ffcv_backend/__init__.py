"""The FFCV backend: a .beton (fields `image`, RGBImageField JPEG, and `label`, IntField), its writer
half (packing the converter's shards into the .beton: `beton`, `writer`; checking it: `verify`)
and its reader (the two-view crop source and evaluation crops: `reader`, `ops`).

Its registry entry is made of the small functions below, each importing ffcv only when called:
`import ffcv` alone takes seconds, and changes torch's thread count (`threads`).
"""

from __future__ import annotations

from pipelines.backends import Backend, Writer, register


def crops(path, **kwargs):
    """The two-view crop source (pipelines.backends.Backend.crops)."""
    from pipelines.ffcv_backend.reader import ffcv_crops

    return ffcv_crops(path, **kwargs)


def eval_crops(path, **kwargs):
    from pipelines.ffcv_backend.reader import ffcv_center_crops

    return ffcv_center_crops(path, **kwargs)


def pack(partial, shard_dir, results, workers: int, progress: bool) -> list:
    """Pack the shards into `partial`/data.beton; the one data file of the manifest."""
    from pipelines.convert.manifest import DataFile
    from pipelines.ffcv_backend import beton

    path = partial / beton.BETON_NAME
    n = beton.write_beton(path, [shard_dir / r.tar for r in results if r.samples], workers, progress)
    return [DataFile(path.name, path.stat().st_size, n)]


def check_files(files) -> str | None:
    return None if len(files) == 1 else "an ffcv dataset has one .beton"


def verify(m, chosen, skip):
    from pipelines.ffcv_backend.verify import verify_ffcv

    return verify_ffcv(m, chosen, skip)


register("ffcv", Backend(crops, eval_crops, Writer(pack, check_files, verify, spooled=True)))
