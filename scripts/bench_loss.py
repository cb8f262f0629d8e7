"""Forward+backward time and peak memory of the fused Barlow Twins loss vs the official formula,
and its per-rank FLOPs and bytes communicated for W ranks.

    .venv/bin/python scripts/bench_loss.py [--n 256] [--dims 2048 8192 16384 32768] [--reps 5]
    .venv/bin/python scripts/bench_loss.py --per-rank-only      # the W = 1, 8, 64 table alone
    .venv/bin/python scripts/bench_loss.py --device cuda        # timing on the GPU

Per-rank table (first): global batch --global-batch, width --global-dim, inputs in --dtype. W=1
FLOPs are counted by torch.utils.flop_counter.FlopCounterMode over a forward+backward on the meta
device (no arithmetic runs; the custom ops count through their registered formulas); W > 1 rows
are analytic (fastbt.train.ops.xcorr.loss_cost), as are bytes. "before" is the previous design, in which
every rank computed both full N x N Grams and the whole gradient: 8 N^2 D flops whatever W.

Timing: fp32 on --device (CPU by default). Each (implementation, D) runs in a fresh subprocess, so that one case's memory
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


def run_case(impl, n, d, reps, budget, mode, threads, device="cpu"):
    import torch
    if threads:
        torch.set_num_threads(threads)

    from fastbt.train.ops import barlow_twins_loss, reference_loss
    lambd = paper_lambd()
    loss_fn = (lambda z1, z2: reference_loss(z1, z2, lambd)) if impl == "reference" else (
        lambda z1, z2: barlow_twins_loss(z1, z2, lambd, mode=mode))
    z1, z2 = (torch.randn(n, d, requires_grad=True, device=device) for _ in range(2))
    cuda = device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def step():
        z1.grad = z2.grad = None
        loss_fn(z1, z2).backward()
        sync()

    step()  # warm-up
    z1.grad = z2.grad = None  # the measured pass makes its own
    if cuda:
        before = torch.cuda.memory_allocated() * 1024 ** -1
        torch.cuda.reset_peak_memory_stats()
        step()
        peak = torch.cuda.max_memory_allocated() / 1024 - before
    else:
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


def paper_lambd() -> float:
    """The off-diagonal weight of the paper (the config's default)."""
    from fastbt.config import LossConfig
    return LossConfig().lambd


def counted_flops(mode, n, d, dtype):
    """FlopCounterMode total of one forward+backward on the meta device (one process)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from fastbt.train.ops import barlow_twins_loss
    z1, z2 = (torch.empty(n, d, device="meta", dtype=dtype, requires_grad=True) for _ in range(2))
    with FlopCounterMode(display=False) as counter:
        barlow_twins_loss(z1, z2, paper_lambd(), mode=mode).backward()
    return counter.get_total_flops()


def per_rank_table(args):
    import torch

    from fastbt.train.ops.xcorr import FLOPS_PER_BYTE, choose_mode, loss_cost
    n, d = args.global_batch, args.global_dim
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    size = dtype.itemsize
    print(f"# per rank, forward+backward: global batch N={n}, D={d}, z in {args.dtype}; "
          f"auto weighs 1 byte as {FLOPS_PER_BYTE} flops")
    print("| W | mode | GFLOP per rank | how | vs W=1 | before (GFLOP) | MB received per rank | auto |")
    print("|---:|---|---:|---|---:|---:|---:|---|")
    for world in args.ranks:
        pick = choose_mode(n, d, world, size)
        for mode in ("gram", "direct"):
            flops, comm = loss_cost(mode, n, d, world, size)
            how = "analytic"
            if world == 1:
                flops, how = counted_flops(mode, n, d, dtype), "FlopCounterMode"
            one = loss_cost(mode, n, d, 1, size)[0]
            before = 8 * n * n * d if mode == "gram" else loss_cost(mode, n, d, world, size)[0]
            print(f"| {world} | {mode} | {flops / 1e9:.1f} | {how} | {flops / one:.3f} | "
                  f"{before / 1e9:.1f} | {comm / 1e6:.1f} | {'<-' if mode == pick else ''} |",
                  flush=True)


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
           "--threads", str(args.threads), "--device", args.device]
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
    p.add_argument("--device", default="cpu")
    p.add_argument("--global-batch", type=int, default=2048, help="per-rank table: global N")
    p.add_argument("--global-dim", type=int, default=8192, help="per-rank table: D")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"], help="per-rank table: z dtype")
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 8, 64])
    p.add_argument("--per-rank-only", action="store_true", help="print the per-rank table and exit")
    p.add_argument("--case", choices=IMPLS, help=argparse.SUPPRESS)  # the subprocess side
    args = p.parse_args()
    if args.case:
        result = run_case(args.case, args.n, args.dims[0], args.reps, args.budget, args.mode,
                          args.threads, args.device)
        print(json.dumps(result))
        return

    import torch
    per_rank_table(args)
    if args.per_rank_only:
        return
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
