"""Writing a conversion's shards in W processes, each finished shard committed and journaled by the
main process as soon as it arrives, so an interruption loses only the shards in flight."""

from __future__ import annotations

import functools
import multiprocessing
import os
import signal
import sys
from pathlib import Path

from tqdm import tqdm

from pipelines.backends import backend
from pipelines.convert import journal, shards
from pipelines.convert.options import Options
from pipelines.convert.shards import ShardJob, ShardPlan, ShardResult
from pipelines.convert.source import Source, printable
from pipelines.errors import DataError


_files_done = None  # in each worker: a shared counter of files processed, for the progress bar


def _init_worker(counter, pids) -> None:
    global _files_done
    _files_done = counter
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is handled by the main process alone
    with pids.get_lock():  # the pool's first workers note their pid (see _a_worker_died)
        free = [i for i, pid in enumerate(pids) if pid == 0]
        if free:
            pids[free[0]] = os.getpid()


def _a_worker_died(pids) -> bool:
    """A pool worker that is killed (e.g. out of memory) is replaced, and its shard is never
    returned: without this check the main process would wait for it forever."""
    for pid in pids:
        try:
            if pid:
                os.kill(pid, 0)
        except ProcessLookupError:
            return True
    return False


def _count_file() -> None:
    with _files_done.get_lock():
        _files_done.value += 1


def _write_shard(job: ShardJob, src_root: Path, folder: Path, max_side: int, quality: int,
                 fmt: str) -> ShardResult:
    """In a worker: one shard, and the files its format adds next to it (DALI: its index)."""
    writer = backend(fmt).writer
    try:
        result = shards.write_shard(job, src_root, folder, max_side, quality, on_file=_count_file)
        if writer.write_shard_files and result.samples:
            writer.write_shard_files(folder, result)
    except OSError as err:  # a full disk mid-tar names no file: name the shard's
        if err.filename is not None:
            raise
        raise OSError(err.errno, err.strerror, str(folder / shards.shard_name(job.index))) from None
    return result


class ShardWriters:
    """W shard-writer processes. Forked when entered, which the driver does before it scans the
    source: a worker forked later inherits the main process's heap, a record per source image
    (~150 bytes: ~200 MB at ImageNet scale), counted in every writer's RSS and partly copied into
    each as its garbage collector touches it. Forked early, a writer holds the imports alone."""

    def __init__(self, workers: int):
        self.workers = workers
        self._pool = None

    def __enter__(self) -> ShardWriters:
        self.counter, self.pids = multiprocessing.Value("q", 0), multiprocessing.Array("q", self.workers)
        self._pool = multiprocessing.Pool(self.workers, _init_worker, (self.counter, self.pids))
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """End the writers (idempotent): the FFCV pack that follows forks its own."""
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None

    def write(self, jobs: ShardPlan, todo: list[int], source: Source, folder: Path, options: Options,
              journal_path: Path, done: int, progress: bool) -> list[ShardResult]:
        """Write the shards `todo` of `jobs` in parallel (each job is built as a writer is ready
        for it); each finished shard is renamed into place and journaled by this process as soon
        as it arrives, so an interruption loses only the shards in flight."""
        if not todo:
            return []
        results = []
        bar = tqdm(total=len(source.samples), initial=done, unit="img", desc="convert", smoothing=0.05,
                   disable=not progress, file=sys.stderr)
        work = functools.partial(_write_shard, src_root=source.root, folder=folder,
                                 max_side=options.max_resolution, quality=options.jpeg_quality, fmt=options.format)
        with bar:
            pending = self._pool.imap_unordered(work, (jobs[index] for index in todo))
            while len(results) < len(todo):
                try:
                    result = pending.next(timeout=0.2)
                except multiprocessing.TimeoutError:
                    if _a_worker_died(self.pids):
                        raise DataError(f"a shard writer process died (killed, e.g. out of memory?); finished "
                                        f"shards are kept in {printable(folder)}: rerun to resume") from None
                else:
                    shards.commit_shard(folder, result, backend(options.format).writer.shard_files(result))
                    journal.append(journal_path, result.to_json())
                    results.append(result)
                bar.update(done + self.counter.value - bar.n)
        return results
