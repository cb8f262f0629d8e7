"""Redundancy-reduction objectives by name: `loss.name` picks a builder from `LOSSES`.

A builder takes the config's loss section and returns the loss the training step calls:

    loss(z1, z2, *, scale, group) -> 0-dim fp32 tensor

z1, z2 are this process's projector outputs for the two views (N_local x D). `scale` multiplies the
value (the step passes the world size: DDP averages the ranks' gradients). In a distributed run
`group` is the process group and the value must be that of the global batch, each rank's gradient
its rows' share of the global gradient (as `fastbt.train.ops.barlow_twins_loss` does); alone it is None.

Adding an objective: write its builder below and add one line to LOSSES; its own settings, if any,
go in `config.LossConfig` (the only home of their defaults).
"""

from __future__ import annotations

from typing import Protocol

from torch import Tensor

from fastbt.config import LossConfig
from fastbt.registry import Registry
from fastbt.train.ops import barlow_twins_loss


class Loss(Protocol):
    def __call__(self, z1: Tensor, z2: Tensor, *, scale: float, group) -> Tensor: ...


def barlow_twins(cfg: LossConfig) -> Loss:
    """The paper's loss, computed by the fused op: on-diagonal terms to 1, off-diagonal (weighted
    by loss.lambd) to 0; loss.mode chooses how the op computes it, loss.scale multiplies it."""
    def loss(z1: Tensor, z2: Tensor, *, scale: float, group) -> Tensor:
        return barlow_twins_loss(z1, z2, cfg.lambd, scale=cfg.scale * scale, mode=cfg.mode, group=group)
    return loss


LOSSES: Registry = Registry("loss", {  # name -> builder (LossConfig) -> Loss
    "barlow_twins": barlow_twins,
})


def build_loss(cfg: LossConfig) -> Loss:
    return LOSSES[cfg.name](cfg)
