"""`fastbt profile`: where a pretraining step's time goes, and what bounds the run.

The run is built as pretraining builds it (`fastbt.run.build_run`). Then every process measures,
in this order, each window after `profile.warmup_steps` steps that pay for compilation, worker
start-up and JIT (timed apart, excluded from rates):

1. step alone: the TrainStep on synthetic views already on the device (what it can consume);
2. loader alone: augmented views, no step (what the loader can deliver);
3. end to end: the loop's body (next batch, LR, step) with its Meter, one sync at the end;
4. breakdown: the loop's body again under a phase clock (fastbt.phase_clock), with the loader's
   and the step's stages apart: data wait, host-to-device, augmentation, forward, loss op,
   backward, optimizer; with several processes the steps are repeated under DDP's `no_sync` and
   the backward's difference is the gradient communication.

Then model FLOPs per pair, peak memory and, optionally, a torch.profiler trace of a few steps;
rank 0 writes the report (fastbt.report).
"""

from __future__ import annotations

import contextlib
import itertools
import resource
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.distributed as torch_dist
from torch.utils.flop_counter import FlopCounterMode

from fastbt import config, dist, environment, report, verdict
from fastbt.config import Config
from fastbt.meter import Meter, synchronize
from fastbt.phase_clock import phase_clock
from fastbt.run import Run, build_run
from fastbt.precision import autocast_dtype

FORMAT_VERSION = 1
PHASE_TOLERANCE = 0.05  # the phases sum to the step time measured around them within this share
NOT_SEPARABLE = {  # why a phase has no time of its own on a setup
    "host_to_device": "the crops are made in host memory: nothing to copy",
    "grad_comm": "one process: no gradient communication",
}


def profile(cfg: Config, out_dir: str | Path) -> Path:
    """Measure (every process), write the report (rank 0), return its folder."""
    out_dir = Path(out_dir)
    world = dist.init(cfg.runtime.device)
    try:
        if world.is_main:
            out_dir.mkdir(parents=True, exist_ok=True)
        results = measure(cfg, world, out_dir)
        if world.is_main:
            report.write(results, out_dir)
            print(f"fastbt profile: {results['verdict']['summary']}\nreport: {out_dir / 'report.md'}",
                  flush=True)
        return out_dir
    finally:
        dist.teardown()


@dataclass
class Window:
    """One measured window: warm-up (the first step apart), then `steps` timed steps."""
    warmup_steps: int
    first_step_s: float | None  # compilation, worker start, JIT: mostly here
    warmup_s: float  # all warm-up steps, the first included
    steps: int
    seconds: float
    pairs_per_s: float  # this process
    data_wait_frac: float


