"""What a pretraining run may do with its directory (`train.out_dir`), decided before it trains.

- `exclusive(run_dir, world)`: one run per directory. Rank 0 holds an flock on RUN_DIR/.lock for
  the whole run (the OS drops it when the process dies: no stale locks); a second run is refused,
  naming the holder, and a refusal on rank 0 is a refusal on every rank.
- `prepare(run_dir, cfg, world)`: where the run starts. The newest readable checkpoint is resumed
  only if the config it was made with matches the resolved one, except for the keys in
  SAFE_TO_CHANGE; `train.resume=force` accepts other differences, `train.resume=restart` sets the
  previous run's files aside and starts at step 0. If checkpoints exist but none can be read, the run
  stops instead of silently starting over. Only when the run may go on does the directory change:
  log.jsonl loses the records past the resumed step (they are about to be logged again) and
  config.yaml is written.
- `refuse_run_dir(path, what)`: for other commands that write a folder (`eval linear --out`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

import torch.distributed as torch_dist

from fastbt import checkpoint, config, dist
from fastbt.config import Config
from fastbt.errors import RunDirError
from pipelines import folder_lock

LOCK = ".lock"
LOG = "log.jsonl"
CONFIG = "config.yaml"
# Written (with the lock) into every directory a run uses: what makes a folder a run directory.
MARKER = ".fastbt-run"
# Temporary files of our own naming (checkpoint.atomic_write, plot) that a kill -9 can leave behind.
STALE_TEMP = re.compile(r"^\.(ckpt_\d+\.pt|log\.jsonl|config\.yaml|backbone\.pth)\.tmp$"
                        r"|^\.curves\.png\.tmp\.png$|^config\.yaml\.tmp$")
# What train.resume=restart moves aside (into RUN_DIR/previous-<time>/): the previous run's outputs.
RUN_FILES = ("ckpt_*.pt", LOG, CONFIG, "backbone.pth")

# Keys that may differ from the checkpoint's config without train.resume=force: where and how the
# run executes and what it reports or measures, never what it computes (a prefix ending in "."
# covers a whole section).
SAFE_TO_CHANGE = ("train.out_dir", "train.resume", "train.checkpoint_every_steps",
                  "train.checkpoint_every_minutes", "data.workers", "runtime.device",
                  "runtime.compile", "runtime.compile_mode", "runtime.channels_last",
                  "logging.", "profile.", "eval.")
# Keys no resume can change, forced or not: the checkpoint's weights would not fit the model.
SHAPE_KEYS = ("model.",)


class _Absent:
    def __repr__(self) -> str:
        return "(absent)"


_ABSENT = _Absent()  # the value of a key one of two configs does not have


# --------------------------------------------------------------------------------------------
# One decision, every rank.


def _agreed(world: dist.World, decide: Callable[[], Any]) -> Any:
    """Run `decide()` on rank 0; every rank returns its result or raises its error (none hangs)."""
    result, error = None, None
    if world.is_main:
        try:
            result = decide()
        except Exception as err:
            error = err
    if world.distributed:
        box = [(result, None if error is None else str(error))]
        torch_dist.broadcast_object_list(box, src=0)
        result, message = box[0]
        if error is None and message is not None:
            error = RunDirError(message)
            error.same_on_every_rank = True  # rank 0 prints it (fastbt.cli)
    if error is not None:
        raise error
    return result


# --------------------------------------------------------------------------------------------
# The lock.


@contextlib.contextmanager
def exclusive(run_dir: Path, world: dist.World) -> Iterator[None]:
    """Hold RUN_DIR/.lock (rank 0) while the body runs; refuse on every rank if another run has it."""
    held = []
    _agreed(world, lambda: held.append(_lock(Path(run_dir))))
    try:
        yield
    finally:
        for handle in held:
            handle.close()  # closing releases the flock


def made_by_fastbt(run_dir: Path) -> bool:
    """A run directory: it holds our marker, or (made before the marker) the lock file together
    with a checkpoint or config.yaml."""
    run_dir = Path(run_dir)
    if (run_dir / MARKER).exists():
        return True
    return (run_dir / LOCK).exists() and bool((run_dir / CONFIG).exists() or checkpoint.checkpoints(run_dir))


def refuse_foreign(run_dir: Path) -> None:
    """Refuse a folder that holds files but was not made by a run: a run would replace them."""
    try:
        names = sorted(p.name for p in run_dir.iterdir()) if run_dir.is_dir() else []
    except OSError as err:
        raise RunDirError(f"cannot use {run_dir} as the run directory: {err.strerror or err}") from None
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"train.out_dir {run_dir} is a file, not a directory: choose another train.out_dir")
    if [n for n in names if n != LOCK] and not made_by_fastbt(run_dir):
        shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
        raise RunDirError(f"train.out_dir {run_dir} holds files no fastbt run wrote ({shown}); a run "
                          "would replace them: choose another train.out_dir (an empty or new folder)")


def _lock(run_dir: Path):
    refuse_foreign(run_dir)
    try:
        handle = folder_lock.hold(run_dir, LOCK)
    except folder_lock.FolderBusy as busy:
        raise RunDirError(f"{run_dir} is in use by another fastbt run ({busy.holder}); wait for it to end, "
                          "or choose another train.out_dir") from None
    except folder_lock.LockNotWritten as err:
        raise RunDirError(f"cannot write {err.path}: {err.strerror}"
                          f"{_FREE_SPACE if checkpoint.disk_full(err) else ''}") from None
    except OSError as err:
        raise RunDirError(f"cannot use {run_dir} as the run directory: {err.strerror or err}") from None
    try:
        (run_dir / MARKER).touch()
    except OSError as err:  # a full disk or a read-only folder: one line, nothing else touched
        handle.close()
        raise RunDirError(f"cannot write {run_dir / MARKER}: {err.strerror or err}"
                          f"{_FREE_SPACE if checkpoint.disk_full(err) else ''}") from None
    return handle


_FREE_SPACE = " (free some space and rerun to resume)"


# --------------------------------------------------------------------------------------------
# Where the run starts.


def prepare(run_dir: Path, cfg: Config, world: dist.World) -> str | None:
    """The checkpoint every rank resumes from, or None for step 0 (decided on rank 0, see above)."""
    return _agreed(world, lambda: _prepare(Path(run_dir), cfg))


def _prepare(run_dir: Path, cfg: Config) -> str | None:
    _remove_stale_temp(run_dir)
    if cfg.train.resume == "restart":
        _set_aside(run_dir)
        path, step = None, 0
    else:
        path, step = _checkpoint_to_resume(run_dir, cfg)
    try:
        _cut_log(run_dir / LOG, step)
        saved = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, resume="auto"))
        config.save(saved, run_dir / CONFIG)  # rerunning config.yaml resumes; never forces or restarts
    except OSError as err:  # a read-only run directory (a full disk is reported by atomic_write)
        raise RunDirError(f"cannot write in the run directory {run_dir}: {err.strerror or err}") from None
    return path


def _remove_stale_temp(run_dir: Path) -> None:
    """Temporary files a killed run left (we hold the lock: no live writer owns them)."""
    for path in run_dir.iterdir():
        if STALE_TEMP.match(path.name) and path.is_file():
            path.unlink(missing_ok=True)


def _checkpoint_to_resume(run_dir: Path, cfg: Config) -> tuple[str | None, int]:
    found = checkpoint.checkpoints(run_dir)
    if not found:
        _check_without_checkpoint(run_dir, cfg)
        return None, 0
    with warnings.catch_warnings(record=True) as damaged:  # one per damaged checkpoint skipped
        warnings.simplefilter("always")
        state = checkpoint.load_latest(run_dir, problem=checkpoint.run_state_problem)
    if state is None:  # one line says it all
        raise RunDirError(f"none of the {len(found)} checkpoint(s) in {run_dir} can be read (newest: "
                          f"{found[0].name}); add train.resume=restart to start over from step 0 "
                          f"(the old files are moved to {run_dir}/previous-<time>/)")
    for warning in damaged:
        warnings.warn(warning.message, stacklevel=2)
    if "config" not in state:
        raise RunDirError(f"{state['path']} does not record the config it was made with; add "
                          "train.resume=force to resume from it anyway, or train.resume=restart")
    _check_config(run_dir, state["config"], cfg)
    return state["path"], int(state["step"])


def _check_without_checkpoint(run_dir: Path, cfg: Config) -> None:
    """No checkpoint left (none written yet, or pruned by hand): the run starts at step 0, which
    must not wipe a finished run's outputs nor mix a run of another config into this log."""
    if (run_dir / "backbone.pth").exists():
        raise RunDirError(f"{run_dir} holds a finished run (backbone.pth) but no checkpoint to "
                          "resume; add train.resume=restart to move its files aside and start "
                          "over, or choose another train.out_dir")
    if not (run_dir / CONFIG).exists():
        return
    try:
        saved = config._read_yaml(run_dir / CONFIG)
    except Exception as err:  # noqa: BLE001 - any way the file can be wrong: refuse, never replace it
        raise RunDirError(f"{run_dir / CONFIG} cannot be read ({type(err).__name__}) and no checkpoint "
                          "remains; add train.resume=restart to move the old files aside and start "
                          "over") from None
    _check_config(run_dir, saved, cfg, force_allowed=False)


