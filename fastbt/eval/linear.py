"""`fastbt eval linear`: the linear probe of a frozen backbone, the official recipe.

As facebookresearch/barlowtwins evaluate.py with frozen weights: the backbone in eval mode (its
BatchNorm on running statistics), a linear head on its features initialized N(0, 0.01) with zero
bias, SGD (momentum 0.9, weight decay 1e-6, batch 256), lr 0.3 on a cosine schedule stepped once
per epoch, 100 epochs; training images random-resized-crop + flip, val images resize 256 + center
crop 224. Every number is in cfg.eval (eval.linear for the training ones).

The backbone never changes, so the val features are extracted once and the head is scored on them
after every epoch. With `cached=True` the train features are extracted once too (center crops, no
augmentation) and the head trains on those: a fast, approximate probe.

The probe's directory holds log.jsonl (one record per epoch: loss, lr, top-1, top-5) and a
checkpoint after every epoch (atomic, the two newest kept); the same command run again resumes
from the newest. The result is written as JSON to <probe directory>.json (beside the weights by default).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastbt import config, dist
from fastbt.config import Config
from fastbt.eval import evaldir
from fastbt.eval.data import LabeledSet, center_crops, random_crops, train_and_val
from fastbt.eval.features import Frozen, bank_dtype, extract_features, place
from fastbt.eval.knn import accuracy, topk_correct
from fastbt.eval.protocol import beside, labeled_paths, write_result
from fastbt.eval.weights import load_backbone
from fastbt.train import rundir
from pipelines.augment import ViewSpec, normalize, to_float

Batches = Callable[[int], Iterator[tuple[Tensor, Tensor]]]  # epoch -> (features, labels) batches


def cosine_lr(base: float, epoch: int, epochs: int) -> float:
    """torch's CosineAnnealingLR(T_max=epochs) stepped once per epoch, as the official probe."""
    return base * 0.5 * (1 + math.cos(math.pi * epoch / epochs))


def build_head(width: int, num_classes: int, std: float, seed: int) -> nn.Linear:
    head = nn.Linear(width, num_classes)
    with torch.no_grad():
        head.weight.normal_(0.0, std, generator=torch.Generator().manual_seed(seed))
        head.bias.zero_()
    return head


def cached_batches(features: Tensor, labels: Tensor, batch_size: int, seed: int) -> Batches:
    """Shuffled batches of precomputed features, a seeded order per epoch (the last one partial)."""
    def epoch_batches(epoch: int):
        order = torch.randperm(len(features), generator=torch.Generator().manual_seed(seed + epoch))
        for idx in order.to(features.device).split(batch_size):
            yield features[idx].float(), labels[idx]
    return epoch_batches


def augmented_batches(crops, frozen: Frozen, mean, std) -> Batches:
    """Features of freshly cropped and flipped images (crops seeded per epoch; partial batch dropped)."""
    def epoch_batches(epoch: int):
        crops.set_epoch(epoch)
        for images, _second_crop, labels in crops:
            yield frozen(normalize(to_float(images), mean, std)).float(), labels
    return epoch_batches


