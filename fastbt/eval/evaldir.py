"""The directory of a trained evaluation (`eval linear`, `eval finetune`): claimed, resumed, logged.

Such a directory holds MARKER (written first: what makes it ours, with the setup it was made
for), log.jsonl (one record per epoch) and a checkpoint after every epoch (atomic, the two newest
kept); nothing else. The same command run again resumes from the newest checkpoint; other
settings, or files we did not write, are refused before anything is touched.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable

from fastbt.errors import ConfigError
from fastbt.runlog import RunLog
from fastbt.train import checkpoint
from pipelines.convert.source import printable

MARKER = "probe.json"
OUR_FILES = re.compile(r"\.?(probe\.json|log\.jsonl|ckpt_\d{9}\.pt)(\.tmp)?")


def check_same_setup(saved: dict, setup: dict, out_dir: Path, what: str) -> None:
    for key in setup:
        if saved.get(key) != setup[key]:
            raise ConfigError(f"{out_dir} holds a {what} with other settings ({key}: "
                              f"{saved.get(key)!r} there, {setup[key]!r} now); rerun with the same "
                              "settings to resume, or choose another output directory")


def refuse_empty_epochs(images: int, batch_size: int, key: str, source: str, processes: int = 1) -> None:
    """Augmented epochs drop their last partial batch (per process): fewer images than a batch would
    train on none, and report the untrained model's accuracy."""
    if images // processes < batch_size // processes:
        raise ConfigError(f"{key} {batch_size} is more than the {images} images of {source}: every "
                          f"epoch would train on none (a partial batch is dropped); set "
                          f"{key}={images // processes * processes} or less")


def result_path(out_dir: Path) -> Path:
    """<out_dir>.json: beside the weights by default; two runs with their own --out keep their own."""
    return out_dir.with_name(out_dir.name + ".json")


def check_out_dir(out_dir: Path, setup: dict, what: str) -> bool:
    """True if `out_dir` is new or empty; False if it is a `what` with the same setup (to resume).
    Anything else is refused (ConfigError); nothing is written."""
    found = sorted(p.name for p in out_dir.iterdir()) if out_dir.is_dir() else []
    if not found:
        if result_path(out_dir).exists():  # a new directory's result would replace a file of yours
            raise ConfigError(f"{printable(result_path(out_dir))} exists, and no {what} in "
                              f"{printable(out_dir)} wrote it; move it or choose another --out")
        return True
    foreign = [name for name in found if not OUR_FILES.fullmatch(name)]
    if MARKER not in found or foreign:
        shown = ", ".join(printable(name) for name in (foreign or found)[:3])
        raise ConfigError(f"{printable(out_dir)} holds files no {what} wrote ({shown}"
                          f"{' ...' if len(foreign or found) > 3 else ''}); choose another --out")
    try:
        saved = json.loads((out_dir / MARKER).read_text())["setup"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"{out_dir / MARKER} is damaged ({type(err).__name__}); choose another --out") from None
    check_same_setup(saved, setup, out_dir, what)
    return False


def write_marker(out_dir: Path, setup: dict) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint.atomic_write(out_dir / MARKER, lambda f: f.write(json.dumps({"setup": setup}).encode()))


def claim_out_dir(out_dir: Path, setup: dict, what: str) -> None:
    """Make `out_dir` this evaluation's (a new or empty folder gets MARKER), or check that it is one
    with the same setup (to resume it). Anything else is refused before a file is touched."""
    if check_out_dir(out_dir, setup, what):
        write_marker(out_dir, setup)


def load_saved(out_dir: Path, setup: dict, what: str, device) -> dict | None:
    """The newest checkpoint of `out_dir` (None: start), checked to have been made with `setup`."""
    saved = checkpoint.load_latest(out_dir, map_location=device)
    if saved is not None:
        check_same_setup(saved.get("setup", {}), setup, out_dir, what)
    return saved


def run_epochs(epochs: int, states: dict, one_epoch: Callable[[int], dict], saved: dict | None,
               out_dir: Path, setup: dict, what: str, writes: bool = True) -> list[dict]:
    """Epochs `saved['epoch']`.. of `epochs` (0.. without `saved`): `one_epoch(epoch)` returns its
    record (train_loss, top1, top5, ...); after each, a checkpoint of `states` (name -> an object
    with state_dict/load_state_dict, restored from `saved`), a log record and a line on stdout,
    written where `writes` (one process of several). Returns every epoch's record."""
    epoch, history = 0, []
    if saved is not None:
        for name, state in states.items():
            state.load_state_dict(saved[name])
        epoch, history = saved["epoch"], saved["history"]
        if writes:
            print(f"{what}: resumed from {saved['path']} (epoch {epoch} of {epochs})", flush=True)
    log = _rewritten_log(out_dir, history) if writes else None
    while epoch < epochs:
        record = {"epoch": epoch + 1, **one_epoch(epoch)}
        epoch += 1
        history.append(record)
        if writes:
            checkpoint.save(out_dir, epoch, {**{name: s.state_dict() for name, s in states.items()},
                                             "epoch": epoch, "history": history, "setup": setup})
            log.write(record)
            print(f"{what}: epoch {epoch}/{epochs}  loss {record['train_loss']:.3f}  "
                  f"top-1 {record['top1']:.2f}%  top-5 {record['top5']:.2f}%", flush=True)
    return history


def _rewritten_log(out_dir: Path, history: list[dict]) -> RunLog:
    """The log is the checkpoint's history, then each new epoch (a torn or later line is dropped)."""
    log_path = out_dir / "log.jsonl"
    log_path.unlink(missing_ok=True)
    log = RunLog(log_path)
    for record in history:
        log.write(record)
    return log
