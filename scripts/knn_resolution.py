"""kNN top-1 of the demo pretraining with and without a progressive-resolution schedule, per seed.

The demo's data (fastbt/demo.py: generated shapes, 64 px, FFCV) and config (configs/tiny_cpu.yaml,
32 px crops, 8 epochs); the schedule trains at RAMP's 24 px for epochs 0-5 and at 32 px from epoch 6
(FFCV-SSL's ramp share: 70-85% of the epochs; (24/32)^2 = 0.56 of the pixels, about 160 -> 224's
0.51). Both evaluate at 32 px. Runs interleave (fixed, ramp) per seed; prints one line per run and
the seed spread of each arm.

    PYTHONPATH=. python scripts/knn_resolution.py --out /tmp/knn_resolution --seeds 0 1
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path

import torch

from fastbt import config, loop
from fastbt.demo import CONFIG, IMAGE_SIZE, TRAIN_PER_CLASS, VAL_PER_CLASS
from fastbt.demo_data import make_demo_folder
from fastbt.evaluate import KnnEval
from fastbt.model import build_backbone

RAMP = ["aug.resolution.start=24", "aug.resolution.ramp_start_epoch=5", "aug.resolution.ramp_end_epoch=7",
        "aug.resolution.multiple=8"]


def prepare(data: Path) -> Path:
    from pipelines.convert import convert
    from pipelines.options import Options

    for split, per_class, seed in (("train", TRAIN_PER_CLASS, 0), ("val", VAL_PER_CLASS, 1)):
        if not (data / split).exists():
            make_demo_folder(data / split, per_class, IMAGE_SIZE, seed=seed)
    beton = data / "train_ffcv"
    if not beton.exists():
        convert(data / "train", beton, Options("ffcv", max_resolution=IMAGE_SIZE), workers=2, progress=False)
    return beton


def one_run(data: Path, beton: Path, out: Path, seed: int, schedule: list[str], extra: list[str]) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    overrides = [f"data.path={beton}", f"train.out_dir={out}", f"train.seed={seed}",
                 "logging.progress_bar=false", *schedule, *extra]
    cfg = config.load(CONFIG, overrides)
    began = time.perf_counter()
    run_dir = loop.pretrain(cfg)
    seconds = time.perf_counter() - began
    knn = KnnEval(config.load(CONFIG, [*overrides, f"eval.train={data / 'train'}", f"eval.val={data / 'val'}",
                                       f"eval.size={cfg.aug.size}", f"eval.resize={cfg.aug.size}"]),
                  torch.device("cpu"))
    backbone, _ = build_backbone(cfg.model.arch)
    backbone.load_state_dict(torch.load(run_dir / "backbone.pth", weights_only=True))
    return {"seed": seed, "schedule": bool(schedule), "pretrain_s": seconds, **knn(backbone)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/knn_resolution"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--ramp", nargs="+", default=RAMP, help="the schedule arm's overrides")
    parser.add_argument("--arms", nargs="+", choices=["fixed", "ramp"], default=["fixed", "ramp"])
    parser.add_argument("overrides", nargs="*", help="extra config overrides for both arms")
    args = parser.parse_args()
    torch.set_num_threads(1)
    beton = prepare(args.out / "data")
    results = []
    for seed in args.seeds:
        for name, schedule in (("fixed", []), ("ramp", args.ramp)):
            if name not in args.arms:
                continue
            r = one_run(args.out / "data", beton, args.out / f"{name}_{seed}", seed, schedule, args.overrides)
            results.append(r)
            print(json.dumps(r), flush=True)
    for arm in (False, True):
        top1 = [r["top1"] for r in results if r["schedule"] == arm]
        if not top1:
            continue
        secs = [r["pretrain_s"] for r in results if r["schedule"] == arm]
        print(f"{'ramp ' if arm else 'fixed'}: kNN top-1 median {statistics.median(top1):.2f}% "
              f"(seeds: {', '.join(f'{t:.2f}' for t in top1)}; spread {max(top1) - min(top1):.2f} pts), "
              f"pretrain median {statistics.median(secs):.0f} s")


if __name__ == "__main__":
    main()
