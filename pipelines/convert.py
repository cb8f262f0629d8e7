"""`convert`: an ImageNet-layout folder -> a DALI (webdataset shards) or FFCV (.beton) dataset.

    source.scan -> shard jobs (a seeded shuffle) -> W processes write shards (shards.write_shard;
    dali: + each shard's index) -> journal -> [ffcv: pack the shards into a .beton] -> manifest.json
    -> rename OUT.partial to OUT

The dataset is built in `OUT.partial/` and renamed to OUT only when complete, so OUT is either
absent or finished. `OUT.partial/journal.jsonl` holds the plan (source, options) and a line per
finished shard: after an interruption the same command verifies and keeps those shards and writes
the rest. An existing OUT is replaced only with `overwrite`, and only if it is a fastbt dataset.
For FFCV the shards are an intermediate (in `OUT.partial/shards/`), deleted once packed.
"""

from __future__ import annotations

import functools
import hashlib
import json
import multiprocessing
import os
import shutil
import signal
import sys
import time
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from pipelines import dali_data, ffcv_data, manifest, shards
from pipelines.shards import ShardJob, ShardResult
from pipelines.errors import DataError
from pipelines.options import Options
from pipelines.source import Source, scan

JOURNAL_NAME = "journal.jsonl"
SPOOL_NAME = "shards"  # FFCV only: where the shards wait to be packed
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
    src, out = Path(src).resolve(), Path(out).resolve()
    partial = out.with_name(out.name + ".partial")
    _check_destination(src, out, overwrite)
    if workers is not None and workers < 1:
        raise DataError(f"workers {workers}: expected 1 or more")
    workers = workers or len(os.sched_getaffinity(0))
    start = time.perf_counter()

    source = scan(src, options.limit)
    plan = {"source": str(src), **options.plan(), "fingerprint": _fingerprint(source)}
    shard_dir = partial / SPOOL_NAME if options.format == "ffcv" else partial
    kept = _open_partial(partial, shard_dir, plan, options.format, overwrite, log)
    jobs = shards.shard_jobs(source.samples, options.shard_size, options.seed)
    todo = [job for job in jobs if job.index not in kept]
    n_todo = sum(len(job.items) for job in todo)
    results = list(kept.values()) + _write_shards(
        todo, source, shard_dir, options, workers, partial / JOURNAL_NAME,
        done=len(source.samples) - n_todo, progress=progress)
    results.sort(key=lambda r: r.index)
    _check_unreadable(source, results, options.max_unreadable, partial)

    if options.format == "ffcv":
        tars = [shard_dir / r.tar for r in results if r.samples]
        beton = partial / ffcv_data.BETON_NAME
        n = ffcv_data.write_beton(beton, tars, workers)
        files = [manifest.DataFile(beton.name, beton.stat().st_size, n)]
    else:
        files = [manifest.DataFile(r.tar, r.bytes, r.samples, dali_data.index_name(r))
                 for r in results if r.samples]
    manifest.write(partial, _manifest(source, options, results, files))
    _move_into_place(partial, out)

    m = manifest.read(out)
    empty = [name for name, n in m.images_per_class.items() if n == 0]
    if empty:
        log(f"note: {len(empty)} class folder(s) without a readable image keep their label: "
            f"{', '.join(empty[:5])}")
    seconds = time.perf_counter() - start
    what = f"{len(m.files)} shards" if options.format == "dali" else m.files[0].path
    log(f"converted {m.num_images} of {len(source.samples)} image files ({m.count('unreadable')} unreadable, "
        f"{m.count('ignored')} other files ignored) in {seconds:.1f} s ({n_todo / seconds:.0f} files/s"
        f"{', resumed' if kept else ''}) -> {out}: {what}, {sum(f.bytes for f in m.files) / 1e6:.1f} MB")
    return m


