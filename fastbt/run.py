"""`build_run(cfg, world)`: the parts of a pretraining run, built and wired, ready to step.

Seeding, the loader (this rank's shard), the values derived from the config and the dataset size,
the model with global-batch BN (DDP-wrapped for several processes), LARS and the TrainStep. The
run also owns the loop's body, used by pretraining (`fastbt.loop`), profiling and tracing
(`fastbt.profile`) alike, so what the profiler measures is what pretraining runs:

- `batches(start)`: the one epoch iterator, this rank's crop batches from step `start` on, epoch
  after epoch (resumable at (epoch, offset): a resumed run replays the same order);
- `step(i, batches, clock)`: one step of the loop, `views` (next crops, augmentation) then
  `train` (LR, forward, loss, backward, optimizer), reporting its phases to `clock`
  (fastbt.phase_clock; a no-op by default, the Meter in the loop).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as torch_dist
from torch import nn

import pipelines
from fastbt import config, dist
from fastbt.config import Config, Derived
from fastbt.errors import ConfigError
from fastbt.losses import build_loss
from fastbt.model import build_model
from fastbt.norm import use_global_batch_norm
from fastbt.optim import build_optimizer, lr_at, set_lr
from fastbt.phase_clock import NO_CLOCK
from fastbt.precision import autocast_dtype, use_channels_last
from fastbt.step import TrainStep
from pipelines.loader import TwoViewLoader
from pipelines.resolution import sizes


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

    def batches(self, start: int = 0) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        """(index in epoch, crops1, crops2) of every step from `start` (0-based) on, endlessly."""
        steps_per_epoch = self.derived.steps_per_epoch
        epoch, offset = divmod(start, steps_per_epoch)
        while True:
            self.loader.set_epoch(epoch, skip=offset)  # resumed mid-epoch: the same order, not decoded
            yield from self.loader.crop_batches()
            epoch, offset = epoch + 1, 0

    def views(self, batches: Iterator, clock=NO_CLOCK) -> tuple[torch.Tensor, torch.Tensor]:
        """The input half of a step: the next crops (laps "input"), augmented ("augmentation")."""
        index, crops1, crops2 = next(batches)
        clock.lap("input")
        views = self.loader.augment(crops1, crops2, self.loader.epoch, index)
        clock.lap("augmentation")
        return views

    def train(self, step: int, view1: torch.Tensor, view2: torch.Tensor, clock=NO_CLOCK,
              sync_grads: bool = True) -> torch.Tensor:
        """The compute half: the LR of `step` (0-based), then the TrainStep (its laps: "forward",
        "loss", "backward", "optimizer"). Returns the loss as a 0-dim device tensor."""
        self.set_lr(step)
        self.train_step.clock, self.train_step.sync_grads = clock, sync_grads
        return self.train_step(view1, view2)

    def step(self, step: int, batches: Iterator, clock=NO_CLOCK, sync_grads: bool = True) -> torch.Tensor:
        """One step of the loop: `clock.start()`, then `views` and `train`."""
        clock.start()
        return self.train(step, *self.views(batches, clock), clock, sync_grads)


def require_data_path(cfg: Config) -> None:
    if not cfg.data.path:
        raise ConfigError("data.path is not set: give the dataset, e.g. data.path=/data/in1k_ffcv")


def build_train_loader(cfg: Config, world: dist.World):
    """This process's loader: its shard of each epoch chosen by the GLOBAL rank (with the local
    rank, every node would read the same shard and a 4-node job a quarter of the data)."""
    return pipelines.build_loader(
        cfg.data.backend, cfg.data.path, aug=cfg.aug, batch_size=config.per_device_batch(cfg, world.size),
        device=world.device, rank=world.rank, world_size=world.size, seed=cfg.train.seed,
        workers=cfg.data.workers,  # views in the training dtype, the chain compiled with the step
        dtype=autocast_dtype(cfg.runtime.precision, world.device), compiled=cfg.runtime.compile)


def build_run(cfg: Config, world: dist.World) -> Run:
    require_data_path(cfg)
    dist.seed_everything(cfg.train.seed)
    loader = build_train_loader(cfg, world)
    derived = config.derive(cfg, world.size, loader.dataset_size)
    if len(loader) != derived.steps_per_epoch:
        raise RuntimeError(f"the {cfg.data.backend} loader gives {len(loader)} batches per epoch on "
                           f"rank {world.rank}, expected {derived.steps_per_epoch}")

    if cfg.runtime.compile:
        _check_compiled_sizes(cfg)
    model, optimizer, train_step = build_train_step(cfg, world)
    return Run(cfg, world, loader, derived, model, optimizer, train_step)


def build_train_step(cfg: Config, world: dist.World) -> tuple[nn.Module, torch.optim.Optimizer, TrainStep]:
    """The model (unwrapped), LARS and the TrainStep of `cfg` on `world`'s device, without a
    loader: what `build_run` trains and what scripts/gpu_check.py times on generated crops."""
    group = torch_dist.group.WORLD if world.distributed else None
    channels_last = use_channels_last(cfg.runtime.channels_last, world.device)
    model = build_model(cfg.model.arch, cfg.model.projector, channels_last).to(world.device)
    model = use_global_batch_norm(model, world.device, group)
    optimizer = build_optimizer(model, cfg.optim.weight_decay, cfg.optim.momentum, cfg.optim.eta,
                                compiled=cfg.runtime.compile)
    if world.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input shapes: pick the fastest conv algorithms once
    # Gradients live in DDP's buckets (no copy in, none out); every parameter is used every step in
    # the same order, so the graph is static. Buffers: global BN keeps them equal on every rank.
    trained = wrap_ddp(model) if world.distributed else model
    train_step = TrainStep(trained, optimizer, build_loss(cfg.loss), cfg.runtime, world.device, group)
    return model, optimizer, train_step


def wrap_ddp(model: nn.Module) -> nn.Module:
    """DDP without buffer broadcasts in forward (global BN keeps them equal). torch 2.14 deprecates
    broadcast_buffers (a FutureWarning per run) for forward_sync_buffers; 2.11 has only the former."""
    ddp = torch.nn.parallel.DistributedDataParallel
    no_sync = ({"forward_sync_buffers": False}
               if "forward_sync_buffers" in inspect.signature(ddp.__init__).parameters
               else {"broadcast_buffers": False})
    return ddp(model, gradient_as_bucket_view=True, static_graph=True, **no_sync)


def _check_compiled_sizes(cfg: Config) -> None:
    """The compiled forward keeps one graph per crop size (TrainStep: dynamic=False); past dynamo's
    recompile limit it would silently fall back to eager."""
    distinct = sorted(set(sizes(cfg.aug.resolution, cfg.aug.size, cfg.train.epochs)))
    limit = torch._dynamo.config.recompile_limit
    if len(distinct) > limit:
        raise ConfigError(f"aug.resolution gives {len(distinct)} crop sizes ({distinct}), more compiled "
                          f"graphs than torch's recompile limit {limit}: raise aug.resolution.multiple")