def _check_config(run_dir: Path, saved: dict, cfg: Config, force_allowed: bool = True) -> None:
    """Refuse (see the module docstring) unless `saved` differs from `cfg` only in SAFE_TO_CHANGE."""
    if not isinstance(saved, dict):
        raise RunDirError(f"{run_dir}: the recorded config is not a mapping; add train.resume=restart")
    changed = [c for c in config_changes(saved, cfg) if not c[0].startswith(SAFE_TO_CHANGE)]
    unfit = [c for c in changed if c[0].startswith(SHAPE_KEYS)]
    if unfit:
        raise RunDirError(f"{run_dir} holds a run of another model ({_describe(unfit)}); its "
                          "checkpoints cannot be resumed with it: choose another train.out_dir, or "
                          "add train.resume=restart to start over here")
    if changed and (cfg.train.resume != "force" or not force_allowed):
        force = "add train.resume=force to resume with the new values, or " if force_allowed else ""
        raise RunDirError(f"{run_dir} holds a run made with another config ({_describe(changed)}); "
                          f"rerun with its config ({run_dir / CONFIG}) to resume, {force}add "
                          "train.resume=restart to start over")
    if changed:
        print(f"fastbt: train.resume=force: resuming with {_describe(changed)}", flush=True)


def config_changes(saved: dict[str, Any], cfg: Config) -> list[tuple[str, Any, Any]]:
    """(key, saved value, value now) for each key that differs. A key the saved config lacks (it
    predates the key) counts as its default; one that no longer exists shows as (absent) now."""
    before = {**_flat(config.to_dict(Config())), **_flat(saved)}
    now = _flat(config.to_dict(cfg))
    pairs = [(key, before.get(key, _ABSENT), now.get(key, _ABSENT)) for key in sorted(before | now)]
    return [(key, old, new) for key, old, new in pairs if old != new]


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _describe(changes: list[tuple[str, Any, Any]], most: int = 8) -> str:
    shown = [f"{key}: {config.shown(old)} -> {config.shown(new)}" for key, old, new in changes[:most]]
    more = f", and {len(changes) - most} more" if len(changes) > most else ""
    return ", ".join(shown) + more


