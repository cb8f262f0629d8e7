"""The training step: forward both views, the loss, backward, LARS. No host syncs inside.

The model's two-view forward is what `torch.compile` compiles (and autocast runs in bf16 on CUDA);
the loss is injected (`fastbt.train.losses`: the Barlow Twins fused op by default, a registered custom op
that stays opaque either way), and LARS runs as foreach kernels. The step returns the loss as a
0-dim device tensor: reading it (`.item()`) is the caller's decision, made only every N steps. The
step reports its phases to the `clock` it is called with: a no-op by default, the profiler's phase
clock when it measures. Whether DDP all-reduces the gradients is the caller's too: the profiler
wraps a step in the DDP model's `no_sync()` to time the backward without communication.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from fastbt.config import RuntimeConfig
from fastbt.precision import autocast, autocast_dtype, use_channels_last
from fastbt.train.losses import Loss
from fastbt.train.meter import NO_CLOCK


@dataclass
class TrainStep:
    model: nn.Module  # possibly DDP-wrapped; takes (view1, view2), returns (z1, z2)
    optimizer: torch.optim.Optimizer
    loss_fn: Loss  # from the config's loss section (fastbt.train.losses.build_loss)
    runtime: RuntimeConfig  # precision, compile, channels_last (the model's memory format)
    device: torch.device
    group: object = None  # the process group of a distributed run, else None

    def __post_init__(self):
        self.world = dist.get_world_size(self.group) if self.group is not None else 1
        self.amp_dtype = autocast_dtype(self.runtime.precision, self.device)
        channels_last = use_channels_last(self.runtime.channels_last, self.device)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        # dynamic=False: one graph per input size (the resolution schedule's few sizes), never a
        # dynamic-shape graph, which automatic dynamic shapes would compile on the second size
        self.forward = (torch.compile(self.model, mode=self.runtime.compile_mode, dynamic=False)
                        if self.runtime.compile else self.model)

    def loss(self, view1: torch.Tensor, view2: torch.Tensor, clock=NO_CLOCK) -> torch.Tensor:
        """The loss to backpropagate. Under DDP it is scaled by W: DDP averages the W ranks'
        gradients, each holding its rows' share, so x W gives the single-process gradient
        (see fastbt.train.losses). Divide by `self.world` to report it."""
        with autocast(self.device, self.amp_dtype):
            z1, z2 = self.forward(view1.contiguous(memory_format=self.memory_format),
                                  view2.contiguous(memory_format=self.memory_format))
        clock.lap("forward")
        return self.loss_fn(z1, z2, scale=self.world, group=self.group)

    def update(self) -> None:
        """Apply the accumulated gradients (LARS) and clear them."""
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def __call__(self, view1: torch.Tensor, view2: torch.Tensor, clock=NO_CLOCK) -> torch.Tensor:
        """One step; its phases lap `clock`: "forward", "loss", "backward", "optimizer"."""
        loss = self.loss(view1, view2, clock)
        clock.lap("loss")
        loss.backward()
        clock.lap("backward")
        self.update()
        clock.lap("optimizer")
        return loss.detach() / self.world


@contextlib.contextmanager
def no_host_syncs(device: str):
    """CUDA: torch's sync debug mode raises at any host sync. CPU has no syncs to catch, so reading
    a tensor on the host (what would be one on a GPU) raises instead."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            yield
        finally:
            torch.cuda.set_sync_debug_mode("default")
        return
    names = ("item", "tolist", "__bool__")
    saved = {name: getattr(torch.Tensor, name) for name in names}

    def refuse(*args, **kwargs):
        raise RuntimeError("a host read of a tensor inside the training step (a sync on a GPU)")
    for name in names:
        setattr(torch.Tensor, name, refuse)
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(torch.Tensor, name, fn)
