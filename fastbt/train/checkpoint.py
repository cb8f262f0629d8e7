"""Checkpoints: the one place that knows what a run's state is. Atomic writes, resume from the
newest valid one, backbone export, and reading backbone weights back.

A checkpoint is `ckpt_<step>.pt` in the run directory. It is written to a temporary name, fsynced,
then renamed, so a crash never leaves a half-written file under the final name. On resume the
newest checkpoint that loads is used; a corrupt one is reported and the previous one is tried.

A pretraining checkpoint (`save_run` / `resume_run`) holds: model (the unwrapped BarlowTwinsNet's
state_dict), optimizer, step (done), epoch, config (as a dict), rng (torch and Python states).
Its backbone is exported (`backbone.pth`, `fastbt export`) as a torchvision state_dict without
fc.* (the official torch.hub format); `read_backbone_state` reads either kind of file back.
"""

from __future__ import annotations

import errno
import math
import os
import random
import re
import shutil
import warnings
from pathlib import Path
from typing import Any, BinaryIO, Callable

import torch
from torch import Tensor, nn

from fastbt import config
from fastbt.config import Config
from fastbt.errors import RunDirError
from pipelines.errors import DataError

# The scale beyond which a weight or buffer has diverged. Scale: the largest |value|, or for a BN
# running_var its square root (a standard deviation, like the activations it measures). Every tensor
# of the models fastbt builds starts within 1 (tests/test_diverged_checkpoints.py checks it) and a
# healthy tiny run stays near 2; a state at BN weights of 2.6e4 (one step at LR 1e5) still diverged
# when resumed at the default LR.
BLOWN_UP = 1e3
KEEP = 2  # checkpoints kept: the newest, and one to fall back on if the newest is damaged
_NAME = re.compile(r"ckpt_(\d+)\.pt$")


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save to `path` atomically (see atomic_write)."""
    atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write(path: Path, write: Callable[[BinaryIO], Any]) -> None:
    """write(f) to `path` via a temporary file, fsync and rename (the directory is fsynced too): a
    reader sees the old file or the new one, never a torn one. A full disk is one line naming `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if disk_full(err):  # the previous file under `path`, if any, is untouched
            free = shutil.disk_usage(path.parent).free / 2**20
            raise RunDirError(f"no space left on device while writing {path} ({free:.0f} MB free "
                              "there): free some space and rerun to resume") from None
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def disk_full(err: BaseException | None) -> bool:
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


def load_latest(run_dir: Path, map_location="cpu",
                problem: Callable[[Any], str | None] | None = None) -> dict[str, Any] | None:
    """The newest checkpoint that loads (and in which `problem(state)` finds none), or None.
    Damaged ones are skipped with a one-line warning naming them."""
    for path in checkpoints(run_dir):
        try:
            state = load(path, map_location)
        except Exception as err:  # a truncated zip, a bad pickle: any way a file can be damaged
            warnings.warn(f"checkpoint {path} is unreadable ({why_unreadable(err)}); "
                          "falling back to the previous one", stacklevel=2)
            continue
        wrong = "it is not a dict" if not isinstance(state, dict) else (problem(state) if problem else None)
        if wrong:
            warnings.warn(f"checkpoint {path} is not a usable checkpoint ({wrong}); falling back to "
                          "the previous one", stacklevel=2)
            continue
        state["path"] = str(path)
        return state
    return None


# ---- a pretraining run's state -------------------------------------------------------------------

def save_run(run_dir: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
             steps_per_epoch: int, cfg: Config) -> Path:
    """Write the run's state after `step` steps as ckpt_<step>.pt; `model` is unwrapped (no DDP)."""
    return save(run_dir, step, {
        "model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
        "epoch": step // steps_per_epoch, "config": config.to_dict(cfg),
        "rng": {"torch": torch.get_rng_state(), "python": random.getstate()}})


def run_state_problem(state: dict[str, Any]) -> str | None:
    """What makes `state` unusable as save_run's checkpoint (None if nothing): its structure, and
    weights or buffers that diverged (see `diverged`). `config` may be absent (an old checkpoint, see rundir)."""
    entries = {"model": dict, "optimizer": dict, "step": int, "rng": dict}
    for key, kind in entries.items():
        if not isinstance(state.get(key), kind) or isinstance(state.get(key), bool):
            return f"'{key}' is missing or not a {kind.__name__}"
    if "config" in state and not isinstance(state["config"], dict):
        return "'config' is not a dict"
    rng = state["rng"]
    if not isinstance(rng.get("torch"), Tensor) or not isinstance(rng.get("python"), tuple):
        return "'rng' lacks the torch or Python RNG state"
    if not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in state["model"].items()):
        return "'model' is not a state_dict of tensors"
    bad = diverged(state["model"])
    return f"'model' shows divergence: {bad}" if bad else None


def diverged(tensors: dict[str, Tensor]) -> str | None:
    """What shows that training diverged in these weights and buffers, in words naming the first
    floating-point tensor that holds inf or NaN or has a scale beyond BLOWN_UP; None if none. One
    host sync. Finite is not enough: a diverged run's BN running_var passes through 1e25 before it
    overflows, and resuming such a state diverges again."""
    floats = [(name, t) for name, t in tensors.items() if t.is_floating_point() and t.numel()]
    if not floats:
        return None
    # min and max are non-finite exactly when an element is (NaN propagates); one pass, ~30x faster
    # on CPU than isfinite(t).all()
    extremes = torch.stack([torch.stack(torch.aminmax(t.detach())).float() for _, t in floats]).cpu()
    for (name, _), (low, high) in zip(floats, extremes.tolist()):
        if not (math.isfinite(low) and math.isfinite(high)):
            return f"{name} became non-finite"
        largest = max(-low, high)
        scale = math.sqrt(largest) if name.endswith("running_var") else largest
        if scale > BLOWN_UP:
            return f"{name} reached {largest:.3g} (a scale beyond {BLOWN_UP:.0e}: diverged)"
    return None


def resume_run(path: str | Path | None, model: nn.Module, optimizer: torch.optim.Optimizer,
               map_location="cpu") -> int:
    """Load the checkpoint at `path` (the one `fastbt.train.rundir.prepare` chose) into the model,
    optimizer and RNGs; return its step, or 0 when there is none (a fresh start)."""
    if path is None:
        return 0
    state = load(Path(path), map_location=map_location)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"]["torch"].cpu())
    random.setstate(state["rng"]["python"])
    return int(state["step"])


# ---- the backbone alone ---------------------------------------------------------------------------

class WeightsError(DataError):
    """A weights file that cannot serve as the backbone asked for (the CLI prints it in one line)."""


def backbone_state(model_state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The backbone's entries of a BarlowTwinsNet state_dict, with torchvision's key names."""
    prefix = "backbone."
    return {k[len(prefix):]: v for k, v in model_state.items() if k.startswith(prefix)}


def save_backbone(model: nn.Module, out: Path) -> None:
    """Write a BarlowTwinsNet's backbone as a torchvision state_dict (no fc.*)."""
    atomic_save(backbone_state(model.state_dict()), Path(out))


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


def read_backbone_state(path: str | Path) -> dict[str, Tensor]:
    """The backbone's tensors in an exported backbone or a checkpoint, with torchvision's names
    (a classifier's fc.* left out); a `WeightsError` naming the file for anything else."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such weights file")
    try:
        obj = load(path)
    except Exception as err:  # not a torch file, truncated, or pickled code (weights_only refuses)
        raise WeightsError(f"{path}: not a readable weights file ({why_unreadable(err)})") from None
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):  # a fastbt checkpoint
        obj = backbone_state(obj["model"])
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise WeightsError(f"{path}: neither a backbone state_dict nor a fastbt checkpoint")
    state = {k: v for k, v in obj.items() if not k.startswith("fc.")}
    if not state:
        raise WeightsError(f"{path}: holds no backbone weights")
    return state


def why_unreadable(err: Exception) -> str:
    """Why torch.load failed, in a few words: never torch's advice to re-run with
    weights_only=False (that runs the file's pickled code, which fastbt refuses on purpose)."""
    text = str(err)
    unsafe = re.search(r"Unsupported global: (GLOBAL \S+)", text)
    if unsafe:
        return f"it holds pickled code ({unsafe.group(1)}), which fastbt never runs"
    first = re.sub(r"\x1b\[[0-9;]*m", "", text.strip().splitlines()[0] if text.strip() else "")
    return f"{type(err).__name__}: {first[:200]}"