def _set_aside(run_dir: Path) -> None:
    """Move the previous run's files into a new RUN_DIR/previous-<time>/; nothing is deleted."""
    files = [p for pattern in RUN_FILES for p in sorted(run_dir.glob(pattern))]
    if not files:
        return
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(1, 1000):
        aside = run_dir / (f"previous-{stamp}" if n == 1 else f"previous-{stamp}-{n}")
        try:
            aside.mkdir()
            break
        except FileExistsError:
            continue
    for path in files:
        path.rename(aside / path.name)
    print(f"fastbt: train.resume=restart: the previous run's {len(files)} file(s) are now in {aside}",
          flush=True)


def _cut_log(path: Path, step: int) -> None:
    """Drop log records past `step` (a resumed run logs those steps again) and torn lines; atomic."""
    if not path.exists():
        return
    lines = path.read_bytes().decode("utf-8", "replace").splitlines()
    kept = [line for line in lines if _logged_by_then(line, step)]
    if len(kept) == len(lines):
        return
    checkpoint.atomic_write(path, lambda f: f.write("".join(line + "\n" for line in kept).encode()))


def _logged_by_then(line: str, step: int) -> bool:
    try:
        record = json.loads(line)
    except ValueError:  # a line torn by a kill
        return False
    at = record.get("step") if isinstance(record, dict) else None
    return not isinstance(at, (int, float)) or at <= step


# --------------------------------------------------------------------------------------------
# Other commands' outputs.


def refuse_run_dir(path: Path, what: str) -> None:
    """Refuse to write `what` into a pretraining run's directory (it would replace its files)."""
    path = Path(path)
    if (path / LOCK).exists() or (path / CONFIG).exists():
        raise RunDirError(f"{path} is a pretraining run directory; {what} would overwrite its "
                          "checkpoints and log.jsonl there: choose another --out")
