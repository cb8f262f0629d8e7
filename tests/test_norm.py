import pytest
import torch
from torch import nn

from fastbt.train.norm import GlobalBatchNorm, use_global_batch_norm

import distributed


def global_bn_on_half(rank, world_size, x, weight, bias):
    """Rank r normalizes its half of x with GlobalBatchNorm; returns output, grads and stats."""
    bn = use_global_batch_norm(nn.Sequential(nn.BatchNorm2d(x.shape[1])), torch.device("cpu"))[0]
    assert isinstance(bn, GlobalBatchNorm)
    with torch.no_grad():
        bn.weight.copy_(weight)
        bn.bias.copy_(bias)
    part = x.chunk(world_size)[rank].clone().requires_grad_()
    y = bn(part)
    (y * torch.arange(y.numel()).view_as(y).float().sin()).sum().backward()  # rank-specific upstream
    return y.detach(), part.grad, bn.weight.grad, bn.bias.grad, bn.running_mean, bn.running_var


@pytest.mark.dist
def test_global_batch_norm_on_two_processes_equals_batch_norm_on_the_whole_batch():
    torch.manual_seed(0)
    x = torch.randn(8, 3, 5, 5) * 2 + 1
    weight, bias = torch.rand(3) + 0.5, torch.randn(3)
    ranks = distributed.run(global_bn_on_half, 2, x, weight, bias)

    bn = nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.weight.copy_(weight)
        bn.bias.copy_(bias)
    whole = x.clone().requires_grad_()
    y = bn(whole)
    upstream = torch.cat([torch.arange(y[:4].numel()).view_as(y[:4]).float().sin()] * 2)
    (y * upstream).sum().backward()

    torch.testing.assert_close(torch.cat([r[0] for r in ranks]), y.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.cat([r[1] for r in ranks]), whole.grad, rtol=1e-5, atol=1e-5)
    # parameter gradients: each rank holds its rows' share; DDP would sum (then average) them
    torch.testing.assert_close(ranks[0][2] + ranks[1][2], bn.weight.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ranks[0][3] + ranks[1][3], bn.bias.grad, rtol=1e-5, atol=1e-5)
    for r in ranks:
        torch.testing.assert_close(r[4], bn.running_mean)
        torch.testing.assert_close(r[5], bn.running_var)


def test_single_process_models_are_left_alone():
    model = nn.Sequential(nn.BatchNorm1d(4))
    assert use_global_batch_norm(model, torch.device("cpu")) is model
    assert type(model[0]) is nn.BatchNorm1d


def test_eval_mode_uses_running_statistics():
    bn = GlobalBatchNorm(3).eval()
    bn.running_mean.fill_(1.0)
    bn.running_var.fill_(4.0)
    x = torch.full((2, 3), 3.0)
    torch.testing.assert_close(bn(x), torch.full((2, 3), 2.0 / (4.0 + 1e-5) ** 0.5))
