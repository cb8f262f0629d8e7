"""The DALI backend: webdataset shards, as the converter writes them, plus DALI's own index of each
(`index`); its reader (the two-view crop source fed through DALI's external source, evaluation
crops through DALI's webdataset reader: `reader`, `ops`) and its check (`verify`).

Its registry entry is made of the small functions below, each importing DALI only when called (the
GPU machine has no DALI: importing `pipelines` must not need it).
"""

from __future__ import annotations

from pipelines.backends import Backend, Writer, register


def crops(path, **kwargs):
    """The two-view crop source (pipelines.backends.Backend.crops)."""
    from pipelines.dali_backend.reader import dali_crops

    return dali_crops(path, **kwargs)


def eval_crops(path, **kwargs):
    from pipelines.dali_backend.reader import dali_center_crops

    return dali_center_crops(path, **kwargs)


def pack(partial, shard_dir, results, workers: int, progress: bool) -> list:
    """The shards are the dataset: one data file (with its index) per non-empty shard."""
    from pipelines.convert.manifest import DataFile
    from pipelines.dali_backend.index import index_name

    return [DataFile(r.tar, r.bytes, r.samples, index_name(r)) for r in results if r.samples]


def check_files(files) -> str | None:
    return None if all(f.index for f in files) else "a dali shard lacks its index"


def verify(m, chosen, skip):
    from pipelines.dali_backend.verify import verify_dali

    return verify_dali(m, chosen, skip)


def shard_files(result) -> list[str]:
    from pipelines.dali_backend.index import index_name

    return [index_name(result)]


def write_shard_files(folder, result) -> None:
    from pipelines.dali_backend.index import write_index

    write_index(folder, result)


def check_shard_files(folder, result) -> str | None:
    from pipelines.dali_backend.index import check_index

    return check_index(folder, result)


register("dali", Backend(crops, eval_crops, Writer(pack, check_files, verify, shard_files, write_shard_files,
                                                   check_shard_files)))
