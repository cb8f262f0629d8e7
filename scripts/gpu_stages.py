"""The stages of scripts/gpu_check.py, each a function of (sizes, scratch folder) -> its figures.

Every stage builds what it times with fastbt's own builders (`fastbt.train.run.build_train_step`,
`pipelines.augment.augment_pair`, the loss op through scripts/bench_loss.py, LARS through
scripts/bench_optim.py, the profiler's windows through `fastbt.profiling.windows.measure`), so the dry run
(`Sizes` DRY: CPU, a tiny model, small sizes) runs the same code as the GPU run (`Sizes` GPU).
A stage that cannot run here raises `Skipped`; any other exception is a failed stage.
Nothing here imports ffcv or DALI unless their stage runs.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
GOALS = (3000, 3710)  # pairs/s per GPU: the goal, and the stretch goal


class Skipped(Exception):
    """The stage cannot run on this machine; its message says why (e.g. "ffcv not installed")."""


@dataclass(frozen=True)
class Sizes:
    device: str
    arch: str
    projector: tuple[int, ...]
    batch: int  # pairs per step in the step, augmentation and end-to-end stages
    size: int  # crop pixels
    steps: int  # timed steps (>= 15 on the GPU)
    smoke_batch: int
    loss_n: int
    loss_d: int
    reps: int  # timed rounds of the augmentation, loss and LARS stages
    images: int  # generated JPEGs for the end-to-end stages
    image_px: int
    window_steps: int  # the end-to-end profiler's steps per window
    precision: str = "bf16"  # the step's (runtime.precision); the augmentation stage is bf16 always
    channels_last: bool = True
    threads: int = 0  # torch's CPU threads (0: torch's default)
    end_to_end_compiled: bool = True  # runtime.compile in the end-to-end stages (as training runs)
    compile_backend: str = "inductor"  # what every torch.compile in fastbt uses (gpu_check.use_compile_backend)


GPU = Sizes("cuda", "resnet50", (8192, 8192, 8192), batch=256, size=224, steps=15, smoke_batch=16,
            loss_n=2048, loss_d=8192, reps=5, images=2048, image_px=320, window_steps=5)
# The CPU's own fast path, as runtime.precision/channels_last "auto" pick there: this CPU's bf16
# convolutions ran ~20x slower than fp32 and channels-last backward falls back to a slow kernel.
# One thread: two OpenMP threads on a busy 2-core machine stall at every barrier.
DRY = Sizes("cpu", "resnet18", (64, 64), batch=8, size=32, steps=3, smoke_batch=4, loss_n=64, loss_d=256,
            reps=2, images=40, image_px=48, window_steps=2, precision="fp32", channels_last=False, threads=1,
            compile_backend="aot_eager")



# ---- shared helpers -----------------------------------------------------------------------------

def training_config(sizes: Sizes, compiled: bool, batch: int, *extra: str):
    """The pretraining config of the measured step on the sizes' device, precision and layout."""
    from fastbt import config
    return config.load(None, [
        f"model.arch={sizes.arch}", f"model.projector=[{','.join(map(str, sizes.projector))}]",
        f"aug.size={sizes.size}", f"train.batch_size={batch}", f"runtime.device={sizes.device}",
        f"runtime.precision={sizes.precision}", f"runtime.channels_last={str(sizes.channels_last).lower()}",
        f"runtime.compile={str(compiled).lower()}",
        "logging.progress_bar=false", *extra])


