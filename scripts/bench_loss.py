"""Forward+backward time and peak memory of the fused Barlow Twins loss vs the official formula.

    .venv/bin/python scripts/bench_loss.py [--n 256] [--dims 2048 8192 16384 32768] [--reps 5]

fp32 on CPU. Each (implementation, D) runs in a fresh subprocess, so that one case's memory
cannot hide in another's: it makes z1, z2 (N x D, requires_grad), runs forward+backward once to
warm up (the first call also imports torch._dynamo: excluded), then measures
- peak memory: the process's resident-set high-water mark (VmHWM, reset through
  /proc/self/clear_refs) during one forward+backward, minus the resident set just before it
  (after malloc_trim). It is what the OS had to supply: every tensor, autograd's saved state,
  and BLAS workspaces, beyond the inputs;
- time: the median of --reps forward+backward passes (wall clock, perf_counter; fewer, but at
  least one, where they would take over --budget seconds), on --threads
  torch threads: 1 by default, the same for both. On a shared 2-core machine, two OpenMP threads
  stall at every barrier while the other core runs someone else's job (small kernels measured
  20x slower), which makes 2-thread timings noise.
The reference is skipped where its estimated peak (4 fp32 D x D matrices, as measured at
D=8192) exceeds half the memory available (the machine is shared).
"""
import argparse
import ctypes
import json
import platform
import statistics
import subprocess
import sys
import time

IMPLS = ("fused", "reference")


def run_case(impl, n, d, reps, budget, mode, threads):
    import torch
    if threads:
        torch.set_num_threads(threads)

    from fastbt.config import LossConfig
    from fastbt.ops import barlow_twins_loss, reference_loss
    lambd = LossConfig().lambd  # the paper's
    loss_fn = (lambda z1, z2: reference_loss(z1, z2, lambd)) if impl == "reference" else (
        lambda z1, z2: barlow_twins_loss(z1, z2, lambd, mode=mode))
    z1, z2 = (torch.randn(n, d, requires_grad=True) for _ in range(2))

    def step():
        z1.grad = z2.grad = None
        loss_fn(z1, z2).backward()

    step()  # warm-up
    z1.grad = z2.grad = None  # the measured pass makes its own
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap back, so the baseline is honest
    before = rss_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current resident set
    step()
    peak = rss_kib("VmHWM") - before
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
        if sum(times) + times[-1] > budget:  # one more would likely overrun it
            break
    return {"time_s": statistics.median(times), "runs": len(times), "peak_mib": peak / 1024}


def rss_kib(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def cpu_model():
    with open("/proc/cpuinfo") as f:
        return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")),
                    platform.machine())


def available_bytes():
    with open("/proc/meminfo") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))


def measure(impl, d, args):
    """run_case in a fresh interpreter."""
    cmd = [sys.executable, __file__, "--case", impl, "--n", str(args.n), "--dims", str(d),
           "--reps", str(args.reps), "--budget", str(args.budget), "--mode", args.mode,
           "--threads", str(args.threads)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--dims", type=int, nargs="+", default=[2048, 8192, 16384, 32768])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--budget", type=float, default=30.0, help="seconds of timed runs per case")
    p.add_argument("--mode", default="auto", choices=["auto", "gram", "direct"])
    p.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    p.add_argument("--case", choices=IMPLS, help=argparse.SUPPRESS)  # the subprocess side
    args = p.parse_args()
    if args.case:
        result = run_case(args.case, args.n, args.dims[0], args.reps, args.budget, args.mode,
                          args.threads)
        print(json.dumps(result))
        return

    import torch
    threads = args.threads or torch.get_num_threads()
    print(f"# torch {torch.__version__}, {threads} thread(s), {cpu_model()}; fp32, N={args.n}, "
          f"mode={args.mode}; time: median of up to {args.reps} runs (runs in brackets); "
          "peak: RSS high-water above the inputs")
    print("| D | fused ms | reference ms | speedup | fused peak MiB | reference peak MiB "
          "| memory ratio |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for d in args.dims:
        fused = measure("fused", d, args)
        row = f"| {d} | {fused['time_s'] * 1e3:.1f} ({fused['runs']}) | "
        if 4 * d * d * 4 > available_bytes() / 2:
            row += "skipped (memory) | | {:.1f} | | |".format(fused["peak_mib"])
        else:
            ref = measure("reference", d, args)
            row += (f"{ref['time_s'] * 1e3:.1f} ({ref['runs']}) | "
                    f"{ref['time_s'] / fused['time_s']:.1f}x | "
                    f"{fused['peak_mib']:.1f} | {ref['peak_mib']:.1f} | "
                    f"{ref['peak_mib'] / fused['peak_mib']:.1f}x |")
        print(row, flush=True)


if __name__ == "__main__":
    main()
