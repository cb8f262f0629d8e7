"""Frozen-backbone features, the common ground of the evaluation protocols (fastbt.eval.protocol: kNN,
fastbt.eval.linear: the linear head).

`Frozen` runs a backbone for its features only (no grad, training's autocast and memory format);
`extract_features` writes every batch's features (optionally L2-normalized) into a preallocated
bank (fp16 on CUDA: 1.28M x 2048 is 5.2 GB) instead of concatenating a list; `gather_rows` /
`gather_columns` join every process's share.
"""

from __future__ import annotations

import contextlib
from typing import Iterable

import torch
import torch.distributed as torch_dist
import torch.nn.functional as F
from torch import Tensor, nn

from fastbt.config import RuntimeConfig
from fastbt.precision import autocast_dtype, use_channels_last


class Frozen:
    """Runs a backbone for its features only: no grad, with training's autocast and memory format."""

    def __init__(self, backbone: nn.Module, amp_dtype: torch.dtype | None = None,
                 channels_last: bool = False):
        self.backbone = backbone
        self.amp_dtype = amp_dtype
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    @classmethod
    def configured(cls, backbone: nn.Module, runtime: RuntimeConfig, device: torch.device) -> Frozen:
        return cls(backbone, autocast_dtype(runtime.precision, device),
                   use_channels_last(runtime.channels_last, device))

    @torch.no_grad()
    def __call__(self, images: Tensor) -> Tensor:
        with torch.autocast(images.device.type, dtype=self.amp_dtype or torch.float32,
                            enabled=self.amp_dtype is not None):
            return self.backbone(images.contiguous(memory_format=self.memory_format))


def place(backbone: nn.Module, runtime: RuntimeConfig, device: torch.device) -> nn.Module:
    """Move a loaded backbone to the device, in the memory format training uses there."""
    channels_last = use_channels_last(runtime.channels_last, device)
    return backbone.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)


@contextlib.contextmanager
def eval_mode(module: nn.Module):
    """BatchNorm on its running statistics while inside; the module's mode is restored after."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


def bank_dtype(device: torch.device) -> torch.dtype:
    """Stored features: fp16 on CUDA halves their memory (a similarity in [-1, 1] or a linear
    head's input needs no more); fp32 on CPU, whose fp16 arithmetic is slow."""
    return torch.float16 if device.type == "cuda" else torch.float32


@torch.no_grad()
def extract_features(frozen: Frozen, batches: Iterable[tuple[Tensor, Tensor]], *, out: Tensor | None = None,
                     dtype: torch.dtype = torch.float32, normalize: bool = False) -> tuple[Tensor, Tensor]:
    """Features (optionally L2-normalized) and labels of every batch, on the batches' device.

    With `out` (preallocated, rows >= the number of images) features are written into it and its
    filled rows returned, instead of a list of batches and a concatenation that holds them twice."""
    chunks, labels, n = [], [], 0
    for images, batch_labels in batches:
        f = frozen(images).float()
        f = (F.normalize(f, dim=1) if normalize else f).to(dtype if out is None else out.dtype)
        if out is None:
            chunks.append(f)
        elif n + len(f) > len(out):
            raise RuntimeError(f"the loader yielded more than the {len(out)} images expected")
        else:
            out[n:n + len(f)] = f
        labels.append(batch_labels)
        n += len(f)
    features = torch.cat(chunks) if out is None else out[:n]
    labels = torch.cat(labels) if labels else torch.empty(0, dtype=torch.long, device=features.device)
    return features, labels


def _processes() -> int:
    return torch_dist.get_world_size() if torch_dist.is_available() and torch_dist.is_initialized() else 1


def gather_rows(x: Tensor) -> Tensor:
    """Every process's rows of `x`, concatenated in rank order (the counts may differ)."""
    world = _processes()
    if world == 1:
        return x
    count = torch.tensor([x.shape[0]], device=x.device)
    counts = [torch.empty_like(count) for _ in range(world)]
    torch_dist.all_gather(counts, count)
    counts = [int(c) for c in counts]
    padded = x.new_zeros((max(counts), *x.shape[1:]))  # all_gather wants one shape everywhere
    padded[:x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in range(world)]
    torch_dist.all_gather(parts, padded)
    return torch.cat([p[:c] for p, c in zip(parts, counts)])


def gather_columns(x: Tensor) -> Tensor:
    """Every process's `x` (one shape everywhere) side by side along dim 1, in rank order."""
    world = _processes()
    if world == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world)]
    torch_dist.all_gather(parts, x)
    return torch.cat(parts, dim=1)
