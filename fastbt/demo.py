"""`fastbt demo`: the whole job on an embedded default, on a CPU, in a few minutes.

1. generate a labeled shapes dataset (fastbt/demo_data.py) in ImageNet layout: train and val;
2. convert train to an FFCV .beton (`fastbt convert`);
3. pretrain a small backbone on it (configs/tiny_cpu.yaml; `fastbt pretrain`);
4. profile the same setup for a few steps (`fastbt profile`): where a step's time goes;
5. evaluate: kNN top-1 of the pretrained backbone next to the same network randomly initialized.

Every step is skipped when its output already exists, so a second run only repeats evaluation;
`--fresh` starts over.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import torch

from fastbt import config, loop, runlog
from fastbt.demo_data import make_demo_folder
from fastbt.evaluate import KnnEval
from fastbt.model import build_backbone
from fastbt.profile import profile

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "tiny_cpu.yaml"
TRAIN_PER_CLASS, VAL_PER_CLASS, IMAGE_SIZE = 200, 50, 64


def run(out: Path, overrides: list[str], fresh: bool = False) -> dict:
    from pipelines.convert import convert
    from pipelines.options import Options

    out = Path(out)
    if fresh:
        shutil.rmtree(out, ignore_errors=True)
    data = out / "data"
    for split, per_class, seed in (("train", TRAIN_PER_CLASS, 0), ("val", VAL_PER_CLASS, 1)):
        if not (data / split).exists():
            tmp = data / f"{split}.partial"
            shutil.rmtree(tmp, ignore_errors=True)
            n = make_demo_folder(tmp, per_class, IMAGE_SIZE, seed=seed)
            tmp.rename(data / split)
            print(f"demo: generated {n} {split} images in {data / split}")
    beton = data / "train_ffcv"
    if not beton.exists():
        convert(data / "train", beton, Options("ffcv", max_resolution=IMAGE_SIZE), workers=2)

    cfg_overrides = [f"data.path={beton}", f"train.out_dir={out / 'run'}", *overrides]
    cfg = config.load(CONFIG, cfg_overrides)
    start = time.perf_counter()
    run_dir = loop.pretrain(cfg)
    minutes = (time.perf_counter() - start) / 60
    rates = [r["pairs_per_s"] for r in runlog.read(run_dir / "log.jsonl")
             if "pairs_per_s" in r and not r["includes_warmup"]]
    profile_dir = profile(config.load(CONFIG, [*cfg_overrides, "profile.steps=2",
                                                "profile.warmup_steps=2"]), out / "profile")

    knn = KnnEval(config.load(CONFIG, [*cfg_overrides, f"eval.train={data / 'train'}",
                                       f"eval.val={data / 'val'}", f"eval.size={cfg.aug.size}",
                                       f"eval.resize={cfg.aug.size}"]), torch.device("cpu"))
    torch.manual_seed(0)
    random_init, _ = build_backbone(cfg.model.arch)
    pretrained, _ = build_backbone(cfg.model.arch)
    pretrained.load_state_dict(torch.load(run_dir / "backbone.pth", weights_only=True))
    results = {name: knn(net) for name, net in (("random init", random_init), ("pretrained", pretrained))}

    print(f"\ndemo: pretrained {cfg.model.arch} for {cfg.train.epochs} epochs in {minutes:.1f} min, "
          f"{sum(rates) / max(1, len(rates)):.0f} pairs/s after warm-up (log: {run_dir / 'log.jsonl'})")
    print(f"demo: kNN (k={cfg.eval.knn.k}) on the val shapes, frozen features:")
    for name, acc in results.items():
        print(f"  {name:12s} top-1 {acc['top1']:5.1f}%   top-5 {acc['top5']:5.1f}%")
    print(f"demo: outputs in {out}: data/ (images, .beton), run/ (config.yaml, log.jsonl, "
          f"checkpoints, backbone.pth), profile/ (report.md, charts: {profile_dir / 'report.md'})")
    return results