def _check_destination(src: Path, out: Path, overwrite: bool) -> None:
    if out == src or src in out.parents:
        raise DataError(f"{out}: inside the source folder {src}; it would be read as a class")
    if not out.exists():
        return
    if not overwrite:
        raise DataError(f"{out}: already exists; pass --overwrite to replace it")
    if not (out.is_dir() and ((out / manifest.MANIFEST_NAME).is_file() or not any(out.iterdir()))):
        raise DataError(f"{out}: exists and is not a fastbt dataset; refusing to replace it")


def _fingerprint(source: Source) -> str:
    """Identifies the list of samples, so a resumed run cannot mix two different sources."""
    h = hashlib.sha256("\n".join(source.classes).encode())
    for s in source.samples:
        h.update(f"\n{s.label}\t{s.path}".encode())
    return h.hexdigest()[:16]


# ---- the unfinished conversion: OUT.partial and its journal ----------------------------------

def _open_partial(partial: Path, shard_dir: Path, plan: dict, fmt: str, overwrite: bool,
                  log) -> dict[int, ShardResult]:
    """Start OUT.partial, or resume it: returns the finished shards that still verify, by index."""
    journal = partial / JOURNAL_NAME
    if partial.exists():
        if not journal.is_file() and any(partial.iterdir()):
            raise DataError(f"{partial}: exists and is not an unfinished fastbt conversion; remove it")
        old_plan, finished = _read_journal(journal) if journal.is_file() else (plan, {})
        if old_plan == plan:
            for leftover in partial.rglob("*.tmp"):  # half-written by the interrupted run
                leftover.unlink()
            kept = {}
            for index, result in finished.items():
                problem = _check_shard(shard_dir, result, fmt)
                if problem:
                    log(f"resume: redoing shard {index}: {problem}")
                else:
                    kept[index] = result
            log(f"resume: {len(kept)} finished shard(s) in {partial} verified and kept")
            shard_dir.mkdir(exist_ok=True)
            if not journal.is_file():
                _append(journal, {"plan": plan})
            return kept
        if not overwrite:
            changed = ", ".join(f"{k} {old_plan.get(k)!r} -> {v!r}"
                                for k, v in plan.items() if old_plan.get(k) != v)
            raise DataError(f"{partial}: an unfinished conversion with other settings ({changed}); "
                            "pass --overwrite to discard it")
        shutil.rmtree(partial)
    shard_dir.mkdir(parents=True)
    _append(journal, {"plan": plan})
    return {}


