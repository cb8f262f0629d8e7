"""Which samples each rank reads, in which order, and the seed of each batch: pure functions of
(seed, rank, epoch, batch index), so every backend reads the same samples in the same order and a
resumed run replays an epoch exactly. A leaf module: the backends import it, it imports no backend.
"""

from __future__ import annotations

import torch
from torch import Tensor


def batch_seed(seed: int, rank: int, epoch: int, index: int) -> int:
    """A 63-bit seed per (seed, rank, epoch, batch): distinct streams without shared state."""
    h = seed
    for v in (rank, epoch, index):
        h = (h * 0x9E3779B97F4A7C15 + v + 1) % (1 << 63)
    return h


def epoch_order(n: int, rank: int, world_size: int, seed: int, epoch: int) -> Tensor:
    """The sample indices rank `rank` reads in `epoch`, in order: a permutation of range(n) seeded
    by (seed, epoch), every world_size-th from position `rank`, all ranks the same count (the
    remainder is dropped, as DistributedSampler(drop_last=True) does)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))
    return order[rank::world_size][:n // world_size]


def rank_range(n: int, rank: int, world_size: int) -> range:
    """Rank `rank`'s contiguous share of n samples for evaluation, as DALI's readers shard: shares
    differ by at most one sample and together cover every sample once."""
    return range(rank * n // world_size, (rank + 1) * n // world_size)
