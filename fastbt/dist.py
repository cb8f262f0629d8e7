"""Process topology from torchrun's environment: rank, world size, device; init and teardown.

One process per device. Without torchrun (no WORLD_SIZE in the environment) this is a world of one
and no process group is created. NCCL on CUDA, gloo on CPU.

Fail loudly: when the machine has GPUs (nvidia-smi lists some, or CUDA_VISIBLE_DEVICES names some)
but torch cannot use them, typically a driver older than torch's CUDA build needs, training on CPU
in fp32 would be a silent 50x slowdown: `check_cuda_usable` raises DeviceError instead (the CLI
prints it in one line, exit 2), unless runtime.device=cpu asks for the CPU. The launchers in
scripts/ run the same check (`python -m fastbt.dist`) before starting N processes.
"""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from fastbt.errors import DeviceError, RunStopped

# The oldest NVIDIA driver branch each CUDA major version runs on (minor-version compatibility).
MIN_DRIVER = {"11": "R450", "12": "R525", "13": "R580"}


@dataclass(frozen=True)
class World:
    rank: int
    local_rank: int
    size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def visible_gpus() -> tuple[int, str | None]:
    """(number of GPUs nvidia-smi lists, their driver version); (0, None) without nvidia-smi."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return 0, None
    return len(out), (out[0] if out else None)


def _cuda_devices_requested() -> bool:
    return os.environ.get("CUDA_VISIBLE_DEVICES", "").strip() not in ("", "-1")


def check_cuda_usable() -> None:
    """Raise DeviceError when GPUs are there (nvidia-smi or CUDA_VISIBLE_DEVICES) but CUDA is not."""
    if torch.cuda.is_available():
        return
    count, driver = visible_gpus()
    if not count and not _cuda_devices_requested():
        return
    build = torch.version.cuda
    need = MIN_DRIVER.get(str(build).split(".")[0], "a driver for that CUDA version") if build else None
    found = (f"nvidia-smi lists {count} GPU(s), driver {driver}" if count else
             f"CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']}")
    wants = (f"torch {torch.__version__} is built for CUDA {build} and needs an NVIDIA driver "
             f"{need} or newer" if build else f"torch {torch.__version__} is a CPU-only build")
    raise DeviceError(f"{found}, but torch.cuda.is_available() is false: {wants}; update the "
                      f"driver (or install a matching torch), or set runtime.device=cpu to train "
                      f"on CPU on purpose")


def pick_device(preference: str, local_rank: int) -> torch.device:
    if preference != "cpu":
        check_cuda_usable()
    if preference == "cpu" or (preference == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise DeviceError("runtime.device=cuda, but no GPU is visible on this machine")
    return torch.device("cuda", local_rank)


def from_env(device_preference: str = "auto") -> World:
    """This process's place in the job, from torchrun's environment; joins no group. `rank` is
    the global rank (what shards the data); `local_rank` only picks this node's device."""
    rank = int(os.environ.get("RANK", 0))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    size = int(os.environ.get("WORLD_SIZE", 1))
    device = pick_device(device_preference, local_rank)
    return World(rank=rank, local_rank=local_rank, size=size, device=device)


def init(device_preference: str = "auto", timeout_s: float = 600) -> World:
    """Read torchrun's environment, choose the device and (for several processes) join the group.
    A collective that waits `timeout_s` for a lost or hung process fails instead of hanging."""
    world = from_env(device_preference)
    if world.device.type == "cuda":
        torch.cuda.set_device(world.device)
    if world.distributed and not dist.is_initialized():
        dist.init_process_group("nccl" if world.device.type == "cuda" else "gloo",
                                device_id=world.device if world.device.type == "cuda" else None,
                                timeout=timedelta(seconds=timeout_s))
    return world


class LostPeer(RunStopped):
    """Another process of the run died or hangs: a collective failed or timed out."""


# what a collective's error says when its peer is gone (gloo's messages carry third_party/gloo/...)
_COMMUNICATION = ("gloo", "NCCL", "Connection reset", "Connection closed", "Broken pipe", "Timed out")


@contextmanager
def lost_peers_stop_the_run(world: World):
    """A collective that fails because another process died (its connection closes) or hangs
    (`runtime.dist_timeout_s`) becomes LostPeer: one line and exit 1 from the CLI, not a traceback."""
    try:
        yield
    except RuntimeError as err:
        text = str(err).strip()
        if not world.distributed or isinstance(err, RunStopped) or not (
                isinstance(err, dist.DistError) or any(s in text for s in _COMMUNICATION)):
            raise
        reason = re.sub(r"^\[[^\]]*\]\s*", "", text.splitlines()[0] if text else "").split(". ")[0]
        raise LostPeer(f"rank {world.rank} lost contact with another process of the run ({reason}); "
                       f"rerun the same command on every node to resume from the last checkpoint") from None


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def joined(device_preference: str = "auto", timeout_s: float = 600):
    """`init` for the length of a block, whose end leaves the group only if this block joined it: a
    caller that holds one across several such blocks (a profile sweep over its settings) keeps it,
    as leaving and joining again under torchrun hangs."""
    joins_here = not dist.is_initialized()
    world = init(device_preference, timeout_s)
    try:
        yield world
    finally:
        if joins_here:
            teardown()


def seed_everything(seed: int) -> None:
    """Same seed on every rank: model initialization must be identical before DDP broadcasts."""
    random.seed(seed)
    torch.manual_seed(seed)


def any_rank(flag: bool, world: World) -> bool:
    """True on every rank if `flag` is true on any (a host sync: call it rarely)."""
    if not world.distributed:
        return flag
    t = torch.tensor([int(flag)], device=world.device if world.device.type == "cuda" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def print0(world: World, *args, **kwargs) -> None:
    if world.is_main:
        print(*args, **kwargs, flush=True)


if __name__ == "__main__":  # the launchers' check: python -m fastbt.dist
    try:
        check_cuda_usable()
    except DeviceError as err:
        print(f"fastbt: error: {err}", file=sys.stderr)
        sys.exit(2)
