"""Images/s of the batched photometric augmentation (pipelines.augment) against the per-image
pipelines it replaces, in the same run on the same uint8 crops.

    .venv/bin/python scripts/bench_augment.py                 # CPU, 64 x 224 px
    .venv/bin/python scripts/bench_augment.py --device cuda --batch 256

Every row does the two Barlow Twins views (jitter, grayscale, blur, solarize, normalize) of each
crop pair; images/s counts both views. Rows: torchvision v2 on each image tensor (on --device), the
official code's PIL path on each image (always CPU), and the batched ops. Crops are noise: content
does not change the cost.
"""

import argparse
import math
import random
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


def images_per_s(fn, x1, x2, iters: int, device: str) -> float:
    fn(x1, x2)  # warm-up (and compilation, when asked), not timed
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(iters):
        fn(x1, x2)
    sync()
    return 2 * len(x1) * iters / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile(augment_pair)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    spec = AugSpec(size=args.size)
    shape = (args.batch, 3, args.size, args.size)
    x1, x2 = (torch.randint(0, 256, shape, dtype=torch.uint8, device=args.device)
              .contiguous(memory_format=torch.channels_last) for _ in range(2))
    pil1, pil2 = ([TF.to_pil_image(im) for im in x.cpu()] for x in (x1, x2))
    gen = torch.Generator().manual_seed(0)
    t1, t2 = torchvision_view(spec.view1, spec), torchvision_view(spec.view2, spec)
    o1, o2 = official_view(spec.view1, spec), official_view(spec.view2, spec)

    def per_image(f1, f2):
        return lambda a, b: (torch.stack([f1(im) for im in a]), torch.stack([f2(im) for im in b]))

    rows = [  # (name, fn, inputs)
        ("torchvision v2, per image", per_image(t1, t2), (x1, x2)),
        ("official PIL path, per image (CPU)", per_image(o1, o2), (pil1, pil2)),
        ("pipelines.augment, batched", lambda a, b: augment_pair(a, b, spec, gen), (x1, x2)),
    ]
    if args.compile:
        compiled = torch.compile(augment_pair)
        rows.append(("pipelines.augment, torch.compile", lambda a, b: compiled(a, b, spec, gen), (x1, x2)))

    print(f"device {args.device}, batch {args.batch}, {args.size} px, two views, "
          f"{torch.get_num_threads()} CPU threads, torch {torch.__version__}")
    print("| pipeline | images/s | vs torchvision v2 |\n|---|---|---|")
    base = None
    for name, fn, (a, b) in rows:
        rate = images_per_s(fn, a, b, args.iters, args.device)
        base = base or rate
        print(f"| {name} | {rate:,.0f} | {rate / base:.1f}x |", flush=True)


if __name__ == "__main__":
    main()