def one_process(device: str):
    from fastbt import dist
    return dist.World(rank=0, local_rank=0, size=1, device=torch.device(device))


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class StepRig:
    """generated uint8 crops -> the real augmentation -> the real TrainStep, one call per step."""

    def __init__(self, sizes: Sizes, compiled: bool, batch: int):
        from fastbt.train.optim import set_lr
        from fastbt.precision import autocast_dtype
        from fastbt.train.run import build_train_step
        self.cfg = training_config(sizes, compiled, batch)
        world = one_process(sizes.device)
        self.model, self.optimizer, self.train_step = build_train_step(self.cfg, world)
        self.dtype = autocast_dtype(self.cfg.runtime.precision, world.device)
        self.compiled, self.set_lr = compiled, set_lr
        shape = (batch, 3, sizes.size, sizes.size)
        layout = torch.channels_last if sizes.channels_last else torch.contiguous_format
        self.crops = [torch.randint(0, 256, shape, dtype=torch.uint8, device=world.device)
                      .contiguous(memory_format=layout) for _ in range(2)]

    def __call__(self, i: int) -> torch.Tensor:
        from pipelines.augment import augment_pair
        self.set_lr(self.optimizer, (0.2 * (1 - i / 1000), 0.0048))  # a new LR every step, as in training
        views = augment_pair(*self.crops, self.cfg.aug, torch.Generator().manual_seed(i), self.dtype,
                             self.compiled)
        return self.train_step(*views)


def timed_steps(rig: StepRig, sizes: Sizes, first: int) -> dict:
    synchronize(sizes.device)
    began = time.perf_counter()
    losses = [rig(first + i) for i in range(sizes.steps)]
    synchronize(sizes.device)
    seconds = time.perf_counter() - began
    pairs = rig.crops[0].shape[0] * sizes.steps / seconds
    return {"steps": sizes.steps, "batch": rig.crops[0].shape[0], "pairs_per_s": round(pairs, 1),
            "ms_per_step": round(1e3 * seconds / sizes.steps, 2),
            "vs_goal": round(pairs / GOALS[0], 3), "vs_stretch_goal": round(pairs / GOALS[1], 3),
            "loss_finite": bool(torch.isfinite(torch.stack(losses)).all()), **peak_memory(sizes.device)}


