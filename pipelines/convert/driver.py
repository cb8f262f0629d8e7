"""`convert`: an ImageNet-layout folder -> a DALI (webdataset shards) or FFCV (.beton) dataset.

    source.scan -> shard jobs (a seeded shuffle) -> W processes write shards (shards.write_shard;
    dali: + each shard's index) -> journal -> [ffcv: pack the shards into a .beton] -> manifest.json
    -> rename OUT.partial to OUT

The dataset is built in `OUT.partial/` and renamed to OUT only when complete, so OUT is either
absent or finished. `OUT.partial/journal.jsonl` holds the plan (source, options) and a line per
finished shard: after an interruption (or a full disk, reported in one line) the same command
verifies and keeps those shards and writes the rest. For FFCV the shards are an intermediate
(in `OUT.partial/shards/`), deleted once packed.

What is never deleted: an existing OUT is replaced only with `overwrite`, only if it holds a fastbt
manifest and nothing but the files it lists (checked again just before the swap), and never when
SRC and OUT (or OUT.partial) contain one another; the old OUT is moved into a folder this run
creates with a unique name, and only that folder is removed.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Iterator

from pipelines import folder_lock
from pipelines.backends import Writer, backend
from pipelines.convert import journal, manifest, pool, shards
from pipelines.convert.journal import JOURNAL_NAME, LOCK_NAME, SPOOL_NAME
from pipelines.convert.options import Options
from pipelines.convert.shards import ShardResult
from pipelines.convert.source import Source, printable, scan
from pipelines.errors import DISK_FULL, DataError, NoSpace

UNREADABLE_LIST = "unreadable.txt"  # written into OUT.partial when too many files are unreadable
SHOW_UNREADABLE = 20  # how many unreadable files a failing run prints (all go to the list)


def convert(src: str | os.PathLike, out: str | os.PathLike, options: Options, *,
            workers: int | None = None, overwrite: bool = False, progress: bool = True,
            log=print) -> manifest.Manifest:
    """Convert the folder `src` into the dataset folder `out` and return its manifest.

    Raises DataError for bad input; finished shards then stay in OUT.partial for the next run.
    `log` receives the notices and the one-line summary; the progress bar goes to stderr.
    """
    options.check()
    src, out = Path(src).resolve(), Path(out).resolve()  # symlinks resolved: containment is real
    partial = out.with_name(out.name + ".partial")
    _check_destination(src, out, partial, overwrite)
    if workers is not None and workers < 1:
        raise DataError(f"workers {workers}: expected 1 or more")
    workers = workers or len(os.sched_getaffinity(0))
    with _locked(out, partial):
        return _convert(src, out, partial, options, workers, overwrite, progress, log)


def _convert(src: Path, out: Path, partial: Path, options: Options, workers: int, overwrite: bool,
             progress: bool, log) -> manifest.Manifest:
    start = time.perf_counter()
    writer = backend(options.format).writer
    shard_dir = partial / SPOOL_NAME if writer.spooled else partial
    with pool.ShardWriters(workers) as writers:  # forked before the scan: see ShardWriters
        source = scan(src, options.limit)
        try:
            kept, n_todo = _build(source, partial, shard_dir, options, writer, writers, overwrite, progress, log)
        except OSError as err:
            if err.errno not in DISK_FULL:
                raise
            writers.close()  # first: a writer still running would start another shard meanwhile
            for leftover in shard_dir.glob("*.tmp"):  # shards cut short: free their space now
                leftover.unlink(missing_ok=True)
            raise NoSpace(err.filename or partial, _space_missing(source, writer, partial),
                          os.strerror(err.errno)) from None
    _check_destination(src, out, partial, overwrite)  # again: OUT may have changed meanwhile
    _move_into_place(partial, out)

    m = manifest.read(out)
    empty = [name for name, n in m.images_per_class.items() if n == 0]
    if empty:
        log(f"note: {len(empty)} class folder(s) without a readable image keep their label: "
            f"{', '.join(empty[:5])}")
    seconds = time.perf_counter() - start
    what = m.files[0].path if len(m.files) == 1 and not m.files[0].index else f"{len(m.files)} shards"
    log(f"converted {m.num_images} of {len(source.samples)} image files ({m.count('unreadable')} unreadable, "
        f"{m.count('ignored')} other files ignored) in {seconds:.1f} s ({n_todo / seconds:.0f} files/s"
        f"{', resumed' if kept else ''}) -> {printable(out)}: {what}, {sum(f.bytes for f in m.files) / 1e6:.1f} MB")
    return m


def _build(source: Source, partial: Path, shard_dir: Path, options: Options, writer: Writer,
           writers: pool.ShardWriters, overwrite: bool, progress: bool, log) -> tuple[dict, int]:
    """Write the whole dataset into `partial`: returns the shards resumed and the files read."""
    plan = {"source": str(source.root), **options.plan(), "fingerprint": _fingerprint(source)}
    kept = journal.open_partial(partial, shard_dir, plan, writer, overwrite, log)
    jobs = shards.shard_jobs(source.samples, options.shard_size, options.seed)
    todo = [index for index in range(len(jobs)) if index not in kept]
    n_todo = sum(jobs.size(index) for index in todo)
    results = list(kept.values()) + writers.write(
        jobs, todo, source, shard_dir, options, partial / JOURNAL_NAME,
        done=len(source.samples) - n_todo, progress=progress)
    writers.close()
    results.sort(key=lambda r: r.index)
    _check_unreadable(source, results, options.max_unreadable, partial)

    files = writer.pack(partial, shard_dir, results, writers.workers, progress)  # the format's data files
    manifest.write(partial, _manifest(source, options, results, files))
    return kept, n_todo


def _check_destination(src: Path, out: Path, partial: Path, overwrite: bool) -> None:
    """Refuse any destination whose writing or replacing could delete what is not ours."""
    for path in (out, partial):
        if path == src or src in path.parents:
            raise DataError(f"{path}: inside the source folder {src}; it would be read as a class")
        if path in src.parents:
            raise DataError(f"{src}: the source is inside {path}, which the conversion writes or replaces")
    if not out.exists():
        return
    if not overwrite:
        raise DataError(f"{out}: already exists; pass --overwrite to replace it")
    if not out.is_dir():
        raise DataError(f"{out}: exists and is not a fastbt dataset (not a folder); refusing to replace it")
    why = manifest.why_not_replaceable(out) if any(out.iterdir()) else None
    if why:
        raise DataError(f"{out}: exists and is not a fastbt dataset; refusing to replace it ({why})")


@contextlib.contextmanager
def _locked(out: Path, partial: Path) -> Iterator[None]:
    """Hold OUT.partial's lock for the whole conversion: a second conversion into the same OUT is
    refused in one line, touching nothing (it would take the first's work for its own to resume)."""
    created = not partial.exists()
    try:
        handle = folder_lock.hold(partial, LOCK_NAME)
    except folder_lock.FolderBusy as busy:
        raise DataError(f"{printable(out)}: another fastbt convert is writing it ({busy.holder}); wait for "
                        "it to end, or choose another OUT") from None
    except OSError as err:
        raise DataError(f"cannot create {printable(partial)}: {err.strerror or err}") from None
    try:
        # the file locked may be one its holder removed just before (finished, or nothing written)
        if os.fstat(handle.fileno()).st_ino != os.stat(partial / LOCK_NAME).st_ino:
            raise DataError(f"{printable(out)}: another fastbt convert just finished or gave up writing "
                            "it; run the command again")
        yield
    finally:
        if created and partial.is_dir() and [p.name for p in partial.iterdir()] == [LOCK_NAME]:
            (partial / LOCK_NAME).unlink()  # nothing was written: leave no empty OUT.partial behind
            partial.rmdir()
        handle.close()


def _fingerprint(source: Source) -> str:
    """Identifies the list of samples, so a resumed run cannot mix two different sources."""
    h = hashlib.sha256(os.fsencode("\n".join(source.classes)))  # names as bytes: any encoding
    for s in source.samples:
        h.update(os.fsencode(f"\n{s.label}\t{s.path}"))
    return h.hexdigest()[:16]


def _space_missing(source: Source, writer: Writer, partial: Path) -> int:
    """About how many bytes the unfinished work needs beyond the free space (for a full disk's
    message): the shards still to write at the size per file of those written (or of the source
    files, before any), plus for a spooled format (FFCV) what it packs, a copy of every shard."""
    journal_path = partial / JOURNAL_NAME
    finished = journal.read_journal(journal_path)[1].values() if journal_path.is_file() else ()
    written = sum(r.bytes for r in finished)
    tried = sum(r.samples + len(r.skipped) for r in finished)
    if tried:
        per_file = written / tried
    else:
        some = source.samples[:: max(1, len(source.samples) // 100)]
        per_file = sum(_size(source.root / s.path) for s in some) / max(1, len(some))
    needed = (len(source.samples) - tried) * per_file
    if writer.spooled:
        needed += written + needed
    return int(needed - shutil.disk_usage(partial if partial.exists() else partial.parent).free)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


# ---- finishing -------------------------------------------------------------------------------

def _check_unreadable(source: Source, results: list[ShardResult], max_fraction: float, partial: Path) -> None:
    unreadable = _unreadable(source, results)
    tried, readable = len(source.samples) + len(source.unreadable), sum(r.samples for r in results)
    if not tried:
        raise DataError(f"{source.root}: no image files in its class folders")
    if readable and len(unreadable) <= max_fraction * tried:
        return
    listing = partial / UNREADABLE_LIST
    listing.write_text("".join(f"{path}\t{why}\n" for path, why in unreadable))
    for path, why in unreadable[:SHOW_UNREADABLE]:
        print(f"unreadable: {printable(source.root)}/{path}: {why}", file=sys.stderr)
    if len(unreadable) > SHOW_UNREADABLE:
        print(f"... and {len(unreadable) - SHOW_UNREADABLE} more", file=sys.stderr)
    if not readable:
        raise DataError(f"{source.root}: none of its {tried} image files could be read (list: {listing})")
    raise DataError(f"{len(unreadable)} of {tried} image files are unreadable "
                    f"({len(unreadable) / tried:.1%}, more than --max-unreadable {max_fraction:g}); "
                    f"list: {listing}; finished shards are kept: re-run with a higher --max-unreadable "
                    "to accept them")


def _unreadable(source: Source, results: list[ShardResult]) -> list[tuple[str, str]]:
    """(printable path, reason) of the folders that could not be listed and the files that could
    not be read."""
    found = [(s.path, s.reason) for s in source.unreadable] + [x for r in results for x in r.skipped]
    return [(printable(path), printable(why)) for path, why in found]


def _manifest(source: Source, options: Options, results: list[ShardResult],
              files: list[manifest.DataFile]) -> manifest.Manifest:
    counts = Counter()
    for r in results:
        counts.update(r.label_counts)
    skipped = ([{"path": printable(s.path), "reason": printable(s.reason), "kind": s.kind}
                for s in source.ignored]
               + [{"path": path, "reason": why, "kind": "unreadable"} for path, why in _unreadable(source, results)])
    return manifest.Manifest(
        format=options.format, options=options.recorded(),
        classes=source.class_to_idx, images_per_class={c: counts[i] for c, i in source.class_to_idx.items()},
        num_images=sum(counts.values()), files=tuple(files), skipped=tuple(skipped),
        source=printable(source.root), fastbt_version=manifest.fastbt_version(), created=manifest.now())


def _move_into_place(partial: Path, out: Path) -> None:
    """Rename the finished OUT.partial to OUT, then drop the work files. An old OUT (checked to be
    a fastbt dataset) is first moved into a folder with a unique name made by this run, so the
    only thing removed afterwards is that folder: never a name a user may have chosen."""
    if out.exists():
        replaced = Path(tempfile.mkdtemp(prefix=f".{out.name}.replaced-", dir=out.parent))
        os.rename(out, replaced / out.name)
        os.rename(partial, out)
        shutil.rmtree(replaced)
    else:
        os.rename(partial, out)
    (out / JOURNAL_NAME).unlink()
    (out / LOCK_NAME).unlink(missing_ok=True)  # still held by this run: no other can take it meanwhile
    (out / UNREADABLE_LIST).unlink(missing_ok=True)
    shutil.rmtree(out / SPOOL_NAME, ignore_errors=True)
