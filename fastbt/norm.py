"""Batch normalization over the global batch, as the recipe wants (SyncBN in the official code).

`GlobalBatchNorm` replaces every BatchNorm of the model on every device (CPU/gloo and CUDA/NCCL).
`nn.SyncBatchNorm` is not used: its forward reads a count tensor on the host (`count_all[mask]`,
one host sync per layer, ~110 per ResNet-50 two-view step) and torch.compile graph-breaks on it.

Here the statistics are plain torch ops around one differentiable all-gather per layer
(`gather_stats`, a traceable functional collective, which dynamo puts in the graph):
- each rank gathers every rank's per-channel (mean, M2), two-pass on its own rows, and combines
  them exactly (Chan et al.), as SyncBatchNorm does: no one-pass cancellation, one collective of
  W x 2C numbers; its backward is a reduce-scatter of the upstream gradients;
- the count is static, from the shapes and the world size (every rank has the same batch);
- no `.item()`, no data-dependent shapes; statistics in fp32 whatever the input dtype;
- running statistics as nn.BatchNorm updates them (unbiased variance over the global batch).
With one process there is nothing to synchronize and the model is left as it is.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


# torch 2.14 renamed all_gather_tensor (now a deprecated alias, a FutureWarning per call site) to
# all_gather_single; torch 2.11 has only the old name.
_all_gather = getattr(funcol, "all_gather_single", None) or funcol.all_gather_tensor


def gather_stats(t: torch.Tensor, group) -> torch.Tensor:
    """(K,) per rank -> (W, K): differentiable and traceable (its backward reduce-scatters)."""
    return _all_gather(t.unsqueeze(0), 0, group)


class GlobalBatchNorm(_BatchNorm):
    """BatchNorm{1,2,3}d with statistics over all processes of `group` (any device, any backend)."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, group=None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats)
        self.group = group if group is not None else (dist.group.WORLD if dist.is_initialized() else None)
        self.world_size = dist.get_world_size(self.group) if self.group is not None else 1

    def _check_input_dim(self, x):
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-D input, got {x.dim()}-D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training and self.track_running_stats:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                False, 0.0, self.eps)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        count = x.numel() // x.shape[1] * self.world_size  # static: every rank has the same batch
        xf = x.float()
        local_mean = xf.mean(dims)
        local_m2 = (xf - local_mean.view(shape)).square().sum(dims)
        if self.world_size > 1:  # combine the ranks' (mean, M2) exactly, as Chan et al.
            means, m2s = gather_stats(torch.cat([local_mean, local_m2]), self.group).chunk(2, dim=1)
            mean = means.mean(0)
            local_m2 = m2s.sum(0) + (means - mean).square().sum(0) * (count // self.world_size)
        else:
            mean = local_mean
        var = local_m2 / count  # biased, as BN normalizes with
        if self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach() * (count / max(count - 1, 1)))
        y = (xf - mean.view(shape)) * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)

    def _update_running_stats(self, mean: torch.Tensor, unbiased_var: torch.Tensor) -> None:
        self.num_batches_tracked.add_(1)
        # momentum None: a cumulative average, weight 1 / batches seen (a tensor: no host read)
        m = self.momentum if self.momentum is not None else 1.0 / self.num_batches_tracked
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), m)
        self.running_var.lerp_(unbiased_var.to(self.running_var.dtype), m)


def _replace_bn(module: nn.Module, make) -> nn.Module:
    if isinstance(module, _BatchNorm) and not isinstance(module, GlobalBatchNorm):
        new = make(module)
        if module.affine:
            with torch.no_grad():
                new.weight.copy_(module.weight)
                new.bias.copy_(module.bias)
        if module.track_running_stats:
            new.running_mean.copy_(module.running_mean)
            new.running_var.copy_(module.running_var)
            new.num_batches_tracked.copy_(module.num_batches_tracked)
        new.train(module.training)
        return new
    for name, child in module.named_children():
        module.add_module(name, _replace_bn(child, make))
    return module


def use_global_batch_norm(model: nn.Module, device: torch.device, group=None) -> nn.Module:
    """Make every BatchNorm of `model` normalize over the global batch of the process group.

    The same module on CUDA and CPU (not nn.SyncBatchNorm: see the module docstring).
    """
    if not dist.is_initialized() or dist.get_world_size(group) == 1:
        return model
    group = group if group is not None else dist.group.WORLD
    return _replace_bn(model, lambda bn: GlobalBatchNorm(
        bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats, group
    ).to(device=bn.running_mean.device if bn.track_running_stats else device))
