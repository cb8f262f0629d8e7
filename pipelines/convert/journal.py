"""The unfinished conversion: OUT.partial and its journal, `OUT.partial/journal.jsonl`.

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


def open_partial(partial: Path, shard_dir: Path, plan: dict, writer: Writer, overwrite: bool,
                 log) -> dict[int, ShardResult]:
    """Start OUT.partial, or resume it: returns the finished shards that still verify, by index."""
    journal = partial / JOURNAL_NAME
    if partial.exists():
        if not journal.is_file() and any(partial.iterdir()):
            raise DataError(f"{partial}: exists and is not an unfinished fastbt conversion; remove it")
        old_plan, finished = read_journal(journal) if journal.is_file() else (plan, {})
        if old_plan == plan:
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
            if not journal.is_file():
                append(journal, {"plan": plan})
            return kept
        if not overwrite:
            changed = ", ".join(f"{k} {old_plan.get(k)!r} -> {v!r}"
                                for k, v in plan.items() if old_plan.get(k) != v)
            raise DataError(f"{partial}: an unfinished conversion with other settings ({changed}); "
                            "pass --overwrite to discard it")
        shutil.rmtree(partial)
    shard_dir.mkdir(parents=True)
    append(journal, {"plan": plan})
    return {}


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
        except ValueError:  # a line torn by a crash: that shard was not recorded
            continue
        if "plan" in record:
            plan = record["plan"]
        else:
            result = ShardResult.from_json(record)
            finished[result.index] = result  # a redone shard's later line wins
    return plan, finished


def check_shard(folder: Path, result: ShardResult, writer: Writer) -> str | None:
    """Cheap check that a finished shard and the files its format adds are still as written."""
    return shards.check_shard(folder, result) or writer.check_shard_files(folder, result)
