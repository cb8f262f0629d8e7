"""Frozen-feature evaluation of a backbone: feature extraction and the kNN protocol.

`fastbt eval knn` (`knn_eval`) and the online monitor of pretraining (`KnnEval`) share one path.
Each process extracts features of its share of the train and val sets (center crops; backbone in
eval mode, no grad, autocast as configured), L2-normalized, into a preallocated bank (fp16 on
CUDA: 1.28M x 2048 is 5.2 GB). The val features are gathered to every process, each process finds
every query's k nearest in its own train share, and the candidate lists are gathered and merged:
no process holds more than its share of the train bank. One process is the plain case of this.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Iterable

import torch
import torch.distributed as torch_dist
import torch.nn.functional as F
from torch import Tensor, nn

from fastbt import dist
from fastbt.config import Config, EvalConfig, RuntimeConfig
from fastbt.errors import ConfigError
from fastbt.eval_data import center_crops, train_and_val
from fastbt.knn import (accuracy, knn_predict, merge_nearest, nearest, topk_accuracy, topk_correct,
                        vote)
from fastbt.model import feature_width
from fastbt.precision import autocast_dtype, use_channels_last
from fastbt.weights import load_backbone


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


def knn_correct(bank: Tensor, bank_labels: Tensor, queries: Tensor, query_labels: Tensor,
                num_classes: int, k: int, temperature: float) -> tuple[Tensor, int]:
    """Top-1/top-5 hit counts and the number of queries, all processes' queries against all
    processes' bank shards (L2-normalized rows); every process gets the same answer."""
    queries, query_labels = gather_rows(queries), gather_rows(query_labels)
    sims, labels = nearest(bank, bank_labels, queries, k)
    sims, labels = merge_nearest(gather_columns(sims), gather_columns(labels), k)
    return topk_correct(vote(sims, labels, num_classes, temperature), query_labels), len(query_labels)


def labeled_paths(ev: EvalConfig) -> tuple[str, str]:
    for key in ("train", "val"):
        if not getattr(ev, key):
            raise ConfigError(f"config key 'eval.{key}' is empty: name a labeled {key} set "
                              "(an image folder or a converted dataset folder)")
    return ev.train, ev.val


class KnnEval:
    """kNN top-1/top-5 (%) of a backbone on cfg.eval's labeled sets. Built once (it checks the sets
    and makes their loaders), called for each evaluation; every process of a run takes part."""

    def __init__(self, cfg: Config, device: torch.device, rank: int = 0, world_size: int = 1):
        self.cfg, self.device = cfg, device
        self.train, self.val = train_and_val(*labeled_paths(cfg.eval))
        ev = cfg.eval
        self.loaders = [center_crops(s, size=ev.size, resize=ev.resize, aug=cfg.aug, batch_size=ev.batch_size,
                                     device=device, rank=rank, world_size=world_size,
                                     workers=cfg.data.workers)
                        for s in (self.train, self.val)]
        self.capacities = [-(-s.size // world_size) for s in (self.train, self.val)]  # a rank's share
        self.width = feature_width(cfg.model.arch)

    def due(self, epoch: int) -> bool:
        """Whether the monitor runs after `epoch` epochs (eval.knn.every_epochs; 0: never)."""
        every = self.cfg.eval.knn.every_epochs
        return every > 0 and epoch > 0 and epoch % every == 0

    def __call__(self, backbone: nn.Module) -> dict[str, float]:
        frozen = Frozen.configured(backbone, self.cfg.runtime, self.device)
        with eval_mode(backbone):
            (bank, bank_labels), (queries, labels) = [
                extract_features(frozen, loader, normalize=True, out=torch.empty(
                    capacity, self.width, dtype=bank_dtype(self.device), device=self.device))
                for loader, capacity in zip(self.loaders, self.capacities)]
        knn = self.cfg.eval.knn
        correct, total = knn_correct(bank, bank_labels, queries, labels, len(self.train.classes),
                                     knn.k, knn.temperature)
        return accuracy(correct, total)


def knn_eval(cfg: Config, weights: str | Path, out: str | Path | None = None) -> dict:
    """`fastbt eval knn`: kNN accuracy of a weights file; the result is written as JSON (default:
    beside the weights, <name>_knn.json) and returned."""
    device = dist.pick_device(cfg.runtime.device, 0)
    backbone, _ = load_backbone(weights, cfg.model.arch)
    knn = KnnEval(cfg, device)
    place(backbone, cfg.runtime, device)
    start = time.perf_counter()
    acc = knn(backbone)
    result = {"weights": str(weights), "arch": cfg.model.arch, **acc, "k": cfg.eval.knn.k,
              "temperature": cfg.eval.knn.temperature, "train": knn.train.path, "val": knn.val.path,
              "num_train": knn.train.size, "num_val": knn.val.size, "size": cfg.eval.size,
              "resize": cfg.eval.resize, "device": str(device), "seconds": time.perf_counter() - start}
    write_result(result, Path(out) if out else beside(weights, "knn"))
    return result


def beside(weights: str | Path, what: str) -> Path:
    weights = Path(weights)
    return weights.with_name(f"{weights.stem}_{what}.json")


def write_result(result: dict, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    tmp.replace(path)


def knn_accuracy(backbone: nn.Module, train: Iterable, val: Iterable, num_classes: int,
                 device: torch.device, k: int, temperature: float) -> dict[str, float]:
    """Weighted kNN top-1/top-5 (%) of val against train batches, in one process."""
    frozen = Frozen(backbone)
    with eval_mode(backbone):
        bank, bank_labels = extract_features(frozen, train, dtype=bank_dtype(device), normalize=True)
        queries, labels = extract_features(frozen, val, dtype=bank_dtype(device), normalize=True)
    return topk_accuracy(knn_predict(bank, bank_labels, queries, num_classes, k, temperature), labels)
