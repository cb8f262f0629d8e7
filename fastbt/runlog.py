"""The run's JSONL log: one JSON object per line, flushed as written, appended across resumes.

With `tensorboard_dir` set, every number of every record also goes to TensorBoard (the same
scalars, at the record's step), so `tensorboard --logdir RUN_DIR/tb` shows what log.jsonl holds.
"""

from __future__ import annotations

import json
import math
from numbers import Number
from pathlib import Path
from typing import Any

from fastbt.errors import ConfigError, RunDirError

NOT_SCALARS = ("step",)  # the x axis, not a curve


class RunLog:
    def __init__(self, path: Path | None, tensorboard_dir: Path | None = None):
        self.path = path  # None: this process does not log (every rank but 0)
        self.tensorboard = _summary_writer(tensorboard_dir) if path is not None and tensorboard_dir else None

    def write(self, record: dict[str, Any]) -> None:
        if self.path is None:
            return
        try:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as err:  # a full disk or a folder made read-only: one line, checkpoints kept
            raise RunDirError(f"cannot write {self.path}: {err.strerror or err}; the checkpoints are "
                              "intact: fix it and rerun to resume") from None
        if self.tensorboard is not None:
            for key, value in record.items():
                if key not in NOT_SCALARS and isinstance(value, Number) and not isinstance(value, bool):
                    self.tensorboard.add_scalar(key, value, global_step=record["step"])
            self.tensorboard.flush()

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.tensorboard = None


def require_tensorboard():
    """torch's SummaryWriter, or a ConfigError (checked before a run touches its directory)."""
    try:  # torch.utils.tensorboard needs the optional `tensorboard` package
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError("logging.tensorboard is true but the tensorboard package is not installed: "
                          "pip install 'fastbt[tensorboard]', or set logging.tensorboard=false") from None
    return SummaryWriter


def _summary_writer(log_dir: Path):
    return require_tensorboard()(log_dir=str(log_dir))


def read(path: Path) -> list[dict[str, Any]]:
    """Every record; a last line still being written (no newline yet, not valid JSON) is left out,
    so a running run's log can be read at any time."""
    text = Path(path).read_text()
    lines = text.splitlines()
    if lines and not text.endswith("\n"):
        try:
            json.loads(lines[-1])
        except json.JSONDecodeError:
            lines.pop()
    return [json.loads(line) for line in lines if line.strip()]


PLOTTED = ("loss", "lr", "pairs_per_s", "knn_top1", "knn_top5")  # what fastbt.plot draws


def read_valid(path: Path) -> tuple[list[dict[str, Any]], int]:
    """(records, number of malformed lines skipped): like `read`, but a line that is not a JSON
    object with a finite number as `step` and finite numbers in the drawn fields is skipped."""
    raw = Path(path).read_bytes()
    lines = raw.split(b"\n")
    torn_tail = lines.pop() if lines else b""  # a last line still being written: not counted
    records, skipped = [], 0
    for line in [*lines, torn_tail]:
        if not line.strip():
            continue
        record = _valid_record(line)
        if record is not None:
            records.append(record)
        elif line is not torn_tail:
            skipped += 1
    return records, skipped


def _valid_record(line: bytes) -> dict[str, Any] | None:
    try:
        record = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(record, dict):
        return None
    for key in ("step", *PLOTTED):
        if key in record and not _finite_number(record[key]) and (key == "step" or record[key] is not None):
            return None
    return record if "step" in record else None


def _finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
