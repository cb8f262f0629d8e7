"""Per-rank FLOPs of the loss fall with W (issue 14, item 3), counted by FlopCounterMode, which
sees the custom ops through their registered formulas."""

import pytest
import torch
import torch.distributed as dist
from torch.utils.flop_counter import FlopCounterMode

from fastbt.config import LossConfig
from fastbt.train.ops import barlow_twins_loss
from fastbt.train.ops.xcorr import choose_mode, loss_cost

import distributed

N, D = 16, 32
LAMBD = LossConfig().lambd  # the paper's


def views(rank=0, world=1):
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(N, D, generator=g), torch.randn(N, D, generator=g)
    rows = slice(rank * N // world, (rank + 1) * N // world)
    return z1[rows].clone().requires_grad_(), z2[rows].clone().requires_grad_()


def counted_flops(mode, group=None, rank=0, world=1) -> int:
    z1, z2 = views(rank, world)
    with FlopCounterMode(display=False) as counter:
        barlow_twins_loss(z1, z2, LAMBD, mode=mode, group=group).backward()
    return counter.get_total_flops()


def per_rank_flops(rank, world_size):
    return {mode: counted_flops(mode, dist.group.WORLD, rank, world_size) for mode in ("gram", "direct")}


@pytest.mark.parametrize("mode", ["gram", "direct"])
def test_the_counter_sees_the_ops_matmuls(mode):
    assert counted_flops(mode) == loss_cost(mode, N, D, 1)[0] == 8 * N * N * D * D // (D if mode == "gram" else N)


@pytest.mark.dist
def test_per_rank_flops_at_two_ranks_are_at_most_055_of_one_rank():
    one = {mode: counted_flops(mode) for mode in ("gram", "direct")}
    for ranks in distributed.run(per_rank_flops, 2):
        for mode in ("gram", "direct"):
            assert 0 < ranks[mode] <= 0.55 * one[mode], (mode, ranks[mode], one[mode])


def test_auto_weighs_flops_and_communication():
    assert choose_mode(2048, 8192, 1) == "gram"  # N < D
    assert choose_mode(8192, 2048, 1) == "direct"
    assert choose_mode(2048, 8192, 8, elem_bytes=2) == "gram"  # the paper on 8 GPUs
    gram, direct = loss_cost("gram", 2048, 8192, 8, 2), loss_cost("direct", 2048, 8192, 8, 2)
    assert gram[0] < direct[0] and gram[1] < direct[1]
    assert gram[0] == 8 * 2048 * 2048 * 8192 // 8  # ~34 GFLOP per rank, not the full 275
