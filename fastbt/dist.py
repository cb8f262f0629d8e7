"""Process topology from torchrun's environment: rank, world size, device; init and teardown.

One process per device. Without torchrun (no WORLD_SIZE in the environment) this is a world of one
and no process group is created. NCCL on CUDA, gloo on CPU.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

import torch
import torch.distributed as dist


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


def pick_device(preference: str, local_rank: int) -> torch.device:
    if preference == "cpu" or (preference == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("runtime.device=cuda, but CUDA is not available on this machine")
    return torch.device("cuda", local_rank)


def init(device_preference: str = "auto") -> World:
    """Read torchrun's environment, choose the device and (for several processes) join the group."""
    rank = int(os.environ.get("RANK", 0))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    size = int(os.environ.get("WORLD_SIZE", 1))
    device = pick_device(device_preference, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                device_id=device if device.type == "cuda" else None)
    return World(rank=rank, local_rank=local_rank, size=size, device=device)


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


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
