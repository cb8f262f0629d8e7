"""ffcv 1.0.2's DatasetWriter, made to fail instead of hang (imports ffcv: import it only to write).

Its main process waits for its worker processes twice without a timeout: until a shared counter of
samples done reaches the total, then for each worker's allocation table on a queue; and its workers
wait for each other to write their pages in turn. So one worker that fails (a full disk, a kill)
left every other process waiting forever. `WatchedWriter` is the same writer with one change: every
wait of the main process also watches the workers, and the first failure stops them all and raises
it (an OSError as the worker saw it, or WriterFailed), within about `POLL` seconds.
"""

from __future__ import annotations

import ctypes
import os
import queue
import signal
from multiprocessing import Process, Queue, SimpleQueue, Value, shared_memory

from ffcv.memory_allocator import MemoryAllocator
from ffcv.writer import DatasetWriter
from tqdm import tqdm

POLL = 0.1  # seconds between looks at the workers


class WriterFailed(Exception):
    """An FFCV writer process failed with something other than an OSError; the message says what."""


def _reporting(failures: SimpleQueue, work_fn, *args) -> None:
    """A writer worker: ffcv's work function, whose failure is sent to the main process (in place
    of a traceback on stderr). Ctrl-C is the main process's to handle: it stops the workers."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        work_fn(*args)
    except BaseException as err:  # noqa: B036 -- anything a worker dies of is reported
        failures.put((type(err).__name__, str(err), getattr(err, "errno", None),
                      getattr(err, "strerror", None), getattr(err, "filename", None)))
        os._exit(1)


class WatchedWriter(DatasetWriter):
    """ffcv.writer.DatasetWriter whose waits watch its workers (see the module docstring).
    `progress`: show a progress bar on stderr."""

    progress = True

    def _write_common(self, num_samples, queue_content, work_fn, extra_worker_args):
        # As ffcv 1.0.2's _write_common, but the waits go through _wait_for_allocations.
        self.num_samples = num_samples
        self.prepare()
        try:
            work, allocations, failures = Queue(), Queue(), SimpleQueue()
            for todo in queue_content:
                work.put(todo)
            for _ in range(self.num_workers):
                work.put(None)  # one "no more work" token per worker
            done = Value(ctypes.c_uint64, 0)
            allocator = MemoryAllocator(self.fname, self.data_region_start, self.page_size)
            args = (work, self.metadata_sm, self.metadata_type, self.fields, allocator, done, allocations,
                    *extra_worker_args)
            workers = [Process(target=_reporting, args=(failures, work_fn, *args))
                       for _ in range(self.num_workers)]
            try:
                for p in workers:
                    p.start()
                table = self._wait_for_allocations(workers, allocations, failures, done)
            finally:
                for p in workers:
                    if p.is_alive():
                        p.terminate()
                    if p.pid is not None:
                        p.join()
            self.finalize(table)
        finally:
            if isinstance(self.metadata_sm, shared_memory.SharedMemory):  # made by prepare()
                self.metadata_sm.close()
                self.metadata_sm.unlink()

    def _wait_for_allocations(self, workers, allocations: Queue, failures: SimpleQueue, done) -> list:
        """Every worker's allocation table (each sends one when it has written all its pages)."""
        table, received = [], 0
        with tqdm(total=self.num_samples, desc="pack", unit="img", disable=not self.progress) as bar:
            while received < len(workers):
                try:
                    table.extend(allocations.get(timeout=POLL))
                    received += 1
                except queue.Empty:
                    _raise_first_failure(workers, failures, self.fname)
                if done.value != bar.n:
                    bar.update(done.value - bar.n)
        return table


def _raise_first_failure(workers, failures: SimpleQueue, fname: str) -> None:
    if not failures.empty():
        kind, message, errno, strerror, filename = failures.get()
        if errno is not None:
            raise OSError(errno, strerror, filename or fname)
        raise WriterFailed(f"an FFCV writer process failed: {kind}: {message}")
    dead = [p.exitcode for p in workers if p.exitcode not in (None, 0)]
    if dead:
        how = f"signal {-dead[0]}" if dead[0] < 0 else f"exit code {dead[0]}"
        raise WriterFailed(f"an FFCV writer process died ({how})")
