"""`inspect`: a converted dataset's manifest summary, and a check that its files hold what it says.

The format's own checks (its files' structure, each image) are its backend's `verify`
(`Writer.verify` in the registry); this module runs them and checks what every format shares.
Checks, in order: the manifest is valid; every data file it lists is there with the listed size;
each file parses (tar + DALI index / .beton structure) with the listed number of samples; every
label is in 0..C-1 and the per-class counts match; every image (or `sample` of them, chosen at
random with a fixed seed) decodes to an RGB image whose longest side is at most max_resolution.
"""

from __future__ import annotations

import io
import os
from collections import Counter

import numpy as np
from PIL import Image

from pipelines.backends import backend
from pipelines.convert import manifest
from pipelines.errors import DataError
from pipelines.convert.jpeg_check import early_end


def summary(m: manifest.Manifest) -> list[str]:
    names, per_class = m.class_names, m.images_per_class
    fewest, most = min(names, key=per_class.get), max(names, key=per_class.get)
    opts = " ".join(f"{k}={v}" for k, v in m.options.items())
    lines = [f"{m.folder}: {m.format} dataset, {m.num_images} images in {len(names)} classes, "
             f"{len(m.files)} data file(s), {sum(f.bytes for f in m.files) / 1e6:.1f} MB",
             f"  made by fastbt {m.fastbt_version} at {m.created} from {m.source}",
             f"  options: {opts}",
             f"  images per class: {per_class[fewest]} ({fewest}) to {per_class[most]} ({most})",
             f"  skipped: {m.count('unreadable')} unreadable, {m.count('ignored')} ignored (not images)"]
    unreadable = [s for s in m.skipped if s["kind"] == "unreadable"]
    lines += [f"    unreadable: {s['path']}: {s['reason']}" for s in unreadable[:10]]
    return lines


def inspect(path: str | os.PathLike, sample: int | None = None, log=print) -> manifest.Manifest:
    """Print the summary, then verify; raises DataError listing what is wrong."""
    m = manifest.read(path)
    for line in summary(m):
        log(line)
    broken = manifest.check_files(m)  # {path: problem}; those files are not read further
    problems = list(broken.values())
    chosen = _choose(m.num_images, sample)
    verify = backend(m.format).writer.verify  # the format's own deep check (its backend folder)
    labels, problems_in_files, decoded = verify(m, chosen, skip=broken)
    problems += problems_in_files
    if not problems:  # counts can only add up when every file was read
        problems += _check_labels(m, labels)
    if problems:
        for p in problems:
            log(f"  problem: {p}")
        raise DataError(f"{m.folder}: {len(problems)} problem(s), the first: {problems[0]}")
    log(f"verified: {len(m.files)} file(s) with the listed sizes, {len(labels)} labels in "
        f"0..{len(m.classes) - 1} matching the per-class counts, {decoded} image(s) decoded "
        f"(RGB, longest side <= {m.options['max_resolution']})")
    return m


def _choose(n: int, sample: int | None) -> set[int] | None:
    """Positions of the images to decode: None means all."""
    if sample is None or sample >= n:
        return None
    return set(np.random.default_rng(0).choice(n, size=sample, replace=False).tolist())


def check_image(where: str, data: bytes, max_side: int, size: tuple[int, int] | None = None) -> str | None:
    try:
        buf = io.BytesIO(data)
        with Image.open(buf) as img:
            img.load()
            if img.format == "JPEG" and (why := early_end(img, buf)):
                return f"{where}: image does not decode ({why})"
            if img.mode != "RGB":
                return f"{where}: image mode {img.mode}, expected RGB"
            if max(img.size) > max_side:
                return f"{where}: image {img.size[0]}x{img.size[1]} larger than max_resolution {max_side}"
            if size is not None and img.size != size:
                return f"{where}: image is {img.size[0]}x{img.size[1]}, metadata says {size[0]}x{size[1]}"
    except (OSError, SyntaxError, ValueError) as err:
        return f"{where}: image does not decode ({err})"
    return None


def _check_labels(m: manifest.Manifest, labels: list[int]) -> list[str]:
    n_classes = len(m.classes)
    bad = [x for x in labels if not 0 <= x < n_classes]
    if bad:
        return [f"{len(bad)} label(s) outside 0..{n_classes - 1}, e.g. {bad[0]}"]
    found = Counter(labels)
    wrong = [name for name, i in m.classes.items() if found[i] != m.images_per_class[name]]
    return [f"class {name!r}: {found[m.classes[name]]} images, manifest says {m.images_per_class[name]}"
            for name in wrong[:5]]
