"""Images/s of the batched photometric augmentation (pipelines.augment) against the per-image
pipelines it replaces, in the same run on the same uint8 crops.

    .venv/bin/python scripts/bench_augment.py                 # CPU, 64 x 224 px
    .venv/bin/python scripts/bench_augment.py --compile --threads 1 --batch 32   # + compiled
    .venv/bin/python scripts/bench_augment.py --compile --threads 1 --batch 32 --layout nchw
    .venv/bin/python scripts/bench_augment.py --device cuda --batch 256 --compile --dtype bf16

Every row does the two Barlow Twins views (jitter, grayscale, blur, solarize, normalize) of each
crop pair; images/s counts both views. Rows: torchvision v2 on each image tensor (on --device), the
official code's PIL path on each image (always CPU), the batched ops eager, and (--compile) the
same ops through torch.compile(fullgraph=True) (pipelines.augment.compiled_apply_view). Crops are
noise: content does not change the cost. Rows are timed interleaved, one call each per round, for
--reps rounds after one warm-up call each (compilation: timed apart and printed); the table gives
the median and the min-max spread, and the compiled/eager ratio of the medians.
"""

import argparse
import math
import random
import statistics
import time

import torch
from PIL import ImageFilter
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from pipelines.augment import AugSpec, ViewSpec, augment_pair, blur_kernel_size


def torchvision_view(view: ViewSpec, spec: AugSpec) -> v2.Compose:
    """The view as a per-image torchvision v2 pipeline on float tensors (the batched ops' reference)."""
    return v2.Compose([
        v2.ToDtype(torch.float32, scale=True),
        v2.RandomApply([v2.ColorJitter(view.brightness, view.contrast, view.saturation, view.hue)],
                       p=view.jitter_p),
        v2.RandomGrayscale(view.gray_p),
        v2.RandomApply([v2.GaussianBlur(blur_kernel_size(view.blur_sigma[1]), view.blur_sigma)],
                       p=view.blur_p),
        v2.RandomSolarize(view.solarize_threshold, p=view.solarize_p),
        v2.Normalize(list(spec.mean), list(spec.std)),
    ])


def official_view(view: ViewSpec, spec: AugSpec):
    """The official code's per-image path: PIL ops on uint8 images, PIL's own gaussian blur."""
    jitter = v2.RandomApply([v2.ColorJitter(view.brightness, view.contrast, view.saturation, view.hue)],
                            p=view.jitter_p)
    gray = v2.RandomGrayscale(view.gray_p)
    # PIL inverts v >= 128; for uint8 values that is x >= 0.5 (see ViewSpec).
    solarize = v2.RandomSolarize(math.ceil(view.solarize_threshold * 255), p=view.solarize_p)
    to_tensor = v2.Compose([v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True),
                            v2.Normalize(list(spec.mean), list(spec.std))])

    def run(im):
        im = gray(jitter(im))
        if random.random() < view.blur_p:
            im = im.filter(ImageFilter.GaussianBlur(random.uniform(*view.blur_sigma)))
        return to_tensor(solarize(im))
    return run


def interleaved_rates(rows, reps: int, device: str) -> dict[str, list[float]]:
    """images/s of each row, one call per row per round; warm-up calls (and compiles) excluded."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for name, fn, (a, b) in rows:
        t0 = time.perf_counter()
        fn(a, b)
        sync()
        print(f"# warm-up {name}: {time.perf_counter() - t0:.1f} s", flush=True)
    rates = {name: [] for name, _, _ in rows}
    for _ in range(reps):
        for name, fn, (a, b) in rows:
            sync()
            t0 = time.perf_counter()
            fn(a, b)
            sync()
            rates[name].append(2 * len(a) / (time.perf_counter() - t0))
    return rates


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--reps", type=int, default=5, help="interleaved timing rounds")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--compile", action="store_true", help="also time the compiled batched ops")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="batched ops' output")
    ap.add_argument("--skip-per-image", action="store_true", help="omit the per-image rows")
    ap.add_argument("--layout", default="channels_last", choices=["channels_last", "nchw"],
                    help="the crops' memory format (the torchvision loader hands over channels-last)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]

    spec = AugSpec(size=args.size)
    shape = (args.batch, 3, args.size, args.size)
    memory_format = torch.channels_last if args.layout == "channels_last" else torch.contiguous_format
    x1, x2 = (torch.randint(0, 256, shape, dtype=torch.uint8, device=args.device)
              .contiguous(memory_format=memory_format) for _ in range(2))
    gen = torch.Generator().manual_seed(0)

    def per_image(f1, f2):
        return lambda a, b: (torch.stack([f1(im) for im in a]), torch.stack([f2(im) for im in b]))

    rows = []  # (name, fn, inputs)
    if not args.skip_per_image:
        pil1, pil2 = ([TF.to_pil_image(im) for im in x.cpu()] for x in (x1, x2))
        t1, t2 = torchvision_view(spec.view1, spec), torchvision_view(spec.view2, spec)
        o1, o2 = official_view(spec.view1, spec), official_view(spec.view2, spec)
        rows += [("torchvision v2, per image", per_image(t1, t2), (x1, x2)),
                 ("official PIL path, per image (CPU)", per_image(o1, o2), (pil1, pil2))]
    eager = "pipelines.augment, batched, eager"
    compiled = "pipelines.augment, batched, torch.compile"
    rows.append((eager, lambda a, b: augment_pair(a, b, spec, gen, dtype), (x1, x2)))
    if args.compile:
        rows.append((compiled, lambda a, b: augment_pair(a, b, spec, gen, dtype, compiled=True), (x1, x2)))

    print(f"device {args.device}, batch {args.batch}, {args.size} px {args.layout} crops, two views, output {args.dtype}, "
          f"{torch.get_num_threads()} CPU threads, torch {torch.__version__}, {args.reps} interleaved rounds")
    rates = interleaved_rates(rows, args.reps, args.device)
    median = {name: statistics.median(r) for name, r in rates.items()}
    base = median[rows[0][0]]
    print(f"| pipeline | images/s (median) | spread (min-max) | vs {rows[0][0]} |\n|---|---|---|---|")
    for name, r in rates.items():
        print(f"| {name} | {median[name]:,.0f} | {min(r):,.0f}-{max(r):,.0f} | {median[name] / base:.2f}x |")
    if args.compile:
        ratios = sorted(c / e for c, e in zip(rates[compiled], rates[eager]))
        print(f"compiled / eager: {median[compiled] / median[eager]:.2f}x (per-round ratios "
              f"{ratios[0]:.2f}-{ratios[-1]:.2f})")


if __name__ == "__main__":
    main()
