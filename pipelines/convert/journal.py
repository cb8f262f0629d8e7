"""The unfinished conversion: OUT.partial (held by the running conversion's lock) and its journal,
`OUT.partial/journal.jsonl`.

Its first line holds the plan (source, options); then a line per finished shard. After an
interruption the same command verifies the finished shards and keeps them (`open_partial`).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from pipelines.backends import Writer
from pipelines.convert import shards
from pipelines.convert.shards import ShardResult
from pipelines.convert.source import printable
from pipelines.errors import DataError

JOURNAL_NAME = "journal.jsonl"
LOCK_NAME = ".lock"  # in OUT.partial: one conversion at a time (pipelines.folder_lock)
SPOOL_NAME = "shards"  # a spooled format's shards wait here to be packed (FFCV)


def open_partial(partial: Path, shard_dir: Path, plan: dict, writer: Writer, overwrite: bool,
                 log) -> dict[int, ShardResult]:
    """Start OUT.partial (this run holds its lock), or resume it: returns the finished shards that
    still verify, by index."""
    journal = partial / JOURNAL_NAME
    old_plan, finished = read_journal(journal) if journal.is_file() else (None, {})
    if old_plan is None:  # nothing recorded: new, or cut short before its plan (e.g. a full disk)
        work = {LOCK_NAME, JOURNAL_NAME, SPOOL_NAME}
        if any(p.name not in work and not p.name.endswith(".tmp") for p in partial.iterdir()):
            raise DataError(f"{partial}: exists and is not an unfinished fastbt conversion; remove it")
        _discard_work(partial)
    elif old_plan != plan:
        if not overwrite:
            changed = ", ".join(f"{k} {old_plan.get(k)!r} -> {v!r}"
                                for k, v in plan.items() if old_plan.get(k) != v)
            raise DataError(f"{partial}: an unfinished conversion with other settings ({changed}); "
                            "pass --overwrite to discard it")
        _discard_work(partial)
    else:
        for leftover in partial.rglob("*.tmp"):  # half-written by the interrupted run
            leftover.unlink()
        kept = {}
        for index, result in finished.items():
            problem = check_shard(shard_dir, result, writer)
            if problem:
                log(f"resume: redoing shard {index}: {printable(problem)}")
            else:
                kept[index] = result
        log(f"resume: {len(kept)} finished shard(s) in {printable(partial)} verified and kept")
        shard_dir.mkdir(exist_ok=True)
        return kept
    shard_dir.mkdir(exist_ok=True)
    append(journal, {"plan": plan})
    return {}


def _discard_work(partial: Path) -> None:
    """Empty OUT.partial of an earlier conversion's work; the lock this run holds stays."""
    for path in partial.iterdir():
        if path.name == LOCK_NAME:
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def append(journal: Path, record: dict) -> None:
    """One line, flushed to the disk before the shard it records counts as finished."""
    with open(journal, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_journal(journal: Path) -> tuple[dict, dict[int, ShardResult]]:
    plan, finished = None, {}
    for line in journal.read_text().splitlines():
        try:
            record = json.loads(line)
            if "plan" in record:
                plan = record["plan"]
                continue
            result = ShardResult.from_json(record)
        except (ValueError, KeyError, TypeError):  # a line torn by a crash (or not ours): not recorded
            continue
        finished[result.index] = result  # a redone shard's later line wins
    return plan, finished


def check_shard(folder: Path, result: ShardResult, writer: Writer) -> str | None:
    """Cheap check that a finished shard and the files its format adds are still as written."""
    return shards.check_shard(folder, result) or writer.check_shard_files(folder, result)
