"""Label subsets for semi-supervised fine-tuning: which train images keep their labels.

Two sources, as the Barlow Twins paper's 1% / 10% ImageNet evaluation:
- a list file, one image file name a line (the SimCLR lists `1percent.txt` / `10percent.txt` that
  facebookresearch/barlowtwins evaluate.py reads): `n01440764_10026.JPEG` names the image
  `n01440764/n01440764_10026.JPEG` of the train folder (its class is the part before `_`);
- else a seeded, class-balanced draw: round(percent% of each class's images) from every class,
  chosen by a generator seeded with `seed`; a percent that leaves a class with none is refused.

Either way the result records what was used (source, seed, size, images per class, and a sha256 of
the chosen paths), so a figure can say which subset it was measured on.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

from fastbt.errors import ConfigError
from pipelines.convert.source import Sample, printable

PERCENTS = (1, 10, 100)


@dataclass(frozen=True)
class Subset:
    indices: tuple[int, ...] | None  # into the train set's samples (scan order); None: all of them
    source: str  # "all", "drawn" or "file"
    size: int
    per_class: tuple[int, ...] = ()  # images of each class (index = label); () for a whole converted set
    sha256: str = ""  # of the chosen relative paths, sorted, one a line ("": a whole converted set)
    seed: int | None = None  # of the draw
    file: str | None = None

    def record(self) -> dict:
        return {"source": self.source, "file": self.file, "seed": self.seed, "size": self.size,
                "per_class_min": min(self.per_class, default=None),
                "per_class_max": max(self.per_class, default=None),
                "per_class": list(self.per_class), "sha256": self.sha256}


def whole(size: int) -> Subset:
    """Every image of a set whose files are not listed here (a converted dataset)."""
    return Subset(None, "all", size)


def _made(samples: tuple[Sample, ...], num_classes: int, indices: list[int] | None, **kwargs) -> Subset:
    chosen = [samples[i] for i in indices] if indices is not None else list(samples)
    per_class = [0] * num_classes
    for sample in chosen:
        per_class[sample.label] += 1
    digest = hashlib.sha256("".join(f"{p}\n" for p in sorted(s.path for s in chosen)).encode()).hexdigest()
    return Subset(tuple(indices) if indices is not None else None, size=len(chosen),
                  per_class=tuple(per_class), sha256=digest, **kwargs)


def read_list(path: str | Path) -> list[str]:
    """The relative paths a SimCLR-style list names: `<class>_<id>.<ext>` -> `<class>/<that name>`."""
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"--subset {printable(path)}: cannot read it ({type(err).__name__})") from None
    names = [line.strip() for line in lines if line.strip()]
    bad = next((n for n in names if "_" not in n or "/" in n or n.startswith("_")), None)
    if bad is not None or not names:
        what = f"the line {bad!r} is not" if bad is not None else "it holds no"
        raise ConfigError(f"--subset {printable(path)}: {what} an image file name like n01440764_10026.JPEG")
    return [f"{name.split('_', 1)[0]}/{name}" for name in names]


def from_list(samples: tuple[Sample, ...], num_classes: int, path: str | Path, train: str) -> Subset:
    """The subset a list file names; every name must be an image of the train set."""
    index = {sample.path: i for i, sample in enumerate(samples)}
    wanted = list(dict.fromkeys(read_list(path)))  # a name listed twice is one image
    missing = [name for name in wanted if name not in index]
    if missing:
        shown = ", ".join(printable(name) for name in missing[:3])
        raise ConfigError(f"--subset {printable(path)}: {len(missing)} of its {len(wanted)} images are "
                          f"not in the train set {printable(train)} ({shown}{' ...' if len(missing) > 3 else ''})")
    return _made(samples, num_classes, sorted(index[name] for name in wanted), source="file", file=str(path))


def check_percent(percent: int) -> None:
    if percent not in PERCENTS:
        raise ConfigError(f"--train-percent {percent}: expected one of {', '.join(map(str, PERCENTS))}")


def draw(samples: tuple[Sample, ...], classes: tuple[str, ...], percent: int, seed: int) -> Subset:
    """round(percent% of each class), drawn with a generator seeded by `seed` (all of them at 100)."""
    check_percent(percent)
    if percent == 100:
        return _made(samples, len(classes), None, source="all")
    members: list[list[int]] = [[] for _ in classes]
    for i, sample in enumerate(samples):
        members[sample.label].append(i)
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for label, images in enumerate(members):
        keep = int(len(images) * percent / 100 + 0.5)
        if keep == 0:
            raise ConfigError(f"--train-percent {percent} leaves class {printable(classes[label])!r} "
                              f"({len(images)} images) with none; give a larger percent or a --subset file")
        chosen += [images[j] for j in torch.randperm(len(images), generator=generator)[:keep].tolist()]
    return _made(samples, len(classes), sorted(chosen), source="drawn", seed=seed)
