"""Two gloo processes against one process on the global batch: the loss, each rank's rows of the
gradient (eager and compiled with fullgraph=True), and a DDP model's parameter gradients
(scale=W: exact; scale=1: the official code's 1/W)."""
import functools

import pytest
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from fastbt.config import LossConfig
from fastbt.train.ops import barlow_twins_loss
from fastbt.train.ops import xcorr

import distributed

LAMBD = LossConfig().lambd  # the paper's
WORLD, N, D, IN = 2, 16, 12, 6  # N > D, so "auto" means direct; both modes are also forced
MODES = ("gram", "direct", "auto")


def global_batch():
    """Inputs x1, x2 (N x IN) and views z1, z2 (N x D) with offsets, shared by all ranks."""
    g = torch.Generator().manual_seed(0)
    x1, x2 = torch.randn(N, IN, generator=g), torch.randn(N, IN, generator=g)
    z1 = torch.randn(N, D, generator=g) * 2 + 1
    return x1, x2, z1, z1 + torch.randn(N, D, generator=g)


class Pair(torch.nn.Module):
    """A linear projector on both views, the loss inside forward, as in the official code."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(IN, D, bias=False)  # a bias gets no gradient: BN removes it

    def forward(self, x1, x2, **loss_kw):
        return barlow_twins_loss(self.proj(x1), self.proj(x2), LAMBD, **loss_kw)


def make_pair():
    torch.manual_seed(1)
    return Pair()


def rows_of(rank):
    return slice(rank * N // WORLD, (rank + 1) * N // WORLD)


def worker(rank, world_size, compiled):
    xcorr._BLOCK_ELEMS = 5 * D  # direct mode in several column blocks here too
    x1, x2, z1, z2 = (t[rows_of(rank)] for t in global_batch())
    out = {}
    for mode in MODES:
        loss_fn = functools.partial(barlow_twins_loss, lambd=LAMBD, mode=mode, group=dist.group.WORLD)
        if compiled:
            loss_fn = torch.compile(loss_fn, backend="aot_eager", fullgraph=True)
        v1, v2 = z1.clone().requires_grad_(), z2.clone().requires_grad_()
        loss = loss_fn(v1, v2)
        loss.backward()
        out[mode] = (loss.detach(), v1.grad, v2.grad)
        if compiled:
            continue
        ddp = DDP(make_pair())
        for scale in (WORLD, 1):
            ddp.zero_grad()
            ddp(x1, x2, mode=mode, scale=scale, group=dist.group.WORLD).backward()
            out[mode, scale] = [p.grad.clone() for p in ddp.parameters()]
    return out


def spawn(compiled=False):
    """Run `worker` on WORLD processes; each rank's results."""
    return distributed.run(worker, WORLD, compiled)


@pytest.fixture(scope="module")
def ranks():
    return spawn()


def assert_rel(x, ref, tol=1e-5):
    assert (x - ref).norm() <= tol * ref.norm()


def assert_rows_match_one_process(ranks):
    for mode in MODES:
        _, _, z1, z2 = global_batch()
        z1.requires_grad_(), z2.requires_grad_()
        loss = barlow_twins_loss(z1, z2, LAMBD, mode=mode)
        loss.backward()
        for rank, got in enumerate(ranks):
            got_loss, g1, g2 = got[mode]
            assert_rel(got_loss, loss.detach())
            assert_rel(g1, z1.grad[rows_of(rank)])
            assert_rel(g2, z2.grad[rows_of(rank)])


@pytest.mark.dist
def test_rows_match_one_process(ranks):
    assert_rows_match_one_process(ranks)


@pytest.mark.dist
@pytest.mark.slow  # compiling in two processes on two busy cores: ~40 s
def test_compiled_rows_match_one_process():
    assert_rows_match_one_process(spawn(compiled=True))


@pytest.mark.dist
def test_ddp_parameter_gradients(ranks):
    x1, x2, _, _ = global_batch()
    for mode in MODES:
        pair = make_pair()
        pair(x1, x2, mode=mode).backward()
        want = [p.grad for p in pair.parameters()]
        for got in ranks:
            for g, w in zip(got[mode, WORLD], want):  # scale=W undoes DDP's averaging: exact
                assert_rel(g, w)
            for g, w in zip(got[mode, 1], want):  # scale=1: the official code's 1/W
                assert_rel(g, w / WORLD)