def peak_memory(device: str) -> dict:
    if device.startswith("cuda"):
        return {"peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)}
    return {"peak_host_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}


def bench_module(name: str):
    """A scripts/bench_*.py as a module (this folder is on sys.path when gpu_check.py runs)."""
    return importlib.import_module(name)


def installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a missing parent package (nvidia.dali without nvidia)
        return False


# ---- the stages ---------------------------------------------------------------------------------

def env(sizes: Sizes, scratch: Path) -> dict:
    from fastbt.profiling import environment
    device = torch.device(sizes.device)
    found = environment.collect(device)
    versions = found.pop("versions")
    figures = {**found, "executable": sys.executable, "torch": torch.__version__,
               "cuda": torch.version.cuda, "triton": versions.get("triton") or _version("triton"),
               "ffcv": installed("ffcv"), "dali": installed("nvidia.dali"),
               "compile_cache_artifacts": hasattr(torch.compiler, "save_cache_artifacts")}
    if device.type == "cuda":
        figures["gpu"] = torch.cuda.get_device_name(0)
    return figures


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def smoke(sizes: Sizes, scratch: Path) -> dict:
    """Augmentation plus one train step (bf16, channels-last on the GPU), host syncs as errors."""
    from fastbt.train.step import no_host_syncs
    rig = StepRig(sizes, compiled=False, batch=sizes.smoke_batch)
    rig(0)  # warm-up: lazy state (momenta, cudnn plans) may be created here
    synchronize(sizes.device)
    with no_host_syncs(sizes.device):
        loss = rig(1)
    value = float(loss)
    if not torch.isfinite(loss):
        raise RuntimeError(f"the loss is {value}")
    return {"arch": sizes.arch, "batch": sizes.smoke_batch, "size": sizes.size, "loss": round(value, 3),
            "view_dtype": str(rig.dtype or torch.float32), "channels_last": sizes.channels_last, "host_syncs": 0}


def step_eager(sizes: Sizes, scratch: Path) -> dict:
    rig = StepRig(sizes, compiled=False, batch=sizes.batch)
    for i in range(2):
        rig(i)
    return {"arch": sizes.arch, "size": sizes.size, **timed_steps(rig, sizes, first=2)}


def step_compiled(sizes: Sizes, scratch: Path) -> dict:
    """Compilation timed apart (the first step), then graphs and recompiles during timed steps."""
    from torch._dynamo.utils import counters
    counters.clear()
    rig = StepRig(sizes, compiled=True, batch=sizes.batch)
    began = time.perf_counter()
    rig(0)
    synchronize(sizes.device)
    compile_s = time.perf_counter() - began
    rig(1)  # the second call may still specialize (e.g. the optimizer's state)
    compiled_before = counters["frames"]["ok"]
    figures = timed_steps(rig, sizes, first=2)
    return {"arch": sizes.arch, "size": sizes.size, "compile_s": round(compile_s, 1),
            "graphs": counters["stats"]["unique_graphs"], "frames_compiled": compiled_before,
            "recompiles_while_timed": counters["frames"]["ok"] - compiled_before,
            "graph_breaks": sum(counters["graph_break"].values()), **figures}


def augmentation(sizes: Sizes, scratch: Path) -> dict:
    """Both views, bf16 out, eager and compiled, interleaved (scripts/bench_augment.py's timing)."""
    from pipelines.augment import AugSpec, augment_pair
    bench = bench_module("bench_augment")
    spec = AugSpec(size=sizes.size)
    shape = (sizes.batch, 3, sizes.size, sizes.size)
    crops = tuple(torch.randint(0, 256, shape, dtype=torch.uint8, device=sizes.device)
                  .contiguous(memory_format=torch.channels_last) for _ in range(2))
    gen = torch.Generator().manual_seed(0)
    rows = [(mode, lambda a, b, c=compiled: augment_pair(a, b, spec, gen, torch.bfloat16, c), crops)
            for mode, compiled in (("eager", False), ("compiled", True))]
    rates = {name: statistics.median(r) for name, r in bench.interleaved_rates(rows, sizes.reps, sizes.device).items()}
    return {"batch": sizes.batch, "size": sizes.size, "dtype": "bf16",
            "images_per_s_compiled": round(rates["compiled"], 1), "images_per_s_eager": round(rates["eager"], 1),
            "compiled_vs_eager": round(rates["compiled"] / rates["eager"], 2)}


def loss_op(sizes: Sizes, scratch: Path) -> dict:
    """Forward + backward of the fused op against the official formula (scripts/bench_loss.py)."""
    bench = bench_module("bench_loss")
    n, d = sizes.loss_n, sizes.loss_d
    cases = {impl: bench.run_case(impl, n, d, sizes.reps, 30.0, "auto", 0, sizes.device)
             for impl in ("fused", "reference")}
    fused, official = cases["fused"], cases["reference"]
    return {"n": n, "d": d, "fused_ms": round(fused["time_s"] * 1e3, 2),
            "official_ms": round(official["time_s"] * 1e3, 2),
            "speedup": round(official["time_s"] / fused["time_s"], 2),
            "fused_peak_mib": round(fused["peak_mib"], 1), "official_peak_mib": round(official["peak_mib"], 1)}


def lars(sizes: Sizes, scratch: Path) -> dict:
    """LARS eager vs compiled on the model's parameters (scripts/bench_optim.py)."""
    measured = bench_module("bench_optim").time_lars(sizes.arch, list(sizes.projector), sizes.device,
                                                      sizes.reps)
    eager, compiled = (statistics.median(measured["times"][k]) for k in ("eager", "compiled"))
    return {"arch": sizes.arch, "parameters_m": round(measured["parameters"] / 1e6, 1),
            "eager_ms": round(eager * 1e3, 2), "compiled_ms": round(compiled * 1e3, 2),
            "eager_vs_compiled": round(eager / compiled, 2),
            "compile_s": round(measured["first_step_s"]["compiled"], 1)}


def generated_jpegs(sizes: Sizes, scratch: Path) -> Path:
    from fastbt.demo.data import SHAPES, make_demo_folder
    folder = scratch / "jpegs"
    if not (folder / "done").exists():
        make_demo_folder(folder, per_class=-(-sizes.images // len(SHAPES)), size=sizes.image_px)
        (folder / "done").touch()
    return folder


def converted(folder: Path, scratch: Path, backend: str) -> Path:
    from pipelines.convert import convert
    from pipelines.convert.options import Options
    out = scratch / backend
    if not out.exists():
        convert(folder, out, Options(format=backend, max_resolution=max(64, _side(folder))),
                progress=False)
    return out


def _side(folder: Path) -> int:
    from PIL import Image
    with Image.open(next(folder.glob("*/*.JPEG"))) as im:
        return max(im.size)


def end_to_end(sizes: Sizes, scratch: Path, backend: str) -> dict:
    """The profiler's windows (loader alone, step alone, end to end) over generated JPEGs with
    nproc workers, compiled as training runs: bound by the loader or the step?"""
    from fastbt.profiling import windows
    folder = generated_jpegs(sizes, scratch)
    path = folder if backend == "torchvision" else converted(folder, scratch, backend)
    workers = len(os.sched_getaffinity(0))
    cfg = training_config(sizes, sizes.end_to_end_compiled, sizes.batch, f"data.backend={backend}", f"data.path={path}",
                          f"data.workers={workers}", f"train.out_dir={scratch / 'run'}",
                          f"profile.steps={sizes.window_steps}", "profile.repeats=2", "profile.warmup_steps=2")
    measured = windows.measure(cfg, one_process(sizes.device), scratch)
    rates = {k: round(v, 1) for k, v in measured["global_pairs_per_s"].items()}
    return {"backend": backend, "workers": workers, "batch": sizes.batch, "compiled": sizes.end_to_end_compiled,
            **{f"{k}_pairs_per_s": v for k, v in rates.items()},
            "bound": measured["verdict"]["bound"], "verdict": measured["verdict"]["summary"]}


def needs(module: str, name: str, stage):
    def run(sizes: Sizes, scratch: Path) -> dict:
        if not installed(module):
            raise Skipped(f"{name} not installed")
        return stage(sizes, scratch)
    return run


def gpu_tests(sizes: Sizes, scratch: Path) -> dict:
    """The gpu-marked tests, -x, those that do not compile first (they skip without CUDA)."""
    files = sorted(str(p) for p in (ROOT / "tests").glob("test_*.py") if "mark.gpu" in p.read_text())
    counts = {"passed": 0, "failed": 0, "skipped": 0, "errors": 0}
    for selection in ("not compile", "compile"):
        done = subprocess.run([sys.executable, "-m", "pytest", "-m", "gpu", "-x", "-q", "-p", "no:cacheprovider",
                               "-k", selection, *files], cwd=ROOT, capture_output=True, text=True)
        print(done.stdout[-4000:], done.stderr[-2000:], flush=True)
        last = next((line for line in reversed(done.stdout.splitlines()) if line.strip()), "")
        for n, what in re.findall(r"(\d+) (passed|failed|skipped|error)", last):
            counts["errors" if what == "error" else what] += int(n)
        if done.returncode not in (0, 5):  # 5: nothing selected
            raise RuntimeError(f"pytest -k {selection!r} exited {done.returncode}: {counts}")
    return counts


STAGES = {  # in order of value: what the run must learn first comes first
    "env": env,
    "smoke": smoke,
    "step_eager": step_eager,
    "step_compiled": step_compiled,
    "augmentation": augmentation,
    "loss_op": loss_op,
    "lars": lars,
    "end_to_end_torchvision": lambda sizes, scratch: end_to_end(sizes, scratch, "torchvision"),
    "end_to_end_ffcv": needs("ffcv", "ffcv", lambda sizes, scratch: end_to_end(sizes, scratch, "ffcv")),
    "end_to_end_dali": needs("nvidia.dali", "DALI", lambda sizes, scratch: end_to_end(sizes, scratch, "dali")),
    "gpu_tests": gpu_tests,
}
LIMITS = {  # seconds each stage may take (the global deadline caps them): a hung stage is cut here
    "env": 30, "smoke": 120, "step_eager": 90, "step_compiled": 240, "augmentation": 120, "loss_op": 60,
    "lars": 120, "end_to_end_torchvision": 150, "end_to_end_ffcv": 150, "end_to_end_dali": 150,
    "gpu_tests": 240}
