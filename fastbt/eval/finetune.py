"""`fastbt eval finetune`: semi-supervised fine-tuning of the whole network, the official recipe.

As facebookresearch/barlowtwins evaluate.py with `--weights finetune`: the backbone and a linear
classifier (N(0, 0.01) weights, zero bias) train together in train mode (plain BatchNorm on batch
statistics, not synchronized across processes); SGD with momentum 0.9 and one weight decay, two
learning rates (backbone, classifier) each on a cosine schedule stepped once per epoch; training
images random-resized-crop + flip, val images resize + center crop; top-1/top-5 on val after every
epoch. Defaults: the README's 1% / 10% command (20 epochs, batch 256, lr 0.002 / 0.5, no weight
decay); every number is in cfg.eval.finetune.

Labels: a SimCLR-style list file (`--subset`), else a seeded class-balanced draw of
`--train-percent` (fastbt.eval.subset). Under torchrun the global batch is split over the
processes (DDP), each reading its share of the subset; one process on CPU. The directory, its
log.jsonl, checkpoints and resume are those of `eval linear` (fastbt.eval.evaldir); the result is
written as JSON to <directory>.json.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.distributed as torch_dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from fastbt import config, dist
from fastbt.config import Config
from fastbt.errors import ConfigError
from fastbt.eval import evaldir, subset
from fastbt.eval.data import center_crops, random_crops, train_and_val
from fastbt.eval.knn import accuracy, topk_correct
from fastbt.eval.features import place
from fastbt.eval.linear import augmented_batches, build_head, cosine_lr, train_epoch
from fastbt.eval.protocol import labeled_paths, write_result
from fastbt.eval.weights import load_backbone
from fastbt.precision import autocast_dtype, use_channels_last
from fastbt.train import rundir
import pipelines
from pipelines.augment import ViewSpec
from pipelines.convert.source import scan

WHAT = "fine-tuning"


def choose_labels(train, percent: int | None, subset_file: str | None, seed: int) -> subset.Subset:
    """The labeled part of the train set: the list file's images, else a draw of `percent` (100:
    all). A subset is read from an image folder; a converted dataset can only be used whole."""
    if subset_file is not None and percent is not None:
        raise ConfigError("--subset and --train-percent both given: the list file is the subset; give one")
    percent = 100 if percent is None else percent
    subset.check_percent(percent)
    converted = pipelines.backend(train.format).converted
    if converted and subset_file is None and percent == 100:
        return subset.whole(train.size)
    if converted:
        raise ConfigError(f"{train.path}: a label subset is read from an image folder, and this is a "
                          f"converted {train.format} dataset; give the image folder it was made from")
    samples = scan(train.path).samples
    if subset_file is not None:
        return subset.from_list(samples, len(train.classes), subset_file, train.path)
    return subset.draw(samples, train.classes, percent, seed)


def default_out_dir(weights: str | Path, percent: int | None, subset_file: str | None) -> Path:
    """<weights stem>_finetune<percent> (or _finetune_<list file stem>) beside the weights."""
    tag = f"_{Path(subset_file).stem}" if subset_file else str(100 if percent is None else percent)
    return Path(weights).with_name(f"{Path(weights).stem}_finetune{tag}")


def build_optimizer(backbone: nn.Module, head: nn.Module, ft) -> torch.optim.SGD:
    """Two groups, as the official code: [classifier, backbone], one momentum and weight decay."""
    groups = [{"params": head.parameters(), "lr": ft.lr_classifier},
              {"params": backbone.parameters(), "lr": ft.lr_backbone}]
    return torch.optim.SGD(groups, lr=0.0, momentum=ft.momentum, weight_decay=ft.weight_decay)


class Forward:
    """A module's logits (fp32) with the run's autocast and memory format."""

    def __init__(self, module: nn.Module, cfg: Config, device: torch.device):
        self.module, self.device_type = module, device.type
        self.amp_dtype = autocast_dtype(cfg.runtime.precision, device)
        channels_last = use_channels_last(cfg.runtime.channels_last, device)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device_type, dtype=self.amp_dtype or torch.float32,
                            enabled=self.amp_dtype is not None):
            return self.module(images.contiguous(memory_format=self.memory_format)).float()


def summed(values: list[float], world: dist.World) -> list[float]:
    """`values` added over every process (the same list on each)."""
    if not world.distributed:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=world.device)
    torch_dist.all_reduce(t)
    return t.tolist()


@torch.no_grad()
def val_accuracy(forward: Forward, val_batches, world: dist.World) -> dict[str, float]:
    """Top-1/top-5 (%) over every process's share of the val set; BatchNorm on running statistics,
    the first process's (as the official code, which scores its model alone; it is the one saved)."""
    if world.distributed:
        for buffer in forward.module.buffers():
            torch_dist.broadcast(buffer, 0)
    forward.module.eval()
    correct, images = torch.zeros(2, device=world.device), 0
    for batch, labels in val_batches:
        correct += topk_correct(forward(batch), labels)
        images += len(labels)
    forward.module.train()
    *correct, images = summed([*correct.tolist(), images], world)
    return accuracy(torch.tensor(correct), int(images))


