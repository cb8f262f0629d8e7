"""The options of a conversion and their defaults, recorded in the manifest.

Standard library only (as is the backend table it reads): `fastbt --help` reads the defaults
without importing numpy, PIL or ffcv.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from pipelines.backends import formats
from pipelines.errors import DataError

# R and Q: chosen from `scripts/bench_convert.py` (README, "Converting a dataset"). At R=320 an
# average RandomResizedCrop(224) crop is within ~15% of native resolution (at 256 it is enlarged
# 1.4x); decoding costs 1.6x what it does at 256 and a third of 512; ImageNet takes ~50 GB. JPEG
# decode time hardly depends on Q; size does: Q=95 adds ~40% bytes over 90, Q=85 saves ~20%.
MAX_RESOLUTION = 320
JPEG_QUALITY = 90
SHARD_SIZE = 1000  # ~40 MB shards at the defaults; also the unit of parallel work and of resume
MAX_UNREADABLE = 0.01  # the fraction of image files that may fail to decode before the run fails
SEED = 0  # of the shuffle that assigns samples to shards (pipelines.convert.shards.shard_jobs)


@dataclass(frozen=True)
class Options:
    format: str
    max_resolution: int = MAX_RESOLUTION
    jpeg_quality: int = JPEG_QUALITY
    shard_size: int = SHARD_SIZE
    limit: int | None = None  # convert only this many files, evenly spread over the sorted list
    max_unreadable: float = MAX_UNREADABLE
    seed: int = SEED

    def check(self) -> None:
        if self.format not in formats():
            raise DataError(f"format {self.format!r}: expected one of {', '.join(formats())}")
        for name, lo, hi in (("max_resolution", 16, 65535), ("jpeg_quality", 1, 100),
                             ("shard_size", 1, None), ("limit", 1, None), ("max_unreadable", 0, 1),
                             ("seed", 0, None)):
            v = getattr(self, name)
            if v is not None and not (lo <= v and (hi is None or v <= hi)):
                raise DataError(f"{name} {v}: expected {lo} to {hi if hi is not None else 'any'}")

    def plan(self) -> dict:
        """What a resumed run must share with the interrupted one (the failure threshold may change)."""
        return {k: v for k, v in asdict(self).items() if k != "max_unreadable"}

    def recorded(self) -> dict:
        """As the manifest's "options" records them."""
        return {k: v for k, v in asdict(self).items() if k != "format"}
