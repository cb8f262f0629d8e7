"""Batch normalization over the global batch, as the recipe wants (SyncBN in the official code).

On CUDA this is `torch.nn.SyncBatchNorm`. SyncBatchNorm refuses CPU tensors, so on CPU (gloo) the
same statistics come from `GlobalBatchNorm`: plain-torch batch norm whose sums go through
autograd-aware all-reduces, so forward and backward both see the global batch. With one process
there is nothing to synchronize and the model is left as it is.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


class GlobalBatchNorm(_BatchNorm):
    """BatchNorm{1,2}d with statistics over all processes of `group` (any device, any backend)."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, group=None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats)
        self.group = group

    def _check_input_dim(self, x):
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-D input, got {x.dim()}-D")

    def _all_sum(self, t: torch.Tensor) -> torch.Tensor:
        return dist_fn.all_reduce(t, op=dist.ReduceOp.SUM, group=self.group or dist.group.WORLD)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                False, 0.0, self.eps)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        local_count = torch.tensor([x.numel() // x.shape[1]], dtype=x.dtype, device=x.device)
        sums = self._all_sum(torch.cat([x.sum(dims), local_count]))
        count = sums[-1]
        mean = sums[:-1] / count
        centered = x - mean.view(shape)
        var = self._all_sum(centered.square().sum(dims)) / count  # biased, as BN normalizes with
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.detach(), m)
                self.running_var.lerp_(var.detach() * count / (count - 1), m)  # unbiased, as BN
        y = centered * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def _replace_bn(module: nn.Module, make) -> nn.Module:
    if isinstance(module, _BatchNorm) and not isinstance(module, (GlobalBatchNorm, nn.SyncBatchNorm)):
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
    """Make every BatchNorm of `model` normalize over the global batch of the process group."""
    if not dist.is_initialized() or dist.get_world_size(group) == 1:
        return model
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model, group)
    return _replace_bn(model, lambda bn: GlobalBatchNorm(
        bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats, group
    ).to(device=bn.running_mean.device if bn.track_running_stats else device))
