"""Global BN under torch.compile: the two-view forward traces as one graph with no breaks, and the
compiled forward + backward (the collectives inside the autograd graph) equals eager."""

import pytest
import torch
from torch import nn

from fastbt.train.model import BarlowTwinsNet, build_projector
from fastbt.train.norm import GlobalBatchNorm, use_global_batch_norm

import distributed


def small_two_view_net() -> BarlowTwinsNet:
    """BarlowTwinsNet's two-view forward over a small conv stack (BatchNorm2d and BatchNorm1d)."""
    net = BarlowTwinsNet("resnet18", (16, 16))
    net.backbone = nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                                 nn.Conv2d(8, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten())
    net.projector = build_projector([8, 16, 16])
    return net


def explain_and_compile(rank, world_size):
    torch.manual_seed(0)
    model = use_global_batch_norm(small_two_view_net(), torch.device("cpu"))
    assert sum(isinstance(m, GlobalBatchNorm) for m in model.modules()) == 3
    views = [torch.randn(4, 3, 12, 12, generator=torch.Generator().manual_seed(rank * 2 + i))
             for i in range(2)]
    explained = torch._dynamo.explain(model)(*views)
    torch._dynamo.reset()

    def grads(net):
        model.zero_grad()
        z1, z2 = net(*views)
        (z1.square().sum() + z2.sin().sum()).backward()
        return [p.grad.clone() for p in model.parameters()]

    # aot_eager: the compiled autograd graph with the collectives in it, without code generation
    compiled = grads(torch.compile(model, backend="aot_eager", fullgraph=True))
    return explained.graph_count, explained.graph_break_count, explained.break_reasons, compiled, grads(model)


@pytest.mark.dist
def test_compiled_two_view_forward_with_global_bn_has_no_graph_breaks():
    for graphs, breaks, reasons, compiled, eager in distributed.run(explain_and_compile, 2):
        assert breaks == 0, reasons
        assert graphs == 1
        for c, e in zip(compiled, eager):
            torch.testing.assert_close(c, e, rtol=1e-4, atol=1e-6)


def _nccl_compiled_forward(rank, world_size):
    import torch.distributed as dist
    from fastbt.train.norm import use_global_batch_norm
    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", rank=rank, world_size=world_size, device_id=torch.device("cuda", rank))
    try:
        torch.manual_seed(0)
        model = use_global_batch_norm(small_two_view_net().cuda(), torch.device("cuda", rank))
        views = [torch.randn(4, 3, 12, 12, device="cuda") for _ in range(2)]
        explained = torch._dynamo.explain(model)(*views)
        z1, _ = torch.compile(model, fullgraph=True)(*views)
        z1.sum().backward()
        return explained.graph_break_count, explained.graph_count
    finally:
        dist.destroy_process_group()


@pytest.mark.gpu
@pytest.mark.dist
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_global_bn_over_nccl_compiles_with_no_graph_breaks():
    for breaks, graphs in distributed.run(_nccl_compiled_forward, 2, init_group=False):
        assert (breaks, graphs) == (0, 1)
