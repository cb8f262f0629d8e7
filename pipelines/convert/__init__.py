"""`fastbt convert`'s writer side, shared by every converted format: an ImageNet-layout folder scanned
(`source`), cut into webdataset shards in a seeded shuffled order (`shards`), written by W processes
(`pool`) with a journal that makes an interrupted run resume (`journal`), finished by the format's
own writer (the registry's `Writer`: pipelines/<format>_backend/), described by a manifest
(`manifest`) and checked by `inspect` (`verify`). The driver: `driver.convert`.

    from pipelines.convert import Options, convert
    convert("imagenet/train", "in1k_ffcv", Options("ffcv"))

Importing this package is light (standard library only): the work is imported when called.
"""

from __future__ import annotations

from pipelines.convert.options import Options

__all__ = ["Options", "convert", "inspect"]


def convert(src, out, options: Options, **kwargs):
    """Convert the folder `src` into the dataset folder `out` (see pipelines.convert.driver.convert)."""
    from pipelines.convert import driver

    return driver.convert(src, out, options, **kwargs)


def inspect(path, sample: int | None = None, log=print):
    """Print a converted dataset's summary and verify it (see pipelines.convert.verify.inspect)."""
    from pipelines.convert import verify

    return verify.inspect(path, sample, log)
