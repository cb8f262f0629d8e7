"""Compiled training moves the weights exactly as eager training does (issue 20, item 2).

Comparing compiled with compiled cannot catch a compiled backward that returns zeros (torch 2.11
did, for the loss: see fastbt.train.ops.xcorr._Standardize); these tests train a few SGD steps both ways
from the same weights and compare the weights, which must also have moved.
"""
import copy
import functools

import pytest
import torch
from torch import nn

from fastbt.config import LossConfig
from fastbt.train.ops import barlow_twins_loss

LAMBD = LossConfig().lambd


class TinyNet(nn.Module):
    """Conv, BatchNorm, pooled features, a projector with BatchNorm1d: two views in, z1, z2 out.
    No bias where a standardization follows (its gradient would be 0 either way)."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.projector = nn.Sequential(nn.Linear(8, 16, bias=False), nn.BatchNorm1d(16), nn.ReLU(),
                                       nn.Linear(16, 32, bias=False))

    def forward(self, x1, x2):
        return self.projector(self.backbone(x1)), self.projector(self.backbone(x2))


def train(model, loss_of, batches, lr=0.05):
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for x1, x2 in batches:
        loss_of(model, x1, x2).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return model


def views(steps=3, n=8, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, 3, size, size, generator=g), torch.randn(n, 3, size, size, generator=g))
            for _ in range(steps)]


def assert_same_weights_and_moved(trained, reference, initial, tol=1e-5):
    for (name, w), r, w0 in zip(trained.named_parameters(), reference.parameters(), initial.parameters()):
        torch.testing.assert_close(w, r, rtol=tol, atol=tol, msg=f"{name} differs from eager")
    moved = [(r - w0).abs().max().item() for r, w0 in zip(reference.parameters(), initial.parameters())]
    assert min(moved) > 1e-4  # every weight got a gradient: equal weights are not equal zeros


@pytest.mark.filterwarnings("ignore:Your compiler for AOTAutograd")
@pytest.mark.parametrize("mode", ["gram", "direct"])
def test_compiled_loss_trains_a_linear_map_as_eager(mode):
    """The loss op alone compiled: a linear map's weights after 3 steps equal eager's."""
    torch.manual_seed(0)
    initial = nn.Linear(12, 16, bias=False)  # the loss standardizes: a bias gets no gradient
    loss = functools.partial(barlow_twins_loss, lambd=LAMBD, mode=mode)
    compiled_loss = torch.compile(loss, backend="aot_eager", fullgraph=True)
    batches = [(x.flatten(1)[:, :12], y.flatten(1)[:, :12]) for x, y in views()]
    eager = train(copy.deepcopy(initial), lambda m, a, b: loss(m(a), m(b)), batches)
    compiled = train(copy.deepcopy(initial), lambda m, a, b: compiled_loss(m(a), m(b)), batches)
    assert_same_weights_and_moved(compiled, eager, initial)


@pytest.mark.filterwarnings("ignore:Your compiler for AOTAutograd")
def test_a_compiled_model_and_loss_step_trains_as_eager():
    """Model forward and loss in one compiled graph (aot_eager: AOTAutograd's forward and backward
    graphs, run by eager kernels), 3 SGD steps, against the same steps uncompiled."""
    torch.manual_seed(0)
    initial = TinyNet()

    def step_loss(model, x1, x2):
        return barlow_twins_loss(*model(x1, x2), LAMBD)

    eager = train(copy.deepcopy(initial), step_loss, views())
    compiled_step = torch.compile(step_loss, backend="aot_eager", fullgraph=True)
    compiled = train(copy.deepcopy(initial), compiled_step, views())
    assert_same_weights_and_moved(compiled, eager, initial)


@pytest.mark.slow  # inductor's C++ code generation: ~30 s or more on 2 cores
def test_an_inductor_compiled_step_trains_as_eager():
    torch.manual_seed(0)
    initial = TinyNet()

    def step_loss(model, x1, x2):
        return barlow_twins_loss(*model(x1, x2), LAMBD)

    eager = train(copy.deepcopy(initial), step_loss, views())
    compiled = train(copy.deepcopy(initial), torch.compile(step_loss, fullgraph=True), views())
    assert_same_weights_and_moved(compiled, eager, initial, tol=1e-4)