def measure(cfg: Config, world: dist.World, out_dir: Path) -> dict:
    """Every process measures itself; the results are this process's numbers (and, gathered,
    every process's end-to-end rate), as a JSON-ready dict."""
    device = world.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    run = build_run(cfg, world)
    pairs = run.derived.per_device_batch
    warmup, steps = cfg.profile.warmup_steps, cfg.profile.steps
    crops = _crop_batches(run.loader)
    views = (run.loader.augment(c1, c2, index) for index, c1, c2 in crops)
    synthetic = _synthetic_views(pairs, cfg.aug.size, device)

    def train(i, batch):
        run.set_lr(i)
        run.train_step(*batch)

    windows = {
        "step": _window(lambda: synthetic, train, warmup, steps, device, pairs),
        "loader": _window(lambda: next(views), lambda i, batch: None, warmup, steps, device, pairs),
        "end_to_end": _window(lambda: next(views), train, warmup, steps, device, pairs),
    }
    phases, phase_step_s, per_step = _breakdown(run, crops, steps)
    if cfg.profile.trace:
        _trace(run, views, cfg.profile.trace_steps, out_dir / "trace.json")

    rates = {name: w.pairs_per_s for name, w in windows.items()}
    precision = "bf16" if autocast_dtype(cfg.runtime.precision, device) == torch.bfloat16 else "fp32"
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    flops_per_pair = model_flops_per_pair(run.model, cfg.aug.size, device)
    peak = verdict.device_peak(device_name, precision)
    per_rank = _gather(rates["end_to_end"], world)
    return {
        "format": FORMAT_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "label": f"{cfg.data.backend}, {cfg.model.arch}, {precision}, "
                 f"compile {'on' if cfg.runtime.compile else 'off'}, {world.size} x {device.type}",
        "setup": {"world_size": world.size, "device": str(device), "device_name": device_name,
                  "precision": precision, "backend": cfg.data.backend,
                  "per_device_batch": pairs, "global_batch": pairs * world.size,
                  "dataset_size": run.loader.dataset_size,
                  "steps_per_epoch": run.derived.steps_per_epoch, "epochs": cfg.train.epochs},
        "windows": {name: asdict(w) for name, w in windows.items()},
        "global_pairs_per_s": {name: rate * world.size for name, rate in rates.items()},
        "per_rank_end_to_end_pairs_per_s": per_rank,
        "phases": phases,
        "phase_notes": {p: NOT_SEPARABLE[p] for p, t in phases.items() if t is None},
        "phase_sum_s": sum(t for t in phases.values() if t is not None),
        "phase_step_s": phase_step_s,
        "phase_tolerance": PHASE_TOLERANCE,
        "phase_steps": per_step,
        "flops": {"per_pair": flops_per_pair,
                  "step_per_s": flops_per_pair * rates["step"],
                  "end_to_end_per_s": flops_per_pair * rates["end_to_end"],
                  "device_peak": peak,
                  "mfu_step": flops_per_pair * rates["step"] / peak if peak else None,
                  "mfu_end_to_end": flops_per_pair * rates["end_to_end"] / peak if peak else None},
        "memory": _memory(device),
        "verdict": verdict.judge(rates["loader"], rates["step"], rates["end_to_end"], phases),
        "projection": verdict.project(run.derived.total_steps, pairs, rates["end_to_end"], rates["step"]),
        "environment": environment.collect(device),
        "config": config.to_dict(cfg),
    }


def _crop_batches(loader):
    """This rank's crop batches as (index in epoch, crops1, crops2), epoch after epoch."""
    for epoch in itertools.count():
        loader.set_epoch(epoch)
        for index, (crops1, crops2, _labels) in enumerate(loader.crops):
            yield index, crops1, crops2


