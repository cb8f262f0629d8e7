"""The loop's components that say when they are due: progress reports, checkpoints, the kNN monitor.

- `Progress`: every `logging.every_steps` steps (and at the last) one host sync: the log record,
  the progress bar, the non-finite check and the preemption check (SIGTERM / SIGUSR1 set a flag);
- `Checkpoints`: `maybe_save(step, now, stop)` by step count, by time and on a stop; `save(step)`
  at the end; never from weights that came from a non-finite loss;
- `KnnMonitor`: the online kNN monitor (`eval.knn.every_epochs`), due at the end of an epoch.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import torch
from tqdm import tqdm

from fastbt import dist
from fastbt.config import Config
from fastbt.errors import RunStopped
from fastbt.eval.protocol import KnnEval
from fastbt.runlog import RunLog
from fastbt.train import checkpoint
from fastbt.train.meter import Meter
from fastbt.train.run import Run


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
    """Weights and buffers (BN running statistics) must be finite and not blown up before a
    checkpoint is written: a finite loss does not prove it. One host sync, at checkpoint time only."""
    bad = checkpoint.diverged(model.state_dict())
    if bad:
        raise NonFiniteLoss(f"{bad} by step {step}; stopping "
                            f"({_kept(last_checkpoint)})")


def _kept(last_checkpoint: str | None) -> str:
    return f"the last good checkpoint is {last_checkpoint}" if last_checkpoint else \
        "no checkpoint was written before it"


class Progress:
    """The log (RUN_DIR/log.jsonl, optionally TensorBoard), the bar, the Meter, the non-finite
    watch and the preemption flag; `report` is due every logging.every_steps and at the last step."""

    def __init__(self, cfg: Config, world: dist.World, run: Run, run_dir: Path, step: int):
        self.cfg, self.world, self.run = cfg, world, run
        self.log = RunLog(run_dir / "log.jsonl" if world.is_main else None,
                          tensorboard_dir=run_dir / "tb" if cfg.logging.tensorboard else None)
        self.bar = tqdm(total=run.derived.total_steps, initial=step, unit="step", dynamic_ncols=True,
                        disable=not (world.is_main and cfg.logging.progress_bar))
        self.meter = Meter(world.device, run.derived.per_device_batch)
        self.watch = NonFiniteWatch(world.device)
        self.preemption = PreemptionFlag()
        self.first_report = True

    def update(self, loss: torch.Tensor, step: int) -> None:
        self.watch.update(loss, step)
        self.bar.update(1)

    def due(self, step: int) -> bool:
        return step % self.cfg.logging.every_steps == 0 or step == self.run.derived.total_steps

    def report(self, step: int, loss: torch.Tensor, last_checkpoint: str | None) -> bool:
        """The one host sync: check the loss, log the rates; whether any rank was asked to stop."""
        self.watch.check(last_checkpoint)
        rates = self.meter.report()
        record = {"step": step, "epoch": step / self.run.derived.steps_per_epoch,
                  "loss": loss.item(), "lr": self.run.optimizer.param_groups[0]["lr"],
                  "pairs_per_s": rates.pairs_per_s * self.world.size,
                  "pairs_per_s_per_process": rates.pairs_per_s,
                  "data_wait_frac": rates.data_wait_frac,
                  "includes_warmup": self.first_report}  # compile and first-batch costs
        self.first_report = False
        self.log.write(record)
        self.bar.set_postfix(loss=f"{record['loss']:.2f}", pairs_s=f"{record['pairs_per_s']:.0f}")
        return dist.any_rank(self.preemption.requested, self.world)

    def close(self) -> None:
        self.preemption.restore()
        self.bar.close()
        self.log.close()


class Checkpoints:
    """RUN_DIR/ckpt_<step>.pt every train.checkpoint_every_steps, every
    train.checkpoint_every_minutes, on a stop and at the end (rank 0 writes)."""

    def __init__(self, cfg: Config, world: dist.World, run: Run, run_dir: Path, watch: NonFiniteWatch):
        self.cfg, self.world, self.run, self.run_dir, self.watch = cfg, world, run, run_dir, watch
        existing = checkpoint.checkpoints(run_dir)
        self.last = existing[0] if existing else None
        self.saved_at = time.monotonic()

    def due(self, step: int, now: float) -> bool:
        every = self.cfg.train.checkpoint_every_steps
        return bool(every and step % every == 0) or \
            now - self.saved_at > 60 * self.cfg.train.checkpoint_every_minutes

    def maybe_save(self, step: int, now: float, stop: bool) -> bool:
        """Save on a stop, or when due before the last step (the end saves by itself); saved?"""
        if stop or (self.due(step, now) and step < self.run.derived.total_steps):
            self.save(step)
            return True
        return False

    def save(self, step: int) -> None:
        self.watch.check(self.last)  # never save weights that came from a non-finite loss
        check_finite_state(self.run.model, step, self.last)  # nor diverged weights or buffers
        if self.world.is_main:
            self.last = str(checkpoint.save_run(self.run_dir, step, self.run.model, self.run.optimizer,
                                                self.run.derived.steps_per_epoch, self.cfg))
        self.saved_at = time.monotonic()


class KnnMonitor:
    """kNN top-1/top-5 on eval.train / eval.val after every eval.knn.every_epochs epochs (0: off).
    It runs on every rank: the work is shared through collectives."""

    def __init__(self, cfg: Config, world: dist.World, steps_per_epoch: int):
        self.steps_per_epoch = steps_per_epoch
        self.knn = KnnEval(cfg, world.device, world.rank, world.size) if cfg.eval.knn.every_epochs else None

    def due(self, step: int) -> bool:
        epoch, within = divmod(step, self.steps_per_epoch)
        return self.knn is not None and within == 0 and self.knn.due(epoch)

    def __call__(self, backbone: torch.nn.Module, step: int) -> dict:
        acc = self.knn(backbone)
        return {"step": step, "epoch": step // self.steps_per_epoch,
                "knn_top1": acc["top1"], "knn_top5": acc["top5"]}
