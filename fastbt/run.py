"""`build_run(cfg, world)`: the parts of a pretraining run, built and wired, ready to step.

Seeding, the loader (this rank's shard), the values derived from the config and the dataset size,
the model with global-batch BN (DDP-wrapped for several processes), LARS and the TrainStep. The
loop (`fastbt.loop`) and the profiler (`fastbt.profile`) both start from here, so what the profiler
measures is what pretraining runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as torch_dist
from torch import nn

import pipelines
from fastbt import config, dist
from fastbt.config import Config, Derived
from fastbt.model import build_model
from fastbt.norm import use_global_batch_norm
from fastbt.optim import build_optimizer, lr_at, set_lr
from fastbt.step import TrainStep, use_channels_last
from pipelines.loader import TwoViewLoader


@dataclass
class Run:
    cfg: Config
    world: dist.World
    loader: TwoViewLoader
    derived: Derived
    model: nn.Module  # unwrapped: what checkpoints hold
    optimizer: torch.optim.Optimizer
    train_step: TrainStep  # steps the DDP-wrapped model when distributed

    def set_lr(self, step: int) -> tuple[float, ...]:
        """Set each parameter group's LR for `step` (0-based) of the schedule; return them."""
        lrs = lr_at(step, total_steps=self.derived.total_steps, warmup_steps=self.derived.warmup_steps,
                    base_lr=self.derived.base_lr, final_ratio=self.cfg.optim.final_lr_ratio,
                    multipliers=(self.cfg.optim.lr_weights, self.cfg.optim.lr_biases))
        set_lr(self.optimizer, lrs)
        return lrs


def build_run(cfg: Config, world: dist.World) -> Run:
    dist.seed_everything(cfg.train.seed)
    group = torch_dist.group.WORLD if world.distributed else None

    loader = pipelines.build_loader(
        cfg.data.backend, cfg.data.path, aug=cfg.aug, batch_size=config.per_device_batch(cfg, world.size),
        device=world.device, rank=world.rank, world_size=world.size, seed=cfg.train.seed,
        workers=cfg.data.workers)
    derived = config.derive(cfg, world.size, loader.dataset_size)
    if len(loader) != derived.steps_per_epoch:
        raise RuntimeError(f"the {cfg.data.backend} loader gives {len(loader)} batches per epoch on "
                           f"rank {world.rank}, expected {derived.steps_per_epoch}")

    channels_last = use_channels_last(cfg.runtime.channels_last, world.device)
    model = build_model(cfg.model.arch, cfg.model.projector, channels_last).to(world.device)
    model = use_global_batch_norm(model, world.device, group)
    optimizer = build_optimizer(model, cfg.optim.weight_decay, cfg.optim.momentum, cfg.optim.eta,
                                compiled=cfg.runtime.compile)
    if world.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input shapes: pick the fastest conv algorithms once
    # Gradients live in DDP's buckets (no copy in, none out); every parameter is used every step in
    # the same order, so the graph is static. Buffers: global BN keeps them equal on every rank.
    trained = (torch.nn.parallel.DistributedDataParallel(
        model, broadcast_buffers=False, gradient_as_bucket_view=True, static_graph=True)
        if world.distributed else model)
    train_step = TrainStep(trained, optimizer, cfg.loss.lambd, cfg.loss.scale, cfg.loss.mode,
                           world.device, cfg.runtime.precision, cfg.runtime.compile,
                           cfg.runtime.compile_mode, channels_last, group)
    return Run(cfg, world, loader, derived, model, optimizer, train_step)