def train_epoch(head: nn.Module, optimizer: torch.optim.Optimizer,
                batches: Iterator[tuple[Tensor, Tensor]]) -> tuple[float, int]:
    """One pass of cross-entropy SGD steps; the mean loss (one host sync, at the end) and count."""
    loss_sum, images = None, 0
    for features, labels in batches:
        loss = F.cross_entropy(head(features), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum = loss.detach() * len(labels) + (0 if loss_sum is None else loss_sum)
        images += len(labels)
    return (loss_sum.item() / images if images else float("nan")), images


@torch.no_grad()
def head_accuracy(head: nn.Module, features: Tensor, labels: Tensor, chunk: int = 8192) -> dict[str, float]:
    correct = sum(topk_correct(head(f.float()), y)
                  for f, y in zip(features.split(chunk), labels.split(chunk)))
    return accuracy(correct, len(labels))


def check_batches(train: LabeledSet, batch_size: int, cached: bool) -> None:
    """The augmented probe drops each epoch's last partial batch: fewer images than a batch would
    train the head on none, and report the untrained head's accuracy."""
    if not cached:
        evaldir.refuse_empty_epochs(train.size, batch_size, "eval.linear.batch_size", train.path)


def _probe_data(cfg: Config, frozen: Frozen, width: int, train, val, cached: bool, device):
    """(the head's training batches by epoch, (val features, val labels)): training batches are
    random crops through the frozen backbone, or with `cached` features of center crops."""
    ev, lin = cfg.eval, cfg.eval.linear

    def features_of(data):
        batches = center_crops(data, size=ev.size, resize=ev.resize, aug=cfg.aug, batch_size=ev.batch_size,
                               device=device, workers=cfg.data.workers)
        out = torch.empty(data.size, width, dtype=bank_dtype(device), device=device)
        return extract_features(frozen, batches, out=out)

    val_features = features_of(val)
    if cached:
        return cached_batches(*features_of(train), lin.batch_size, lin.seed), val_features
    view = ViewSpec(crop_scale=lin.crop_scale, jitter_p=0.0, gray_p=0.0, blur_p=0.0, solarize_p=0.0)
    crops = random_crops(train, view=view, size=ev.size, interpolation=lin.interpolation,
                         batch_size=lin.batch_size, device=device, seed=lin.seed, workers=cfg.data.workers)
    return augmented_batches(crops, frozen, cfg.aug.mean, cfg.aug.std), val_features


def _train_head(lin, head: nn.Module, optimizer, train_batches, val: tuple, saved: dict | None,
                out_dir: Path, setup: dict) -> list[dict]:
    """The epochs not done yet (resumed from `saved`), a checkpoint and a log record after each;
    returns every epoch's record."""
    def one_epoch(epoch: int) -> dict:
        epoch_start = time.perf_counter()
        lr = cosine_lr(lin.lr, epoch, lin.epochs)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss, images = train_epoch(head, optimizer, train_batches(epoch))
        return {"lr": lr, "train_loss": loss, **head_accuracy(head, *val), "train_images": images,
                "seconds": time.perf_counter() - epoch_start}

    return evaldir.run_epochs(lin.epochs, {"head": head, "optimizer": optimizer}, one_epoch, saved,
                              out_dir, setup, "linear probe")


def linear_probe(cfg: Config, weights: str | Path, cached: bool = False,
                 out_dir: str | Path | None = None) -> dict:
    """Train and score the linear head; returns the result (also written to <out_dir>.json)."""
    ev, lin = cfg.eval, cfg.eval.linear
    name = "linear_cached" if cached else "linear"
    out_dir = Path(out_dir) if out_dir else Path(weights).with_name(f"{Path(weights).stem}_{name}")
    rundir.refuse_run_dir(out_dir, "the linear probe")
    device = dist.pick_device(cfg.runtime.device, 0)
    backbone, width = load_backbone(weights, cfg.model.arch)
    train, val = train_and_val(*labeled_paths(ev))
    check_batches(train, lin.batch_size, cached)
    # What the result depends on; a checkpoint made with anything else is not resumed.
    setup = {"weights": str(Path(weights).resolve()), "arch": cfg.model.arch, "cached": cached,
             "train": train.path, "val": val.path, "size": ev.size, "resize": ev.resize,
             "mean": list(cfg.aug.mean), "std": list(cfg.aug.std),
             **{f"eval.linear.{k}": v for k, v in config.to_dict(lin).items()}}
    evaldir.claim_out_dir(out_dir, setup, "linear probe")
    saved = evaldir.load_saved(out_dir, setup, "linear probe", device)

    place(backbone, cfg.runtime, device).eval().requires_grad_(False)
    frozen = Frozen.configured(backbone, cfg.runtime, device)
    start = time.perf_counter()
    train_batches, (val_features, val_labels) = _probe_data(cfg, frozen, width, train, val, cached, device)
    extract_seconds = time.perf_counter() - start

    head = build_head(width, len(train.classes), lin.init_std, lin.seed).to(device)
    optimizer = torch.optim.SGD(head.parameters(), lr=lin.lr, momentum=lin.momentum,
                                weight_decay=lin.weight_decay)
    history = _train_head(lin, head, optimizer, train_batches, (val_features, val_labels), saved,
                          out_dir, setup)
    last = history[-1]
    result = {"weights": str(weights), "arch": cfg.model.arch, "cached_features": cached,
              "top1": last["top1"], "top5": last["top5"], "best_top1": max(r["top1"] for r in history),
              "epochs": lin.epochs, "train": train.path, "val": val.path, "num_train": train.size,
              "num_val": val.size, "recipe": config.to_dict(lin), "size": ev.size, "resize": ev.resize,
              "out_dir": str(out_dir), "device": str(device), "extract_seconds": extract_seconds,
              "train_seconds": sum(r["seconds"] for r in history)}
    write_result(result, evaldir.result_path(out_dir))
    return result
