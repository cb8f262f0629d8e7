"""Checkpoints: atomic writes, resume from the newest valid one, and backbone export.

A checkpoint is `ckpt_<step>.pt` in the run directory. It is written to a temporary name, fsynced,
then renamed, so a crash never leaves a half-written file under the final name. On resume the
newest checkpoint that loads is used; a corrupt one is reported and the previous one is tried.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fastbt.errors import RunDirError

KEEP = 2  # checkpoints kept: the newest, and one to fall back on if the newest is damaged
_NAME = re.compile(r"ckpt_(\d+)\.pt$")


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save to `path` via a temporary file, fsync and rename (the directory is fsynced too)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if _disk_full(err):  # the previous file under `path`, if any, is untouched
            free = shutil.disk_usage(path.parent).free / 2**20
            raise RunDirError(f"no space left on device while writing {path} ({free:.0f} MB free "
                              "there): free some space and rerun to resume") from None
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _disk_full(err: BaseException | None) -> bool:
    """ENOSPC/EDQUOT anywhere in the chain: torch.save reports it as a RuntimeError caused by it."""
    while err is not None:
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        err = err.__cause__ or err.__context__
    return False


def checkpoints(run_dir: Path) -> list[Path]:
    """The run's checkpoints, newest first."""
    found = [(int(m.group(1)), p) for p in Path(run_dir).glob("ckpt_*.pt") if (m := _NAME.search(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def save(run_dir: Path, step: int, state: dict[str, Any]) -> Path:
    path = Path(run_dir) / f"ckpt_{step:09d}.pt"
    atomic_save(state, path)
    for old in checkpoints(run_dir)[KEEP:]:
        old.unlink(missing_ok=True)
    return path


def load(path: Path, map_location="cpu") -> dict[str, Any]:
    # weights_only: a checkpoint holds tensors and plain Python values, never pickled code.
    return torch.load(path, map_location=map_location, weights_only=True)


def load_latest(run_dir: Path, map_location="cpu") -> dict[str, Any] | None:
    """The newest checkpoint that loads, or None. Damaged ones are skipped with a warning."""
    for path in checkpoints(run_dir):
        try:
            state = load(path, map_location)
        except Exception as err:  # a truncated zip, a bad pickle: any way a file can be damaged
            warnings.warn(f"checkpoint {path} is unreadable ({type(err).__name__}: {err}); "
                          "falling back to the previous one", stacklevel=2)
            continue
        state["path"] = str(path)
        return state
    return None


def backbone_state(model_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The backbone's entries of a BarlowTwinsNet state_dict, with torchvision's key names."""
    prefix = "backbone."
    return {k[len(prefix):]: v for k, v in model_state.items() if k.startswith(prefix)}


def export_backbone(checkpoint_path: Path, out: Path) -> int:
    """Write the backbone of a checkpoint as a torchvision state_dict (no fc.*); returns #tensors."""
    try:
        state = load(checkpoint_path)
    except FileNotFoundError:
        raise
    except Exception as err:
        raise ValueError(f"{checkpoint_path} is not a readable checkpoint ({type(err).__name__})") from None
    if not isinstance(state, dict) or "model" not in state:
        raise ValueError(f"{checkpoint_path} is not a fastbt checkpoint (it has no 'model' entry)")
    weights = backbone_state(state["model"])
    atomic_save(weights, Path(out))
    return len(weights)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside DDP and/or torch.compile wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model
