"""`fastbt demo`: the whole job on a generated dataset, on a CPU, in a few minutes.

1. generate a labeled dataset of shape textures (fastbt/demo/data.py) in ImageNet layout: train, val;
2. convert train to an FFCV .beton (`fastbt convert`);
3. pretrain a small backbone on it (configs/demo_cpu.yaml; `fastbt pretrain`), with the online kNN
   monitor on so the run's curves.png shows the accuracy rise as it trains;
4. profile the same setup for a few steps (`fastbt profile`): where a step's time goes;
5. evaluate: kNN top-1 of the pretrained backbone next to the same network randomly initialized,
   both at the resolution it was trained at;
6. print a summary: time per stage, step time and pairs/s, the profile's phases, kNN, outputs.

Every stage is skipped when its output already exists, so a second run only repeats evaluation;
`--fresh` starts over.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "demo_cpu.yaml"
# 200 training images per class: enough for a kNN bank, few enough that generation, conversion and
# each epoch's kNN check stay seconds. Images are stored at twice the training crop (32 px), so a
# random crop of a quarter of the frame still has pixels of its own to be resized from.
TRAIN_PER_CLASS, VAL_PER_CLASS, IMAGE_SIZE = 200, 50, 64
PROFILE = ["profile.steps=2", "profile.warmup_steps=2"]  # x profile.repeats (5) interleaved windows
# What the demo takes on the machine CI runs on (2 cores); `fastbt demo --help` says it.
EXPECTED = "about 4 minutes on 2 idle CPU cores"
DESCRIPTION = f"""\
Show what fastbt does, end to end, on a CPU ({EXPECTED}):

  1. generate {10 * TRAIN_PER_CLASS:,} train and {10 * VAL_PER_CLASS} val images ({IMAGE_SIZE} px) of ten shape
     textures in random colours that vary over each image: the class is the shape only;
  2. convert train to FFCV (OUT/data/train_ffcv);
  3. pretrain a ResNet-18 with Barlow Twins on 32 px crops ({CONFIG.name}), the online
     kNN monitor checking the val accuracy every epoch;
  4. profile a few steps: where a step's time goes (OUT/profile/report.md);
  5. compare kNN top-1 on val of the pretrained backbone and of the same network at
     random init, both on center crops at the resolution it trained at;
  6. print a summary: time per stage, pairs/s, the profile's phases, kNN, and the
     outputs, among them OUT/run/curves.png (loss, LR, pairs/s, kNN per epoch).

