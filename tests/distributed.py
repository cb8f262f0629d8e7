"""Run a function in several local processes joined by a gloo group, as torchrun would.

`run(fn, world_size, *args)` starts `world_size` processes with torchrun's environment variables
set (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), calls `fn(rank, world_size, *args)`
in each (with the default process group initialized when `init_group`), and returns the
per-rank results in rank order. `fn` must be a module-level function (it is pickled).
"""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank, world_size, port, out_dir, init_group, fn, args):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)  # two processes on two cores
    if init_group:
        dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        result = fn(rank, world_size, *args)
    finally:
        if init_group and dist.is_initialized():
            dist.destroy_process_group()
    torch.save(result, Path(out_dir) / f"rank{rank}.pt")


def run(fn, world_size: int, *args, init_group: bool = True) -> list:
    with tempfile.TemporaryDirectory() as out_dir:
        mp.spawn(_entry, args=(world_size, free_port(), out_dir, init_group, fn, args),
                 nprocs=world_size, join=True)
        return [torch.load(Path(out_dir) / f"rank{r}.pt", weights_only=False) for r in range(world_size)]
