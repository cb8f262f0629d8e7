"""Run a function in several local processes joined by a gloo group, as torchrun would.

`run(fn, world_size, *args)` starts `world_size` processes with torchrun's environment variables
set (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), calls `fn(rank, world_size, *args)`
in each (with the default process group initialized when `init_group`), and returns the
per-rank results in rank order. `fn` must be a module-level function (it is pickled).

Robust against the two ways such tests fail at random on a busy shared machine:
- a port collision: the rendezvous store is served by this (the parent) process on a port the OS
  picks and that stays bound until every rank has exited, as torchrun's agent serves it
  (TORCHELASTIC_USE_AGENT_STORE), so no other process can take the port between choosing and
  binding it (a free port chosen and closed here, bound by rank 0 seconds later, could be taken);
- an abort at exit ("terminate called without an active exception"): a rank that leaves while
  another still uses the group, or whose interpreter finalizes with gloo's threads alive. Ranks
  meet at a barrier, destroy the group, and leave by os._exit once their result is on disk.
"""

from __future__ import annotations

import os
import sys
import tempfile
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

TIMEOUT = timedelta(seconds=300)  # a hung collective fails the test instead of hanging the suite


def _entry(rank, world_size, port, out_dir, init_group, fn, args):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                      TORCHELASTIC_USE_AGENT_STORE="True")  # every rank a client of run()'s store
    torch.set_num_threads(1)  # two processes on two cores
    if init_group:
        dist.init_process_group("gloo", rank=rank, world_size=world_size, timeout=TIMEOUT)
    try:
        result = fn(rank, world_size, *args)
    except BaseException:
        _leave_group(meet=False)  # the others fail at their next collective with this one gone
        raise
    _leave_group(meet=True)
    torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # nothing left to do: no interpreter finalization racing gloo's threads


def _leave_group(meet: bool) -> None:
    if dist.is_initialized():
        if meet:
            dist.barrier()  # no rank tears its end down while another still talks to it
        dist.destroy_process_group()


def run(fn, world_size: int, *args, init_group: bool = True) -> list:
    # port 0: the OS picks a free port and it stays bound (ours) until the store is deleted
    store = dist.TCPStore("127.0.0.1", 0, world_size, is_master=True, wait_for_workers=False,
                          timeout=TIMEOUT)
    try:
        with tempfile.TemporaryDirectory() as out_dir:
            mp.spawn(_entry, args=(world_size, store.port, out_dir, init_group, fn, args),
                     nprocs=world_size, join=True)
            return [torch.load(Path(out_dir) / f"rank{r}.pt", weights_only=False)
                    for r in range(world_size)]
    finally:
        del store