Stages whose output exists are skipped on a second run (--fresh starts over)."""


DEMO_OUTPUTS = {"data", "run", "profile"}  # what a demo writes into its --out folder
# Every file a demo writes under --out (relative paths; a run's tb/ events and previous-*/ set aside
# by train.resume=restart included): --fresh deletes a folder only if it holds nothing else.
DEMO_FILES = re.compile("|".join([
    r"data/(train|val)(\.partial)?/[a-z]+/[a-z]+_\d+\.JPEG",
    r"data/train_ffcv(\.partial)?/(data\.beton|manifest\.json|journal\.jsonl|unreadable\.txt|\.lock"
    r"|shards/[^/]+|[^/]+\.tmp)",
    r"run/(previous-[^/]+/)?(config\.yaml|log\.jsonl|ckpt_\d+\.pt|backbone\.pth|curves\.png|\.lock|\.fastbt-run"
    r"|\.[^/]+\.tmp)",
    r"run/tb/[^/]+",
    r"profile/(report\.json|report\.md|phases\.png|throughput\.png|trace\.json|\.[^/]+\.tmp)",
]))


def foreign_files(out: Path) -> list[str]:
    """The files (and links) under `out` that no demo writes, as paths relative to it."""
    if not out.is_dir() or out.is_symlink():
        return [out.name]
    found = []
    for folder, dirs, files in os.walk(out):
        for name in files + [d for d in dirs if os.path.islink(os.path.join(folder, d))]:
            path = Path(folder, name)
            relative = path.relative_to(out).as_posix()
            if path.is_symlink() or not DEMO_FILES.fullmatch(relative):
                found.append(relative)
    return sorted(found)


def clear(out: Path) -> None:
    """Delete a previous demo's folder (--fresh); refuse a folder holding anything, at any depth,
    that a demo did not write (nothing is deleted then)."""
    from pipelines.errors import DataError
    from pipelines.convert.source import printable

    if not out.exists() and not out.is_symlink():
        return
    if out.is_symlink() or not out.is_dir():
        what = f"a symbolic link to {printable(os.readlink(out))}" if out.is_symlink() else "a file"
        raise DataError(f"{printable(out)} is {what}, not a folder a demo wrote: --fresh deletes only "
                        "a demo's own folder (choose another --out)")
    foreign = foreign_files(out)
    if foreign:
        shown = ", ".join(printable(name) for name in foreign[:3])
        raise DataError(f"{printable(out)} holds {shown}{' ...' if len(foreign) > 3 else ''}, which no demo "
                        "wrote: --fresh deletes only a demo's own folder (choose another --out)")
    shutil.rmtree(out)


def generate_data(data: Path) -> None:
    """data/train and data/val: the shape textures (fixed seeds: every demo sees the same images)."""
    from fastbt.demo.data import make_demo_folder

    for split, per_class, seed in (("train", TRAIN_PER_CLASS, 0), ("val", VAL_PER_CLASS, 1)):
        if not (data / split).exists():
            tmp = data / f"{split}.partial"
            shutil.rmtree(tmp, ignore_errors=True)
            n = make_demo_folder(tmp, per_class, IMAGE_SIZE, seed=seed)
            tmp.rename(data / split)
            print(f"demo: generated {n} {split} images in {data / split}")


def convert_train(data: Path) -> Path:
    """data/train_ffcv: the train split as an FFCV dataset (`fastbt convert`)."""
    from pipelines.convert import convert
    from pipelines.convert.options import Options

    beton = data / "train_ffcv"
    if not beton.exists():
        convert(data / "train", beton, Options("ffcv", max_resolution=IMAGE_SIZE), workers=2)
    return beton


def run(out: Path, overrides: list[str], fresh: bool = False, with_profile: bool = True) -> dict:
    """The demo in `out`; returns kNN results {"pretrained": ..., "random init": ...}. `with_profile`
    False skips stage 4 (scripts that compare many runs)."""
    import torch

    from fastbt import config, plot
    from fastbt.eval.protocol import KnnEval
    from fastbt.eval.setup import proportional_resize
    from fastbt.eval.weights import load_backbone
    from fastbt.profiling.windows import profile
    from fastbt.train import loop
    from fastbt.train.model import build_backbone

    out = Path(out)
    base = config.load(CONFIG, overrides)  # bad overrides are refused before anything is deleted
    if fresh:
        clear(out)
    times: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        times[stage] = times.get(stage, 0.0) + now - clock
        clock = now

    data = out / "data"
    generate_data(data)
    lap("generate data")
    beton = convert_train(data)
    lap("convert")

    # the online monitor and the final comparison judge at the training resolution (see fastbt/eval/setup.py)
    cfg_overrides = [f"data.path={beton}", f"train.out_dir={out / 'run'}", f"eval.train={data / 'train'}",
                     f"eval.val={data / 'val'}", f"eval.size={base.aug.size}",
                     f"eval.resize={proportional_resize(base.aug.size)}", *overrides]
    cfg = config.load(CONFIG, cfg_overrides)
    run_dir = loop.pretrain(cfg)
    lap("pretrain")
    profile_dir = out / "profile"
    if with_profile and not (profile_dir / "report.json").exists():
        profile(config.load(CONFIG, [*cfg_overrides, *PROFILE]), profile_dir)
    lap("profile")

    device = torch.device("cpu")
    knn = KnnEval(cfg, device)
    torch.manual_seed(cfg.train.seed)  # the init pretraining started from (build_run seeds the same)
    random_init, _ = build_backbone(cfg.model.arch)
    pretrained, _ = load_backbone(run_dir / "backbone.pth", cfg.model.arch)
    results = {name: knn(net) for name, net in (("pretrained", pretrained), ("random init", random_init))}
    lap("evaluate")
    curves = plot.write_curves(run_dir)  # the run's curves, every record

    print(summary(cfg, run_dir, profile_dir, curves, results, times, len(knn.train.classes)))
    return results


def summary(cfg, run_dir: Path, profile_dir: Path, curves: Path, results: dict, times: dict,
            num_classes: int) -> str:
    """The table a person reads at the end of the demo."""
    from fastbt import runlog
    from fastbt.profiling.report import PHASE_NAMES, load

    records = runlog.read(run_dir / "log.jsonl")
    rates = [r["pairs_per_s"] for r in records if "pairs_per_s" in r and not r["includes_warmup"]]
    pairs_per_s = sorted(rates)[len(rates) // 2] if rates else float("nan")  # median: robust to load
    steps = max((r["step"] for r in records), default=0)
    where = "not profiled"
    if (profile_dir / "report.json").exists():
        report = load(profile_dir / "report.json")
        phases = {p: t for p, t in report["phases"].items() if t is not None}
        where = ", ".join(f"{PHASE_NAMES[p]} {t / report['phase_step_s']:.0%}"
                          for p, t in sorted(phases.items(), key=lambda kv: -kv[1])) + " (profile)"
    pre, rnd = results["pretrained"], results["random init"]
    size = cfg.eval.size
    lines = [
        "",
        f"fastbt demo: Barlow Twins on {cfg.runtime.device}, {cfg.model.arch} at {cfg.aug.size} px, "
        f"batch {cfg.train.batch_size}, {steps} steps ({cfg.train.epochs} epochs)",
        "",
        f"  {'time':22s} {sum(times.values()) / 60:.1f} min in all: "
        + ", ".join(f"{stage} {seconds:.0f} s" for stage, seconds in times.items()),
        f"  {'training speed':22s} {1e3 * cfg.train.batch_size / pairs_per_s:.0f} ms per step, "
        f"{pairs_per_s:.0f} pairs/s (median after warm-up)",
        f"  {'where a step goes':22s} {where}",
        f"  {'kNN top-1, val':22s} pretrained {pre['top1']:.1f}%, random init {rnd['top1']:.1f}%: "
        f"{pre['top1'] - rnd['top1']:+.1f} points (chance {100 / num_classes:.0f}%; k={cfg.eval.knn.k}, "
        f"{size} px center crops, both)",
        f"  {'kNN top-5, val':22s} pretrained {pre['top5']:.1f}%, random init {rnd['top5']:.1f}%",
        "",
        "  outputs",
        f"    {'curves':20s} {curves}",
        f"    {'run':20s} {run_dir}/ (config.yaml, log.jsonl, checkpoints, backbone.pth)",
        *([f"    {'profile':20s} {profile_dir / 'report.md'} (+ phases.png, throughput.png)"]
          if (profile_dir / "report.json").exists() else []),
        f"    {'data':20s} {Path(cfg.eval.train).parent}/ (train/, val/ images; train_ffcv/ .beton)",
        "",
        f"  next: fastbt eval knn --weights {run_dir / 'backbone.pth'}   (the run's settings and "
        f"resolution)",
    ]
    return "\n".join(lines)
