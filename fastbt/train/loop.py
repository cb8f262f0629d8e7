"""`pretrain(cfg)`: the pretraining loop, top to bottom (as facebookresearch/barlowtwins main.py).

config -> the run (`fastbt.train.run.build_run`: loader, model with global BN and DDP, LARS, step)
-> for each epoch, the loader's augmented views -> the step -> the components that say when they
are due (`fastbt.train.monitors`): a progress report every N steps (the one host sync, the
non-finite and preemption checks), checkpoints by step count, by time, on preemption and at the end,
the online kNN monitor at the end of an epoch. Curves are drawn by the caller (`fastbt pretrain`).
"""

from __future__ import annotations

import time
from pathlib import Path

from fastbt import dist
from fastbt.config import Config
from fastbt.errors import ConfigError
from fastbt.runlog import require_tensorboard
from fastbt.train import checkpoint, rundir
from fastbt.train.monitors import Checkpoints, KnnMonitor, NonFiniteLoss, Progress  # noqa: F401
from fastbt.train.run import Run, build_run, require_data_path


def check_paths(cfg: Config) -> None:
    """Refuse before anything is written: a missing dataset, or a run directory inside it (its
    files would become samples of a class named after it)."""
    require_data_path(cfg)
    data = Path(cfg.data.path).resolve()
    if not data.exists() and cfg.data.backend in ("ffcv", "dali", "torchvision"):  # a registered
        # backend may generate its data
        raise ConfigError(f"data.path {cfg.data.path} does not exist")
    out = Path(cfg.train.out_dir).resolve()
    if out == data or data in out.parents:
        raise ConfigError(f"train.out_dir {cfg.train.out_dir} is inside data.path {cfg.data.path}; "
                          "the run's files would be read as samples: choose a folder outside it")
    if cfg.logging.tensorboard:
        require_tensorboard()


def pretrain(cfg: Config) -> Path:
    """Pretrain (or resume) in cfg.train.out_dir; returns it, also when preempted."""
    check_paths(cfg)
    world = dist.init(cfg.runtime.device, cfg.runtime.dist_timeout_s)
    try:
        with dist.lost_peers_stop_the_run(world), \
                rundir.exclusive(Path(cfg.train.out_dir), world):  # one run per directory
            return _pretrain(cfg, world)
    finally:
        dist.teardown()


def _pretrain(cfg: Config, world: dist.World) -> Path:
    run_dir = Path(cfg.train.out_dir)
    resume_from = rundir.prepare(run_dir, cfg, world)  # config check, log cut, config.yaml
    run = build_run(cfg, world)
    step = checkpoint.resume_run(  # after DDP's broadcast: every rank loads it
        resume_from, run.model, run.optimizer, map_location=world.device)
    if step:
        dist.print0(world, f"fastbt: resumed from {resume_from}")
    knn = KnnMonitor(cfg, world, run.derived.steps_per_epoch)
    _announce(world, run, run_dir, step)
    progress = Progress(cfg, world, run, run_dir, step)  # the log, the bar, the signal handlers
    checkpoints = Checkpoints(cfg, world, run, run_dir, progress.watch)
    try:
        step, stopped = train(run, step, progress, checkpoints, knn)
        if stopped:
            dist.print0(world, f"fastbt: {progress.preemption.reason}; checkpoint {checkpoints.last} "
                               f"written at step {step}, exiting")
            return run_dir
        checkpoints.save(step)
        if world.is_main:
            checkpoint.save_backbone(run.model, run_dir / "backbone.pth")
        dist.print0(world, f"fastbt: done; backbone weights in {run_dir / 'backbone.pth'}")
        return run_dir
    finally:
        progress.close()


def train(run: Run, step: int, progress: Progress, checkpoints: Checkpoints,
          knn: KnnMonitor) -> tuple[int, bool]:
    """The epochs from `step` (steps done) on: (the steps done at the end, whether it stopped early)."""
    start_epoch, skip = divmod(step, run.derived.steps_per_epoch)
    for epoch in range(start_epoch, run.cfg.train.epochs):
        for view1, view2 in progress.meter.timed(run.epoch(epoch, skip)):  # the meter times the wait
            loss = run.train(step, view1, view2)
            step += 1  # steps done; the log and messages count from 1
            progress.update(loss, step)
            stop = progress.due(step) and progress.report(step, loss, checkpoints.last)
            if checkpoints.maybe_save(step, time.monotonic(), stop):
                progress.meter.restart()  # the save's time is not training throughput
            if stop:
                return step, True
        skip = 0
        if knn.due(step):
            progress.log.write(knn(run.model.backbone, step))
            progress.meter.restart()  # nor is the check's
    return step, False


def _announce(world: dist.World, run: Run, run_dir: Path, step: int) -> None:
    derived = run.derived
    dist.print0(world, f"fastbt: {world.size} process(es) on {world.device.type}, "
                       f"{derived.per_device_batch} pairs per process per step, "
                       f"{derived.steps_per_epoch} steps per epoch, {derived.total_steps} steps; "
                       f"run directory {run_dir}" + (f"; resuming at step {step}" if step else ""))
