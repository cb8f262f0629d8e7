"""`fastbt profile`: where a pretraining step's time goes, and what bounds the run.

The run is built as pretraining builds it (`fastbt.train.run.build_run`) and measured through what
the loop steps through: the loader's batches (`set_epoch(epoch, skip)`, then its crop batches and
its augmentation, which are what iterating it yields) and `Run.train`. `step` below is one loop step
with a clock lap between phases. The profiler only chooses clocks and windows. Every process
measures:

1. warm-up: `profile.warmup_steps` steps of each window kind, timed apart (compilation, worker
   start-up, JIT), excluded from the rates;
2. throughput: short windows of `profile.steps` steps, interleaved and repeated `profile.repeats`
   times (step, loader, end to end, step, loader, ...), so that a noisy machine slows all three
   alike; the median and spread of each kind:
   - step alone: `Run.train` on synthetic views already on the device (what the step consumes);
   - loader alone: `views`, no step (what the loader can deliver), after a lead-in of
     unmeasured steps that drains what the workers prefetched meanwhile;
   - end to end: `step`, with the Meter as its clock, as in the loop;
   - with a progressive-resolution schedule (aug.resolution), loader and end to end read an epoch
     at the final size, and a fourth kind, the step alone at the start size, gives the rate at the
     other end: the projection integrates over the schedule (`verdict.project_schedule`);
3. breakdown: `step` under a phase clock (fastbt.profiling.clocks): data wait, host-to-device,
   augmentation, forward, loss op, backward, optimizer; with several processes the steps are
   repeated inside DDP's `no_sync()` and the backward's difference is the gradient communication.

Then model FLOPs per pair, peak memory, the load average at start and end, optionally a
torch.profiler trace of a few steps; rank 0 writes the report (fastbt.profiling.report).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import resource
import statistics
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import torch
import torch.distributed as torch_dist
from torch import Tensor
from torch.utils.flop_counter import FlopCounterMode

from fastbt import config, dist
from fastbt.config import Config
from fastbt.precision import autocast_dtype
from fastbt.profiling import environment, report, verdict
from fastbt.profiling.clocks import phase_clock
from fastbt.train.meter import NO_CLOCK, Meter, synchronize
from fastbt.train.run import Run, build_run
from pipelines.resolution import sizes

FORMAT_VERSION = 2  # 2: windows are medians of interleaved repeats, with their spread
PHASE_TOLERANCE = 0.05  # the phases sum to the step time measured around them within this share
NOT_SEPARABLE = {  # why a phase has no time of its own on a setup
    "host_to_device": "the crops are made in host memory: nothing to copy",
    "grad_comm": "one process: no gradient communication",
}
# The order of the interleaved windows. The loader's workers prefetch while the step window runs,
# so a loader window starts with a lead-in of unmeasured steps that drains what they made; end to
# end then starts from a loader in its steady state.
KINDS = ("step", "loader", "end_to_end")
# Batches a loader may hold ready: torch's DataLoader prefetches 2 per worker; FFCV keeps 3 batches
# ahead, DALI 2. The lead-in is at least this many steps.
PREFETCH_PER_WORKER, PREFETCH_SLACK = 2, 3


def profile(cfg: Config, out_dir: str | Path) -> Path:
    """Measure (every process), write the report (rank 0), return its folder."""
    out_dir = Path(out_dir)
    with dist.joined(cfg.runtime.device, cfg.runtime.dist_timeout_s) as world:
        if world.is_main:
            out_dir.mkdir(parents=True, exist_ok=True)
        results = measure(cfg, world, out_dir)
        if world.is_main:
            report.write(results, out_dir)
            print(f"fastbt profile: {results['verdict']['summary']}\nreport: {out_dir / 'report.md'}",
                  flush=True)
        return out_dir


@dataclass
class Window:
    """One kind of window: its warm-up (the first step apart), then `repeats` windows of `steps`
    timed steps; the rate is the median of the windows', the spread (max - min) / median."""
    warmup_steps: int
    first_step_s: float | None  # compilation, worker start, JIT: mostly here
    warmup_s: float  # all warm-up steps, the first included
    steps: int  # per window
    repeats: int
    seconds: float  # all windows
    pairs_per_s: float  # this process, the median window
    spread: float
    pairs_per_s_each: list[float]  # every window, in the order measured
    data_wait_frac: float  # the median window's


