"""One process per folder: an flock on a lock file inside it, naming its holder (PID and host).

Used by pretraining run directories (fastbt.rundir) and by unfinished conversions (OUT.partial).
The OS drops an flock when its process dies, so a killed run leaves no stale lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import sys
from pathlib import Path
from typing import IO


class FolderBusy(Exception):
    """Another process holds the folder's lock; `holder` says who ("PID 123 on host")."""

    def __init__(self, folder: Path, holder: str):
        self.folder, self.holder = folder, holder
        super().__init__(f"{folder} is in use ({holder})")


class LockNotWritten(OSError):
    """The lock was taken but its holder line could not be written (a full disk, a read-only
    folder); the lock is released. `path` is the lock file, `errno`/`strerror` the cause."""

    def __init__(self, path: Path, err: OSError):
        super().__init__(err.errno, err.strerror)
        self.path = path


def hold(folder: Path, name: str = ".lock") -> IO[str]:
    """Create `folder` if needed and lock folder/name; returns the open file (closing it releases
    the lock). FolderBusy if another process holds it; OSError if the folder cannot be made or the
    file opened. A filesystem without locks (some NFS or Lustre mounts): a warning, and no lock."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    handle = open(folder / name, "a+")  # "a+": never truncate a file someone else may hold
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read(200).strip() or "PID unknown"
        handle.close()
        raise FolderBusy(folder, holder) from None
    except OSError as err:
        print(f"fastbt: warning: cannot lock {folder / name} ({err.strerror}); make sure no other "
              "process uses this folder", file=sys.stderr, flush=True)
        return handle
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"PID {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
    except OSError as err:  # a full disk or a read-only folder: release the lock, name the file
        with contextlib.suppress(OSError):  # closing flushes the unwritten line again
            handle.close()
        raise LockNotWritten(folder / name, err) from None
    return handle
