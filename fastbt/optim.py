"""LARS, exactly as the official Barlow Twins code, and the learning-rate schedule as a pure function.

Parameters with `p.ndim == 1` (biases, BN weights and biases) go in their own group: no weight decay,
no LARS adaptation, and their own LR multiplier. The update, per parameter p with gradient g:

    g <- g + wd * p                                     (weights only)
    g <- g * (eta * |p| / |g|)   if |p| > 0 and |g| > 0 (weights only)
    mu <- momentum * mu + g
    p <- p - lr * mu

The step uses foreach kernels (a few launches per group, not per parameter) and never syncs with the
host: the trust ratio is computed with `torch.where` on device.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import torch
from torch import nn


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """[weights (decay + adaptation), biases and norms (neither)], in the order `lr_at` returns."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.ndim != 1], "weight_decay": weight_decay, "adapt": True},
        {"params": [p for p in params if p.ndim == 1], "weight_decay": 0.0, "adapt": False},
    ]


class LARS(torch.optim.Optimizer):
    def __init__(self, params: Iterable, lr: float = 0.0, weight_decay: float = 0.0,
                 momentum: float = 0.9, eta: float = 0.001, adapt: bool = True):
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, eta=eta, adapt=adapt)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            updates = [p.grad for p in params]
            if group["weight_decay"]:
                updates = torch._foreach_add(updates, params, alpha=group["weight_decay"])
            if group["adapt"]:
                p_norm = torch.stack(torch._foreach_norm(params))
                u_norm = torch.stack(torch._foreach_norm(updates))
                trust = torch.where((p_norm > 0) & (u_norm > 0),
                                    group["eta"] * p_norm / u_norm, torch.ones_like(p_norm))
                updates = torch._foreach_mul(updates, list(trust.unbind()))
            momenta = [self._momentum_buffer(p) for p in params]
            torch._foreach_mul_(momenta, group["momentum"])
            torch._foreach_add_(momenta, updates)
            torch._foreach_add_(params, momenta, alpha=-group["lr"])
        return loss

    def _momentum_buffer(self, p: torch.Tensor) -> torch.Tensor:
        state = self.state[p]
        if "mu" not in state:
            state["mu"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state["mu"]


def build_optimizer(model: nn.Module, weight_decay: float, momentum: float, eta: float) -> LARS:
    return LARS(param_groups(model, weight_decay), lr=0.0, momentum=momentum, eta=eta)


def lr_at(step: int, *, total_steps: int, warmup_steps: int, base_lr: float, final_ratio: float,
          multipliers: Sequence[float]) -> tuple[float, ...]:
    """The LR of each parameter group at `step` (0-based): linear warmup from 0, then cosine.

    The cosine goes from `base_lr` at the end of warmup to `base_lr * final_ratio` at `total_steps`.
    """
    if step < warmup_steps:
        lr = base_lr * step / warmup_steps
    else:
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        q = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        end_lr = base_lr * final_ratio
        lr = base_lr * q + end_lr * (1 - q)
    return tuple(lr * m for m in multipliers)


def set_lr(optimizer: torch.optim.Optimizer, lrs: Sequence[float]) -> None:
    for group, lr in zip(optimizer.param_groups, lrs):
        group["lr"] = lr
