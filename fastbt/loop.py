"""`pretrain(cfg)`: run the loop over the parts `fastbt.run.build_run` wires, top to bottom.

config -> the run's epoch iterator (crops on the device) -> its step (augmentation, model with
global BN and DDP, compiled forward, fused loss, LARS) -> every N steps: one host sync for metrics,
the non-finite check, the preemption check -> checkpoints (fastbt.checkpoint) by step count, by
time, on preemption and at the end.
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from fastbt import checkpoint, config, dist, plot, rundir
from fastbt.config import Config
from fastbt.errors import ConfigError, RunDirError, RunStopped
from fastbt.evaluate import KnnEval
from fastbt.meter import Meter
from fastbt.run import build_run, require_data_path
from fastbt.runlog import RunLog, require_tensorboard


class NonFiniteLoss(RunStopped):
    pass


class PreemptionFlag:
    """SIGTERM / SIGUSR1 (what schedulers send before a kill) and SIGINT (Ctrl-C) set a flag the
    loop polls. A second Ctrl-C interrupts at once (KeyboardInterrupt)."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)

    def __init__(self):
        self.requested = False
        self.reason = "preempted"
        self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}

    def _handle(self, signum, frame):
        self.requested = True
        if signum == signal.SIGINT:
            self.reason = "interrupted (Ctrl-C; press it again to stop without a checkpoint)"
            signal.signal(signal.SIGINT, signal.default_int_handler)

    def restore(self):
        for s, handler in self._previous.items():
            signal.signal(s, handler)


class NonFiniteWatch:
    """Remembers, on the device, the first step whose loss was not finite; no sync until check()."""

    def __init__(self, device: torch.device):
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)

    def update(self, loss: torch.Tensor, step: int) -> None:
        bad = ~torch.isfinite(loss) & (self.first_bad < 0)
        self.first_bad = torch.where(bad, step, self.first_bad)

    def check(self, last_checkpoint: str | None) -> None:
        step = int(self.first_bad.item())
        if step >= 0:
            raise NonFiniteLoss(f"the loss became non-finite at step {step}; stopping "
                                f"({_kept(last_checkpoint)})")


def check_finite_state(model: torch.nn.Module, step: int, last_checkpoint: str | None) -> None:
    """Weights and buffers (BN running statistics) must be finite before a checkpoint is written:
    a finite loss does not prove it. One host sync, at checkpoint time only."""
    bad = checkpoint.non_finite(model.state_dict())
    if bad:
        raise NonFiniteLoss(f"{bad} became non-finite by step {step}; stopping "
                            f"({_kept(last_checkpoint)})")


def _kept(last_checkpoint: str | None) -> str:
    return f"the last good checkpoint is {last_checkpoint}" if last_checkpoint else \
        "no checkpoint was written before it"


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
    derived, model = run.derived, run.model
    step = checkpoint.resume_run(  # after DDP's broadcast: every rank loads it
        resume_from, model, run.optimizer, map_location=world.device)
    if step:
        dist.print0(world, f"fastbt: resumed from {resume_from}")
    # the optional online kNN monitor runs on every rank (it shares the work with collectives)
    knn = KnnEval(cfg, world.device, world.rank, world.size) if cfg.eval.knn.every_epochs else None

    def save_checkpoint() -> str:
        watch.check(last_checkpoint)  # never save weights that came from a non-finite loss
        check_finite_state(model, step, last_checkpoint)  # nor non-finite weights or buffers
        if world.is_main:
            return str(checkpoint.save_run(run_dir, step, model, run.optimizer,
                                           derived.steps_per_epoch, cfg))
        return last_checkpoint

    log = RunLog(run_dir / "log.jsonl" if world.is_main else None,
                 tensorboard_dir=run_dir / "tb" if cfg.logging.tensorboard else None)
    dist.print0(world, f"fastbt: {world.size} process(es) on {world.device.type}, "
                       f"{derived.per_device_batch} pairs per process per step, "
                       f"{derived.steps_per_epoch} steps per epoch, {derived.total_steps} steps; "
                       f"run directory {run_dir}" + (f"; resuming at step {step}" if step else ""))
    bar = tqdm(total=derived.total_steps, initial=step, unit="step", dynamic_ncols=True,
               disable=not (world.is_main and cfg.logging.progress_bar))
    meter = Meter(world.device, derived.per_device_batch)
    watch = NonFiniteWatch(world.device)
    preemption = PreemptionFlag()
    last_checkpoint = checkpoint.checkpoints(run_dir)[0] if checkpoint.checkpoints(run_dir) else None
    last_checkpoint_time = time.monotonic()
    first_report = True
    try:
        batches = run.batches(step)
        while step < derived.total_steps:
            loss = run.step(step, batches, meter)  # the meter times the wait for data
            step += 1  # steps done; the log and messages count from 1
            watch.update(loss, step)
            bar.update(1)

            stop = False
            if step % cfg.logging.every_steps == 0 or step == derived.total_steps:
                watch.check(last_checkpoint)
                rates = meter.report()
                record = {"step": step, "epoch": step / derived.steps_per_epoch,
                          "loss": loss.item(), "lr": run.optimizer.param_groups[0]["lr"],
                          "pairs_per_s": rates.pairs_per_s * world.size,
                          "pairs_per_s_per_process": rates.pairs_per_s,
                          "data_wait_frac": rates.data_wait_frac,
                          "includes_warmup": first_report}  # compile and first-batch costs
                first_report = False
                log.write(record)
                bar.set_postfix(loss=f"{record['loss']:.2f}", pairs_s=f"{record['pairs_per_s']:.0f}")
                stop = dist.any_rank(preemption.requested, world)

            every = cfg.train.checkpoint_every_steps
            due = (every and step % every == 0) or \
                time.monotonic() - last_checkpoint_time > 60 * cfg.train.checkpoint_every_minutes
            if stop or (due and step < derived.total_steps):
                last_checkpoint = save_checkpoint()
                last_checkpoint_time = time.monotonic()
                meter.restart()
            if stop:
                dist.print0(world, f"fastbt: {preemption.reason}; checkpoint {last_checkpoint} written "
                                   f"at step {step}, exiting")
                return run_dir
            epoch_done = step % derived.steps_per_epoch == 0
            if knn is not None and epoch_done and knn.due(step // derived.steps_per_epoch):
                acc = knn(model.backbone)
                log.write({"step": step, "epoch": step // derived.steps_per_epoch,
                           "knn_top1": acc["top1"], "knn_top5": acc["top5"]})
                meter.restart()  # the check's time is not training throughput
        last_checkpoint = save_checkpoint()
        if world.is_main:
            checkpoint.save_backbone(model, run_dir / "backbone.pth")
        dist.print0(world, f"fastbt: done; backbone weights in {run_dir / 'backbone.pth'}")
        return run_dir
    finally:
        preemption.restore()
        bar.close()
        log.close()
        if world.is_main:  # at the end, on preemption, on a stop: the run so far in one picture
            # a full disk or a read-only folder fails the picture too: its one line says it all
            plot.curves_at_exit(run_dir, quiet=isinstance(sys.exc_info()[1], RunDirError))

