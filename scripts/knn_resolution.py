"""kNN top-1 of the demo with and without a progressive-resolution schedule, per seed.

Each run is `fastbt demo` itself (fastbt/demo.py: its generated shapes, converted to FFCV once and
shared by every run, configs/demo_cpu.yaml, the demo's kNN at 32 px), without the profile stage, so
the fixed arm of seed N is exactly `fastbt demo train.seed=N`. The ramp arm adds the schedule:
24 px, then 32 px for the last epochs, the ramp placed where FFCV-SSL and FFCV's rn50 configs place
it (70% -> 85% of the epochs; 24/32 px is (24/32)^2 = 0.56 of the pixels, about 160 -> 224 px's
0.51). Both arms evaluate at 32 px. Prints one JSON line per run, then each arm's median and seed
spread (max - min).

    PYTHONPATH=. python scripts/knn_resolution.py --out /tmp/knn_resolution --seeds 0 1 2 [--arms ramp]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from fastbt import config, demo

RAMP_SHARE = (0.70, 0.85)  # FFCV-SSL / FFCV rn50: the ramp spans these fractions of the epochs


def ramp_overrides(epochs: int, start: int = 24) -> list[str]:
    return [f"aug.resolution.start={start}", f"aug.resolution.ramp_start_epoch={int(RAMP_SHARE[0] * epochs)}",
            f"aug.resolution.ramp_end_epoch={int(RAMP_SHARE[1] * epochs)}", "aug.resolution.multiple=8"]


def one_run(data: Path, out: Path, seed: int, arm: list[str], extra: list[str]) -> dict:
    """One demo run in `out` on the shared `data`; the wall time covers pretraining and evaluation."""
    demo.clear(out)  # a previous run's folder; refuses one holding anything a demo did not write
    out.mkdir(parents=True)
    (out / "data").symlink_to(data.resolve())
    began = time.perf_counter()
    results = demo.run(out, [f"train.seed={seed}", "logging.progress_bar=false", *arm, *extra], with_profile=False)
    return {"seed": seed, "schedule": bool(arm), "wall_s": round(time.perf_counter() - began, 1),
            "top1": results["pretrained"]["top1"], "random_init_top1": results["random init"]["top1"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/knn_resolution"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--arms", nargs="+", choices=["fixed", "ramp"], default=["fixed", "ramp"])
    parser.add_argument("overrides", nargs="*", help="extra config overrides for both arms")
    args = parser.parse_args()
    data = args.out / "data"
    demo.generate_data(data)
    demo.convert_train(data)
    ramp = ramp_overrides(config.load(demo.CONFIG, args.overrides).train.epochs)
    print("ramp arm:", " ".join(ramp), flush=True)
    results = []
    for seed in args.seeds:  # interleaved: both arms of a seed back to back
        for name in args.arms:
            r = one_run(data, args.out / f"{name}_{seed}", seed, ramp if name == "ramp" else [], args.overrides)
            results.append(r)
            print(json.dumps(r), flush=True)
    for name in args.arms:
        arm = [r for r in results if r["schedule"] == (name == "ramp")]
        top1 = [r["top1"] for r in arm]
        print(f"{name:5s}: kNN top-1 median {statistics.median(top1):.1f}% (seeds {args.seeds}: "
              f"{', '.join(f'{t:.1f}' for t in top1)}; spread {max(top1) - min(top1):.1f} pts), "
              f"wall median {statistics.median(r['wall_s'] for r in arm):.0f} s")


if __name__ == "__main__":
    main()