def measure(cfg: Config, world: dist.World, out_dir: Path) -> dict:
    """Every process measures itself; the results are this process's numbers (and, gathered,
    every process's end-to-end rate), as a JSON-ready dict."""
    load_start = os.getloadavg()
    device = world.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    run = build_run(cfg, world)
    pairs = run.derived.per_device_batch
    resolution = cfg.aug.resolution
    # the loader's windows read an epoch at the final size (the first, unless a schedule is on)
    batches = crop_batches(run, resolution.ramp_end_epoch * run.derived.steps_per_epoch if resolution.on else 0)
    synthetic = _synthetic_views(pairs, cfg.aug.size, device, run.loader.augment.dtype)
    schedule = itertools.count()  # the LR schedule's step: any, as long as it moves on
    bodies = {  # one step of each window kind, reporting to `clock`
        "loader": lambda clock: (clock.start(), views(run, batches, clock)),
        "step": lambda clock: (clock.start(), run.train(next(schedule), *synthetic, clock)),
        "end_to_end": lambda clock: step(run, next(schedule), batches, clock),
    }
    if resolution.on:  # and the step alone at the schedule's start size, interleaved with the rest
        small = _synthetic_views(pairs, resolution.start, device, run.loader.augment.dtype)
        bodies["step_start"] = lambda clock: (clock.start(), run.train(next(schedule), *small, clock))
    lead_in = max(cfg.profile.steps, PREFETCH_PER_WORKER * cfg.data.workers + PREFETCH_SLACK)
    windows = _windows(bodies, cfg.profile.warmup_steps, cfg.profile.steps, cfg.profile.repeats,
                       device, pairs, lead_in)
    phases, phase_step_s, per_step = _breakdown(run, batches, cfg.profile.steps)
    if cfg.profile.trace:
        _trace(run, batches, cfg.profile.trace_steps, out_dir / "trace.json")
    return _results(cfg, world, run, windows, (phases, phase_step_s, per_step), load_start)


def _results(cfg: Config, world: dist.World, run: Run, windows: dict[str, Window], breakdown: tuple,
             load_start: tuple[float, ...]) -> dict:
    """The report's dict: the windows' rates, the phase breakdown, FLOPs, memory, the verdict."""
    phases, phase_step_s, per_step = breakdown
    device, pairs = world.device, run.derived.per_device_batch
    rates = {name: w.pairs_per_s for name, w in windows.items()}
    spreads = {name: w.spread for name, w in windows.items()}
    precision = "bf16" if autocast_dtype(cfg.runtime.precision, device) == torch.bfloat16 else "fp32"
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    flops_per_pair = model_flops_per_pair(run.model, cfg.aug.size, device)
    peak = verdict.device_peak(device_name, precision)
    per_rank = _gather(rates["end_to_end"], world)
    reliability = verdict.reliability(rates, spreads)
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
        "reliability": reliability,
        "load_average": {"start": list(load_start), "end": list(os.getloadavg()),
                         "cpus": os.cpu_count()},
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
        "verdict": verdict.judge(rates["loader"], rates["step"], rates["end_to_end"], phases,
                                 reliability),
        "projection": _projection(cfg, run, rates),
        "environment": environment.collect(device),
        "config": config.to_dict(cfg),
    }


def _projection(cfg: Config, run: Run, rates: dict[str, float]) -> dict:
    """The projected wall time (fastbt.profiling.verdict), over the resolution schedule when one is on."""
    pairs = run.derived.per_device_batch
    resolution = cfg.aug.resolution
    if not resolution.on:
        return verdict.project(run.derived.total_steps, pairs, rates["end_to_end"], rates["step"])
    return {**verdict.project_schedule(sizes(resolution, cfg.aug.size, cfg.train.epochs), resolution.start,
                                       cfg.aug.size, run.derived.steps_per_epoch, pairs, rates["end_to_end"],
                                       rates["step"], rates["loader"], rates["step_start"]),
            "start_size": resolution.start, "end_size": cfg.aug.size}


