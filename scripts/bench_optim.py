"""LARS step time, eager (foreach kernels) vs compiled (one torch.compile'd update per group), in
one run, interleaved.

    .venv/bin/python scripts/bench_optim.py [--arch resnet50] [--projector 8192 8192 8192] [--reps 7]

Parameters of the Barlow Twins model (`fastbt.train.model.build_model`) with random gradients; each
round times one step of each optimizer (same parameters and state shapes); the first step of each
(momentum buffers, compilation) is excluded and the compile time printed. Prints the median and
the min-max spread of each, and the eager/compiled ratio of the medians.
"""
import argparse
import statistics
import time

import torch

from fastbt.train.model import build_model
from fastbt.train.optim import build_optimizer, set_lr


def time_lars(arch: str, projector, device: str, reps: int) -> dict:
    """Interleaved LARS step times (seconds) of each optimizer, its first step's seconds (buffers,
    compilation) and the parameter count. Also scripts/gpu_check.py's LARS stage."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    opts, first = {}, {}
    for name, compiled in (("eager", False), ("compiled", True)):
        torch.manual_seed(0)
        model = build_model(arch, projector, channels_last=False).to(device)
        for p in model.parameters():
            p.grad = torch.randn_like(p) * 1e-3
        opt = build_optimizer(model, 1e-6, 0.9, 0.001, compiled=compiled)
        set_lr(opt, (0.2, 0.0048))
        t0 = time.perf_counter()
        opt.step()
        sync()
        first[name] = time.perf_counter() - t0
        print(f"# first {name} step (buffers{', compilation' if compiled else ''}): "
              f"{first[name]:.1f} s", flush=True)
        opts[name] = opt
    times = {name: [] for name in opts}
    for r in range(reps):
        for name, opt in opts.items():
            set_lr(opt, (0.2 * (1 - r / 100), 0.0048))  # a new LR every step, as in training
            sync()
            t0 = time.perf_counter()
            opt.step()
            sync()
            times[name].append(time.perf_counter() - t0)
    params = sum(p.numel() for g in opts["eager"].param_groups for p in g["params"])
    return {"times": times, "first_step_s": first, "parameters": params}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--projector", type=int, nargs="+", default=[2048, 2048])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    measured = time_lars(args.arch, args.projector, args.device, args.reps)
    times, n = measured["times"], measured["parameters"]
    print(f"{args.arch} + projector {args.projector}: {n / 1e6:.1f} M parameters, {args.device}, "
          f"{args.threads} thread(s), torch {torch.__version__}, {args.reps} interleaved rounds")
    print("| LARS step | ms (median) | spread (min-max) |\n|---|---|---|")
    for name, t in times.items():
        print(f"| {name} | {statistics.median(t) * 1e3:.1f} | {min(t) * 1e3:.1f}-{max(t) * 1e3:.1f} |")
    print(f"eager / compiled: {statistics.median(times['eager']) / statistics.median(times['compiled']):.2f}x")


if __name__ == "__main__":
    main()
