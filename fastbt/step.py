"""The training step: forward both views, the fused loss, backward, LARS. No host syncs inside.

The model's two-view forward is what `torch.compile` compiles (and autocast runs in bf16 on CUDA);
the loss op is a registered custom op that stays opaque either way, and LARS runs as foreach
kernels. The step returns the loss as a 0-dim device tensor: reading it (`.item()`) is the
caller's decision, made only every N steps. The step reports its phases to `clock`, which
`fastbt.run.Run.train` sets: a no-op by default, the profiler's phase clock when it measures.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from fastbt.ops import barlow_twins_loss
from fastbt.phase_clock import NO_CLOCK


def use_channels_last(setting: bool | None, device: torch.device) -> bool:
    """Channels-last by default on CUDA (tensor-core convolutions); on this kind of CPU the
    backward of channels-last convolutions measured ~7x slower than NCHW, so off there."""
    return device.type == "cuda" if setting is None else setting


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 on CUDA by default; fp32 on CPU, whose bf16 is ~10x slower than fp32 here."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


@dataclass
class TrainStep:
    model: nn.Module  # possibly DDP-wrapped; takes (view1, view2), returns (z1, z2)
    optimizer: torch.optim.Optimizer
    lambd: float
    loss_scale: float  # the user's loss.scale
    loss_mode: str
    device: torch.device
    precision: str = "auto"
    compile: bool = False
    compile_mode: str = "default"
    channels_last: bool = False  # the model's memory format; inputs are brought to it
    group: object = None  # the process group of a distributed run, else None
    clock: object = NO_CLOCK  # laps "forward", "loss", "backward", "optimizer"
    sync_grads: bool = True  # False: DDP skips the gradient all-reduce (a profiling window)

    def __post_init__(self):
        self.world = dist.get_world_size(self.group) if self.group is not None else 1
        self.amp_dtype = autocast_dtype(self.precision, self.device)
        self.memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        self.forward = torch.compile(self.model, mode=self.compile_mode) if self.compile else self.model

    def loss(self, view1: torch.Tensor, view2: torch.Tensor) -> torch.Tensor:
        """The loss to backpropagate. Under DDP it is scaled by W: DDP averages the W ranks'
        gradients, each holding its rows' share, so x W gives the single-process gradient
        (see fastbt.ops.barlow_twins_loss). Divide by `self.world` to report it."""
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                            enabled=self.amp_dtype is not None):
            z1, z2 = self.forward(view1.contiguous(memory_format=self.memory_format),
                                  view2.contiguous(memory_format=self.memory_format))
        self.clock.lap("forward")
        return barlow_twins_loss(z1, z2, self.lambd, scale=self.loss_scale * self.world,
                                 mode=self.loss_mode, group=self.group)

    def update(self) -> None:
        """Apply the accumulated gradients (LARS) and clear them."""
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def __call__(self, view1: torch.Tensor, view2: torch.Tensor) -> torch.Tensor:
        # DDP decides in the forward whether the backward communicates
        with contextlib.nullcontext() if self.sync_grads else self.model.no_sync():
            loss = self.loss(view1, view2)
            self.clock.lap("loss")
            loss.backward()
            self.clock.lap("backward")
        self.update()
        self.clock.lap("optimizer")
        return loss.detach() / self.world