def epoch_runner(cfg: Config, model: nn.Sequential, optimizer, crops, val_batches, world: dist.World):
    """epoch -> its log record: one pass of SGD over this process's crops, then val accuracy."""
    ft = cfg.eval.finetune
    wrapped = model
    if world.distributed:  # plain BatchNorm, as the official code (no SyncBatchNorm)
        on_gpu = world.device.type == "cuda"
        wrapped = DistributedDataParallel(model, device_ids=[world.device] if on_gpu else None)
    train_forward, eval_forward = Forward(wrapped, cfg, world.device), Forward(model, cfg, world.device)
    train_batches = augmented_batches(crops, lambda images: images, cfg.aug.mean, cfg.aug.std)

    def one_epoch(epoch: int) -> dict:
        start = time.perf_counter()
        lrs = {"lr_classifier": cosine_lr(ft.lr_classifier, epoch, ft.epochs),
               "lr_backbone": cosine_lr(ft.lr_backbone, epoch, ft.epochs)}
        for group, lr in zip(optimizer.param_groups, lrs.values()):
            group["lr"] = lr
        model.train()
        loss, images = train_epoch(train_forward, optimizer, train_batches(epoch))
        loss_sum, images = summed([loss * images, images], world)
        scores = val_accuracy(eval_forward, val_batches, world)
        return {"train_loss": loss_sum / max(1, images), **lrs, **scores, "train_images": int(images),
                "seconds": time.perf_counter() - start}
    return one_epoch


def claim(out_dir: Path, setup: dict, world: dist.World) -> None:
    """Every process checks the directory before one of them writes its marker."""
    new = evaldir.check_out_dir(out_dir, setup, WHAT)
    if world.distributed:
        torch_dist.barrier()
    if new and world.is_main:
        evaldir.write_marker(out_dir, setup)
    if world.distributed:
        torch_dist.barrier()


def finetune(cfg: Config, weights: str | Path, percent: int | None = None, subset_file: str | None = None,
             out_dir: str | Path | None = None) -> dict:
    """Fine-tune and score; returns the result (also written to <out_dir>.json by the first process)."""
    with dist.joined(cfg.runtime.device, cfg.runtime.dist_timeout_s) as world, \
            dist.lost_peers_stop_the_run(world):
        return _finetune(cfg, weights, percent, subset_file, out_dir, world)


def _finetune(cfg: Config, weights, percent, subset_file, out_dir, world: dist.World) -> dict:
    ev, ft = cfg.eval, cfg.eval.finetune
    out_dir = Path(out_dir) if out_dir else default_out_dir(weights, percent, subset_file)
    rundir.refuse_run_dir(out_dir, WHAT)
    backbone, width = load_backbone(weights, cfg.model.arch)
    train, val = train_and_val(*labeled_paths(ev))
    labels = choose_labels(train, percent, subset_file, ft.seed)
    evaldir.refuse_empty_epochs(labels.size, ft.batch_size, "eval.finetune.batch_size",
                                f"the labeled subset ({labels.source}) of {train.path}", world.size)
    # What the result depends on; a checkpoint made with anything else is not resumed.
    setup = {"eval": "finetune", "weights": str(Path(weights).resolve()), "arch": cfg.model.arch,
             "train": train.path, "val": val.path, "subset_sha256": labels.sha256, "subset_size": labels.size,
             "size": ev.size, "resize": ev.resize, "mean": list(cfg.aug.mean), "std": list(cfg.aug.std),
             "processes": world.size, **{f"eval.finetune.{k}": v for k, v in config.to_dict(ft).items()}}
    claim(out_dir, setup, world)
    saved = evaldir.load_saved(out_dir, setup, WHAT, world.device)

    head = build_head(width, len(train.classes), ft.init_std, ft.seed)
    model = place(nn.Sequential(backbone, head), cfg.runtime, world.device)
    optimizer = build_optimizer(backbone, head, ft)
    view = ViewSpec(crop_scale=ft.crop_scale, jitter_p=0.0, gray_p=0.0, blur_p=0.0, solarize_p=0.0)
    crops = random_crops(train, view=view, size=ev.size, interpolation=ft.interpolation,
                         batch_size=ft.batch_size // world.size, device=world.device, seed=ft.seed,
                         workers=cfg.data.workers, rank=world.rank, world_size=world.size, subset=labels.indices)
    val_batches = center_crops(val, size=ev.size, resize=ev.resize, aug=cfg.aug, batch_size=ev.batch_size,
                               device=world.device, rank=world.rank, world_size=world.size,
                               workers=cfg.data.workers)
    one_epoch = epoch_runner(cfg, model, optimizer, crops, val_batches, world)
    history = evaldir.run_epochs(ft.epochs, {"model": model, "optimizer": optimizer}, one_epoch, saved,
                                 out_dir, setup, WHAT, writes=world.is_main)
    last = history[-1]
    result = {"weights": str(weights), "arch": cfg.model.arch, "top1": last["top1"], "top5": last["top5"],
              "best_top1": max(r["top1"] for r in history), "best_top5": max(r["top5"] for r in history),
              "epochs": ft.epochs, "train": train.path, "val": val.path, "num_train": train.size,
              "num_labeled": labels.size, "subset": labels.record(), "num_val": val.size,
              "recipe": config.to_dict(ft), "size": ev.size, "resize": ev.resize, "out_dir": str(out_dir),
              "device": str(world.device), "processes": world.size,
              "train_seconds": sum(r["seconds"] for r in history)}
    if world.is_main:
        write_result(result, evaldir.result_path(out_dir))
    return result
