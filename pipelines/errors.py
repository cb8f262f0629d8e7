"""The exception types for bad data input (a path, a file, a manifest) that a user can fix."""

from __future__ import annotations

import errno
import math
import os

# Write errors that mean "the disk is full" (for the user, not a bug): reported as NoSpace.
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class DataError(Exception):
    """A problem with the user's data, stated in one line that names the file or value."""


class NoSpace(DataError):
    """The disk filled (or would fill) while writing `path`; `missing`: about how many more bytes
    the rest of the work needs than are free."""

    def __init__(self, path: str | os.PathLike, missing: int, why: str = os.strerror(errno.ENOSPC)):
        self.path, self.missing = path, missing
        mb = max(1, math.ceil(missing / 1e6))
        super().__init__(f"{why[:1].lower() + why[1:]} while writing {path}: free {mb} MB and rerun to resume")
