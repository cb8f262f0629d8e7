"""The run's JSONL log: one JSON object per line, flushed as written, appended across resumes.

With `tensorboard_dir` set, every number of every record also goes to TensorBoard (the same
scalars, at the record's step), so `tensorboard --logdir RUN_DIR/tb` shows what log.jsonl holds.
"""

from __future__ import annotations

import json
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
