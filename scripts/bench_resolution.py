"""What progressive resolution saves: the training step's time at the schedule's sizes, measured on
this machine, and the projected wall time of configs/fast.yaml on ImageNet from those ratios.

The step is the loop's TrainStep (forward, loss, backward, LARS) built from the config's sections, on
synthetic normalized views (the profiler's "step alone"), timed interleaved: one step per size per
round, `--rounds` rounds; median seconds per step and spread ((max - min) / median) per size.

1. the tiny config (configs/tiny_cpu.yaml: ResNet-18, 512-512 projector, batch 128, fp32) at its
   demo schedule's start and end sizes (24 and 32 px: scripts/knn_resolution.py's ramp);
2. the fast preset's sizes (160, 192, 224 px) with the same ResNet-18 at a small batch (the CPU
   stands in for the GPU: ResNet-50 on a GPU is not measured here), then configs/fast.yaml's
   100-epoch schedule priced with the measured ratios, against all epochs at 224 px, and the
   README's 1.5 h for 100 epochs at 224 px on 8 H100s (24,000 pairs/s) scaled by that share.

    PYTHONPATH=. python scripts/bench_resolution.py [--rounds 7] [--batch 4]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from fastbt import config
from fastbt.profiling import verdict
from fastbt.train.losses import build_loss
from fastbt.train.model import build_model
from fastbt.train.optim import build_optimizer
from fastbt.train.step import TrainStep
from pipelines.resolution import sizes

REPO = Path(__file__).resolve().parents[1]
BASELINE_100_EPOCHS_H = 1.5  # README "Measured and projected throughput": 8 H100s, 24,000 pairs/s


def train_step(cfg) -> TrainStep:
    model = build_model(cfg.model.arch, cfg.model.projector, channels_last=False)
    optimizer = build_optimizer(model, cfg.optim.weight_decay, cfg.optim.momentum, cfg.optim.eta)
    for group in optimizer.param_groups:
        group["lr"] = 1e-4
    return TrainStep(model, optimizer, build_loss(cfg.loss), cfg.runtime, torch.device("cpu"))


def interleaved(step: TrainStep, batch: int, step_sizes: list[int], rounds: int) -> dict[int, list[float]]:
    """Seconds per step at each size, one step per size per round; one warm-up step each."""
    views = {s: [torch.randn(batch, 3, s, s) for _ in range(2)] for s in step_sizes}
    for s in step_sizes:
        step(*views[s])
    seconds = {s: [] for s in step_sizes}
    for _ in range(rounds):
        for s in step_sizes:
            began = time.perf_counter()
            step(*views[s])
            seconds[s].append(time.perf_counter() - began)
    return seconds


def show(seconds: dict[int, list[float]], end: int) -> dict[int, float]:
    """Print median and spread per size, and the ratio to the end size; return the ratios."""
    median = {s: statistics.median(t) for s, t in seconds.items()}
    for s, t in seconds.items():
        print(f"  {s:4d} px: {median[s] * 1e3:8.1f} ms/step (spread {(max(t) - min(t)) / median[s]:4.0%}), "
              f"{median[s] / median[end]:.3f}x the {end} px step; pixels {(s / end) ** 2:.3f}x")
    return {s: median[s] / median[end] for s in seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--batch", type=int, default=4, help="pairs per step at the fast preset's sizes")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    tiny = config.load(REPO / "configs" / "tiny_cpu.yaml")
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.rounds} interleaved rounds")
    print(f"1. tiny config: {tiny.model.arch}, batch {tiny.train.batch_size}, 24 px vs {tiny.aug.size} px")
    show(interleaved(train_step(tiny), tiny.train.batch_size, [24, tiny.aug.size], args.rounds),
         tiny.aug.size)

    fast = config.load(REPO / "configs" / "fast.yaml")
    end, per_epoch = fast.aug.size, sizes(fast.aug.resolution, fast.aug.size, fast.train.epochs)
    distinct = sorted(set(per_epoch))
    print(f"2. fast preset sizes {distinct} px: {tiny.model.arch} (projector {list(tiny.model.projector)}), "
          f"batch {args.batch}")
    ratio = show(interleaved(train_step(tiny), args.batch, distinct, args.rounds), end)

    share = sum(ratio[s] for s in per_epoch) / len(per_epoch)
    pixels = sum((s / end) ** 2 for s in per_epoch) / len(per_epoch)
    counts = ", ".join(f"{per_epoch.count(s)} at {s} px" for s in distinct)
    print(f"configs/fast.yaml: {fast.train.epochs} epochs ({counts}); {len(distinct)} compiled graphs")
    print(f"  step time over the schedule: {share:.3f}x all epochs at {end} px (measured ratios; "
          f"pixels alone: {pixels:.3f}x) -> {1 - share:.0%} saved")
    print(f"  compute-bound ImageNet projection: {BASELINE_100_EPOCHS_H:.2f} h at {end} px -> "
          f"{BASELINE_100_EPOCHS_H * share:.2f} h ({(1 - share) * BASELINE_100_EPOCHS_H * 60:.0f} min saved; "
          f"pixels alone: {BASELINE_100_EPOCHS_H * pixels:.2f} h)")
    # the same number through the profiler's projection (sizes between interpolated in pixels)
    p = verdict.project_schedule(per_epoch, distinct[0], end, 1, 1, end_to_end=1.0, step=1.0, loader=1e12,
                                 step_at_start=1 / ratio[distinct[0]])
    print(f"  fastbt profile's projection from the two ends alone: {1 - p['saved']:.3f}x")


if __name__ == "__main__":
    main()