def _synthetic_views(pairs: int, size: int, device: torch.device,
                     dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """What the loader hands the step: normalized views in its dtype (the training dtype: bf16
    on CUDA; fp32 views would make the compiled forward specialize, i.e. compile twice),
    channels-last, on the device."""
    return tuple(torch.randn(pairs, 3, size, size, device=device, dtype=dtype)
                 .contiguous(memory_format=torch.channels_last) for _ in range(2))


def _warm_up(body, steps: int, device: torch.device) -> tuple[float | None, float]:
    """Run `steps` steps untimed by any clock: (the first step's seconds, all of them)."""
    began, first = time.perf_counter(), None
    for i in range(steps):
        body(NO_CLOCK)
        if i == 0:
            synchronize(device)
            first = time.perf_counter() - began
    synchronize(device)
    return first, time.perf_counter() - began


def _windows(bodies: dict, warmup: int, steps: int, repeats: int, device: torch.device,
             pairs: int, lead_in: int = 0) -> dict[str, Window]:
    """Each kind warmed up, then `repeats` rounds of one window of each kind (ABCABC...), each
    loader window after `lead_in` unmeasured steps."""
    kinds = [*KINDS, *(k for k in bodies if k not in KINDS)]  # KINDS first, then any extra
    warm = {kind: _warm_up(bodies[kind], warmup, device) for kind in kinds}
    meter = Meter(device, pairs)
    measured = {kind: [] for kind in kinds}
    for _ in range(repeats):
        for kind in kinds:
            if kind == "loader":  # the lead-in: drain the batches prefetched during the step window
                for _ in range(lead_in):
                    bodies[kind](NO_CLOCK)
            meter.restart()  # syncs: what came before is not counted
            for _ in range(steps):
                bodies[kind](meter)
            measured[kind].append(meter.report())
    windows = {}
    for kind in kinds:
        each = [r.pairs_per_s for r in measured[kind]]
        median = statistics.median(each)
        middle = min(measured[kind], key=lambda r: abs(r.pairs_per_s - median))
        seconds = sum(r.seconds for r in measured[kind])
        windows[kind] = Window(warmup, *warm[kind], steps, repeats, seconds, median,
                               (max(each) - min(each)) / median, each, middle.data_wait_frac)
    return windows


def crop_batches(run: Run, start: int = 0) -> Iterator[tuple[int, int, Tensor, Tensor]]:
    """(epoch, index, crops1, crops2) of every step from `start` (0-based) on, endlessly: what the
    loader yields, before its augmentation (`views` applies it, timing each half)."""
    epoch, skip = divmod(start, run.derived.steps_per_epoch)
    while True:
        run.loader.set_epoch(epoch, skip=skip)
        for index, crops1, crops2 in run.loader.crop_batches():
            yield epoch, index, crops1, crops2
        epoch, skip = epoch + 1, 0


def views(run: Run, batches: Iterator, clock=NO_CLOCK) -> tuple[Tensor, Tensor]:
    """The input half of a loop step: the next crops (laps "input"), augmented ("augmentation")."""
    epoch, index, crops1, crops2 = next(batches)
    clock.lap("input")
    view1, view2 = run.loader.augment(crops1, crops2, epoch, index)
    clock.lap("augmentation")
    return view1, view2


def step(run: Run, i: int, batches: Iterator, clock=NO_CLOCK) -> Tensor:
    """One loop step (`clock.start()`, `views`, `Run.train`), every phase lapping `clock`."""
    clock.start()
    return run.train(i, *views(run, batches, clock), clock)


def _phased_steps(run: Run, batches, steps: int, sync_grads: bool) -> tuple[list[dict], float]:
    """`steps` loop steps under the phase clock: their phase times (and the host's wait for the
    next crops), and the mean wall time of a step measured around them (what the phases add to).
    Without `sync_grads`, inside DDP's no_sync(): the backward does not communicate."""
    device = run.world.device
    clock = phase_clock(device)
    laps = []
    synchronize(device)
    began = time.perf_counter()
    for i in range(steps):
        with contextlib.nullcontext() if sync_grads else run.train_step.model.no_sync():
            step(run, i, batches, clock)
        laps.append({**clock.stop(), "host_wait": clock.host["input"]})
    synchronize(device)
    return laps, (time.perf_counter() - began) / steps


def _breakdown(run: Run, batches, steps: int) -> tuple[dict[str, float | None], float, list[dict]]:
    """Mean seconds per step of each phase (None where it cannot be told apart on this setup), the
    step time they add up to, and each step's phases (for the chart)."""
    laps, step_s = _phased_steps(run, batches, steps, sync_grads=True)
    if run.world.distributed:
        _phased_steps(run, batches, 1, sync_grads=False)  # warm-up: compile may specialize on it
        quiet, _ = _phased_steps(run, batches, steps, sync_grads=False)
        alone = _mean([q["backward"] for q in quiet])
    # "input" is next(crops) on the device's clock; what of it the host did not wait for was
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


def _trace(run: Run, batches, steps: int, path: Path) -> None:
    """A torch.profiler trace (Chrome format) of `steps` loop steps; rank 0's is written."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if run.world.device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        for i in range(steps):
            with torch.profiler.record_function(f"step {i}"):
                step(run, i, batches)
        synchronize(run.world.device)
    if run.world.is_main:
        prof.export_chrome_trace(str(path))
