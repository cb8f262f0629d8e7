#!/usr/bin/env python
"""Evaluation at scale (issue 23): `fastbt eval knn` and `fastbt eval linear --cached-features` over
a large labeled train set, as a user runs them, each one subprocess whose whole tree is watched.

    nice -n 10 .venv/bin/python scripts/bench_eval_scale.py --train T --val V
        [--weights W] [--arch resnet18] [--size 64] [--json result.json]

For each command: wall time, CPU of the process tree, peak RSS, PSS and anonymous RSS of the tree
(`bench_scale.run_watched`), the images per second of feature extraction (train + val images over
the seconds the command reports), and the bytes its feature bank or cache needs (N x width x 4, fp32
on CPU). The linear probe runs one epoch: the cache is what is measured, not the head. Without
--weights a randomly initialized backbone is saved and used (rates and memory do not depend on the
weights; the accuracies printed then mean nothing). CPU only (runtime.device=cpu, fp32).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_scale import run_watched  # noqa: E402


def random_weights(arch: str, path: Path) -> Path:
    import torch

    from fastbt.train.model import build_backbone

    torch.manual_seed(0)
    torch.save(build_backbone(arch)[0].state_dict(), path)
    return path


def run_eval(kind: str, weights: Path, train: str, val: str, arch: str, size: int, workers: int,
             out: Path) -> dict:
    """One `fastbt eval knn` or `fastbt eval linear --cached-features` (one epoch), watched."""
    from fastbt.eval.evaldir import result_path
    from fastbt.eval.setup import proportional_resize
    from fastbt.train.model import feature_width

    extra = ["--cached-features", "eval.linear.epochs=1"] if kind == "linear" else []
    cmd = [sys.executable, "-m", "fastbt.cli", "eval", kind, "--weights", str(weights), "--train", train,
           "--val", val, "--arch", arch, "--out", str(out), *extra, "runtime.device=cpu", "runtime.precision=fp32",
           f"eval.size={size}", f"eval.resize={proportional_resize(size)}", f"data.workers={workers}"]
    watched = run_watched(cmd)
    del watched["stdout"], watched["stderr"]
    result = json.loads((out if kind == "knn" else result_path(out)).read_text())
    images = result["num_train"] + result["num_val"]
    seconds = result["seconds"] if kind == "knn" else result["extract_seconds"]
    return {"kind": kind, "num_train": result["num_train"], "num_val": result["num_val"],
            "extract_images_per_s": round(images / seconds, 1), "reported_seconds": round(seconds, 2),
            "bank_mb": round(result["num_train"] * feature_width(arch) * 4 / 2**20, 1),
            "top1": result["top1"], **watched}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--train", required=True)
    p.add_argument("--val", required=True)
    p.add_argument("--weights", type=Path)
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--size", type=int, default=64, help="eval.size (center crop); resize as fastbt eval sets it (x 256/224)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--only", choices=("knn", "linear"), help="run one of the two (default: both)")
    p.add_argument("--json", type=Path, help="also write the result here")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        weights = a.weights or random_weights(a.arch, tmp / f"random_{a.arch}.pth")
        runs = [run_eval(kind, weights, a.train, a.val, a.arch, a.size, a.workers, tmp / kind)
                for kind in ("knn", "linear") if a.only in (None, kind)]
    result = {"train": a.train, "val": a.val, "arch": a.arch, "size": a.size, "workers": a.workers, "runs": runs,
              "cpu_count": os.cpu_count(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    print(json.dumps(result, indent=1))
    if a.json:
        a.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
