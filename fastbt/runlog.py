"""The run's JSONL log: one JSON object per line, flushed as written, appended across resumes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class RunLog:
    def __init__(self, path: Path | None):
        self.path = path  # None: this process does not log (every rank but 0)

    def write(self, record: dict[str, Any]) -> None:
        if self.path is None:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


def read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
