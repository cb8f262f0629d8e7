"""LARS, exactly as the official Barlow Twins code, and the learning-rate schedule as a pure function.

Parameters with `p.ndim == 1` (biases, BN weights and biases) go in their own group: no weight decay,
no LARS adaptation, and their own LR multiplier. The update, per parameter p with gradient g:

    g <- g + wd * p                                     (weights only)
    g <- g * (eta * |p| / |g|)   if |p| > 0 and |g| > 0 (weights only)
    mu <- momentum * mu + g
    p <- p - lr * mu

The step uses foreach kernels (a few launches per group, not per parameter) and never syncs with the
host: the trust ratio is computed with `torch.where` on device. With `compiled=True` each group's
update is one `torch.compile`d function (inductor fuses the foreach chain into a few kernels); the
LR goes in as a 0-dim tensor so a new LR every step does not recompile it.
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


def lars_update(params: list, grads: list, momenta: list, lr: float | torch.Tensor,
                weight_decay: float, momentum: float, eta: float, adapt: bool) -> None:
    """One group's LARS update, in place on params and momenta (see the module docstring)."""
    updates = grads
    if weight_decay:
        updates = torch._foreach_add(updates, params, alpha=weight_decay)
    if adapt:
        p_norm = torch.stack(torch._foreach_norm(params))
        u_norm = torch.stack(torch._foreach_norm(updates))
        trust = torch.where((p_norm > 0) & (u_norm > 0), eta * p_norm / u_norm, torch.ones_like(p_norm))
        updates = torch._foreach_mul(updates, list(trust.unbind()))
    torch._foreach_mul_(momenta, momentum)
    torch._foreach_add_(momenta, updates)
    if isinstance(lr, torch.Tensor):  # compiled: an input, so a new LR is not a new graph
        torch._foreach_add_(params, torch._foreach_mul(momenta, -lr))
    else:
        torch._foreach_add_(params, momenta, alpha=-lr)


_compiled_lars_update = None


def _compiled_update():
    global _compiled_lars_update
    if _compiled_lars_update is None:
        _compiled_lars_update = torch.compile(lars_update, fullgraph=True)
    return _compiled_lars_update


class LARS(torch.optim.Optimizer):
    def __init__(self, params: Iterable, lr: float = 0.0, weight_decay: float = 0.0,
                 momentum: float = 0.9, eta: float = 0.001, adapt: bool = True,
                 compiled: bool = False):
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, eta=eta, adapt=adapt)
        super().__init__(params, defaults)
        self.compiled = compiled

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
            momenta = [self._momentum_buffer(p) for p in params]
            lr = group["lr"]
            if self.compiled:  # a CPU 0-dim tensor: a kernel argument, never copied to the GPU
                lr = torch.tensor(float(lr), dtype=torch.float32)
            (_compiled_update() if self.compiled else lars_update)(params, [p.grad for p in params], momenta, lr, group["weight_decay"],
                        group["momentum"], group["eta"], group["adapt"])
        return loss

    def _momentum_buffer(self, p: torch.Tensor) -> torch.Tensor:
        state = self.state[p]
        if "mu" not in state:
            state["mu"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state["mu"]


def build_optimizer(model: nn.Module, weight_decay: float, momentum: float, eta: float,
                    compiled: bool = False) -> LARS:
    return LARS(param_groups(model, weight_decay), lr=0.0, momentum=momentum, eta=eta, compiled=compiled)


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