def _synthetic_views(pairs: int, size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """What the loader hands the step: normalized float views, channels-last, on the device."""
    return tuple(torch.randn(pairs, 3, size, size, device=device)
                 .contiguous(memory_format=torch.channels_last) for _ in range(2))


def _window(get_batch, consume, warmup: int, steps: int, device: torch.device, pairs: int) -> Window:
    """The loop's body, `warmup + steps` times: get a batch (data wait), then consume it."""
    meter = Meter(device, pairs)
    began, first = time.perf_counter(), None  # with no warm-up, the first step counts in the rates
    for i in range(warmup + steps):
        if i == warmup:
            meter.restart()  # syncs: the warm-up's queued work is not counted in the rates
            warmed = time.perf_counter() - began
        meter.data_wait_start()
        batch = get_batch()
        meter.data_wait_end()
        consume(i, batch)
        if i == 0 and warmup:
            synchronize(device)
            first = time.perf_counter() - began
    rates = meter.report()
    return Window(warmup, first, warmed, steps, rates.seconds, rates.pairs_per_s, rates.data_wait_frac)


class _LapAfter:
    """Stands in for `TrainStep.forward` so the clock laps when the model's forward returns: the
    step's own code runs unchanged, and the loss op is timed apart from the forward."""

    def __init__(self, forward, clock, name: str):
        self.forward, self.clock, self.name = forward, clock, name

    def __call__(self, *args):
        out = self.forward(*args)
        self.clock.lap(self.name)
        return out


def _phased_steps(run: Run, crops, steps: int, sync_grads: bool) -> tuple[list[dict], float]:
    """`steps` loop bodies under the phase clock: their phase times, and the mean wall time of a
    step measured around them (the sum the phases must add up to)."""
    step, device = run.train_step, run.world.device
    clock = phase_clock(device)
    forward = step.forward
    step.forward = _LapAfter(forward, clock, "forward")
    no_sync = step.model.no_sync if run.world.distributed and not sync_grads else contextlib.nullcontext
    laps = []
    try:
        synchronize(device)
        began = time.perf_counter()
        for i in range(steps):
            run.set_lr(i)
            clock.start()
            asked = time.perf_counter()
            index, crops1, crops2 = next(crops)
            waited = time.perf_counter() - asked
            clock.lap("input")
            view1, view2 = run.loader.augment(crops1, crops2, index)
            clock.lap("augmentation")
            with no_sync():  # DDP decides in the forward whether the backward communicates
                loss = step.loss(view1, view2)  # laps "forward" inside
                clock.lap("loss")
                loss.backward()
                clock.lap("backward")
            step.update()
            clock.lap("optimizer")
            laps.append({**clock.stop(), "host_wait": waited})
        synchronize(device)
        return laps, (time.perf_counter() - began) / steps
    finally:
        step.forward = forward


def _breakdown(run: Run, crops, steps: int) -> tuple[dict[str, float | None], float, list[dict]]:
    """Mean seconds per step of each phase (None where it cannot be told apart on this setup), the
    step time they add up to, and each step's phases (for the chart)."""
    laps, step_s = _phased_steps(run, crops, steps, sync_grads=True)
    if run.world.distributed:
        _phased_steps(run, crops, 1, sync_grads=False)  # warm-up: compile may specialize on no_sync
        quiet, _ = _phased_steps(run, crops, steps, sync_grads=False)
        alone = _mean([q["backward"] for q in quiet])
    # "input" is next(loader) on the device's clock; what of it the host did not wait for was
    # device work the loader left queued: the copy to the device
    on_device = run.world.device.type != "cpu"
    per_step = []
    for lap in laps:
        phases = {"data_wait": min(lap["host_wait"], lap["input"]) if on_device else lap["input"],
                  "host_to_device": max(0.0, lap["input"] - lap["host_wait"]) if on_device else None,
                  "augmentation": lap["augmentation"], "forward": lap["forward"], "loss": lap["loss"],
                  "backward": lap["backward"], "optimizer": lap["optimizer"], "grad_comm": None}
        if run.world.distributed:
            phases["backward"] = min(alone, lap["backward"])  # the rest of it waited for all-reduces
            phases["grad_comm"] = lap["backward"] - phases["backward"]
        per_step.append(phases)
    means = {p: None if per_step[0][p] is None else _mean([s[p] for s in per_step])
             for p in verdict.PHASES}
    return means, step_s, per_step


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def model_flops_per_pair(model: torch.nn.Module, size: int, device: torch.device) -> float:
    """Forward FLOPs of both views, counted on two pairs, x3 for forward + backward (the usual
    convention: the backward costs two forwards). The loss op, a custom op, is not counted. Eval
    mode: the same FLOPs, and global batch norm stays local (no collectives, no stat updates)."""
    images = torch.randn(2, 3, size, size, device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(images, images)
    finally:
        model.train(was_training)
    return 3 * counter.get_total_flops() / 2


def _memory(device: torch.device) -> dict:
    # ru_maxrss is in KiB on Linux; loader worker processes are not counted
    memory = {"host_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    if device.type == "cuda":
        memory.update(device_peak_allocated_bytes=torch.cuda.max_memory_allocated(device),
                      device_peak_reserved_bytes=torch.cuda.max_memory_reserved(device))
    return memory


def _gather(value: float, world: dist.World) -> list[float]:
    if not world.distributed:
        return [value]
    values = [None] * world.size
    torch_dist.all_gather_object(values, value)
    return values


def _trace(run: Run, views, steps: int, path: Path) -> None:
    """A torch.profiler trace (Chrome format) of `steps` loop bodies; rank 0's is written."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if run.world.device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        for i in range(steps):
            with torch.profiler.record_function("next(loader)"):
                batch = next(views)
            run.set_lr(i)
            run.train_step(*batch)
        synchronize(run.world.device)
    if run.world.is_main:
        prof.export_chrome_trace(str(path))