def _append(journal: Path, record: dict) -> None:
    with open(journal, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _read_journal(journal: Path) -> tuple[dict, dict[int, ShardResult]]:
    plan, finished = None, {}
    for line in journal.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:  # a line torn by a crash: that shard was not recorded
            continue
        if "plan" in record:
            plan = record["plan"]
        else:
            result = ShardResult.from_json(record)
            finished[result.index] = result  # a redone shard's later line wins
    return plan, finished


# ---- writing shards in W processes -----------------------------------------------------------

_files_done = None  # in each worker: a shared counter of files processed, for the progress bar


def _init_worker(counter) -> None:
    global _files_done
    _files_done = counter
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is handled by the main process alone


def _count_file() -> None:
    with _files_done.get_lock():
        _files_done.value += 1


# What a format adds to each shard: DALI an index (written by the worker, renamed before the tar,
# checked on resume); FFCV nothing (its shards are packed into the .beton, then deleted).

def _write_shard(job: ShardJob, src_root: Path, folder: Path, max_side: int, quality: int,
                 fmt: str) -> ShardResult:
    result = shards.write_shard(job, src_root, folder, max_side, quality, on_file=_count_file)
    if fmt == "dali" and result.samples:
        dali_data.write_index(folder, result)
    return result


def _companions(result: ShardResult, fmt: str) -> list[str]:
    return [dali_data.index_name(result)] if fmt == "dali" else []


def _check_shard(folder: Path, result: ShardResult, fmt: str) -> str | None:
    problem = shards.check_shard(folder, result)
    return problem or (dali_data.check_index(folder, result) if fmt == "dali" else None)


def _write_shards(jobs: list[ShardJob], source: Source, folder: Path, options: Options, workers: int,
                  journal: Path, done: int, progress: bool) -> list[ShardResult]:
    """Write the jobs' shards in parallel; each finished shard is renamed into place and journaled
    by this process as soon as it arrives, so an interruption loses only the shards in flight."""
    if not jobs:
        return []
    results = []
    counter = multiprocessing.Value("q", 0)
    bar = tqdm(total=len(source.samples), initial=done, unit="img", desc="convert", smoothing=0.05,
               disable=not progress, file=sys.stderr)
    work = functools.partial(_write_shard, src_root=source.root, folder=folder,
                             max_side=options.max_resolution, quality=options.jpeg_quality, fmt=options.format)
    with bar, multiprocessing.Pool(min(workers, len(jobs)), _init_worker, (counter,)) as pool:
        pending = pool.imap_unordered(work, jobs)
        while len(results) < len(jobs):
            try:
                result = pending.next(timeout=0.2)
            except multiprocessing.TimeoutError:
                pass
            else:
                shards.commit_shard(folder, result, _companions(result, options.format))
                _append(journal, result.to_json())
                results.append(result)
            bar.update(done + counter.value - bar.n)
    return results


# ---- finishing -------------------------------------------------------------------------------

def _check_unreadable(source: Source, results: list[ShardResult], max_fraction: float, partial: Path) -> None:
    unreadable = [(path, why) for r in results for path, why in r.skipped]
    tried, readable = len(source.samples), sum(r.samples for r in results)
    if not tried:
        raise DataError(f"{source.root}: no image files in its class folders")
    if readable and len(unreadable) <= max_fraction * tried:
        return
    listing = partial / UNREADABLE_LIST
    listing.write_text("".join(f"{path}\t{why}\n" for path, why in unreadable))
    for path, why in unreadable[:SHOW_UNREADABLE]:
        print(f"unreadable: {source.root / path}: {why}", file=sys.stderr)
    if len(unreadable) > SHOW_UNREADABLE:
        print(f"... and {len(unreadable) - SHOW_UNREADABLE} more", file=sys.stderr)
    if not readable:
        raise DataError(f"{source.root}: none of its {tried} image files could be read (list: {listing})")
    raise DataError(f"{len(unreadable)} of {tried} image files are unreadable "
                    f"({len(unreadable) / tried:.1%}, more than --max-unreadable {max_fraction:g}); "
                    f"list: {listing}; finished shards are kept: re-run with a higher --max-unreadable "
                    "to accept them")


def _manifest(source: Source, options: Options, results: list[ShardResult],
              files: list[manifest.DataFile]) -> manifest.Manifest:
    counts = Counter()
    for r in results:
        counts.update(r.label_counts)
    skipped = ([{"path": s.path, "reason": s.reason, "kind": s.kind} for s in source.ignored]
               + [{"path": path, "reason": why, "kind": "unreadable"}
                  for r in results for path, why in r.skipped])
    return manifest.Manifest(
        format=options.format, options=options.recorded(),
        classes=source.class_to_idx, images_per_class={c: counts[i] for i, c in enumerate(source.classes)},
        num_images=sum(counts.values()), files=tuple(files), skipped=tuple(skipped),
        source=str(source.root), fastbt_version=manifest.fastbt_version(), created=manifest.now())


def _move_into_place(partial: Path, out: Path) -> None:
    """Rename the finished OUT.partial to OUT (replacing an old OUT), then drop the work files."""
    if out.exists():
        old = out.with_name(out.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.rename(out, old)
        os.rename(partial, out)
        shutil.rmtree(old)
    else:
        os.rename(partial, out)
    (out / JOURNAL_NAME).unlink()
    (out / UNREADABLE_LIST).unlink(missing_ok=True)
    shutil.rmtree(out / SPOOL_NAME, ignore_errors=True)
