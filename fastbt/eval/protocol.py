"""The kNN protocol on frozen features (fastbt.eval.features), and what the protocols share: the
labeled sets from the config, where results go.

`fastbt eval knn` (`knn_eval`) and the online monitor of pretraining (`KnnEval`) share one path.
Each process extracts features of its share of the train and val sets (center crops; backbone in
eval mode, no grad, autocast as configured), L2-normalized, into a preallocated bank (fp16 on
CUDA: 1.28M x 2048 is 5.2 GB). The val features are gathered to every process, each process finds
every query's k nearest in its own train share, and the candidate lists are gathered and merged:
no process holds more than its share of the train bank. One process is the plain case of this.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from torch import Tensor, nn

from fastbt import dist
from fastbt.config import Config, EvalConfig
from fastbt.errors import ConfigError
from fastbt.eval.data import center_crops, train_and_val
from fastbt.eval.features import (Frozen, bank_dtype, eval_mode, extract_features, gather_columns,
                                  gather_rows, place)
from fastbt.eval.knn import accuracy, merge_nearest, nearest, topk_correct, vote
from fastbt.eval.weights import load_backbone
from fastbt.train.model import feature_width


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

