"""scripts/make_imagenet_like.py (issue 23): ImageNet's names and oddities, and the same bytes for
any worker count."""

import importlib.util
import os
import sys
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("make_imagenet_like", ROOT / "scripts" / "make_imagenet_like.py")
gen = sys.modules["make_imagenet_like"] = importlib.util.module_from_spec(_spec)  # workers pickle by name
_spec.loader.exec_module(gen)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_bytes_with_one_and_two_workers_and_imagenet_layout(tmp_path, monkeypatch):
    monkeypatch.setattr(gen, "TEXTURE_SIDE", 256)  # small textures: a fast test, same code path
    monkeypatch.setattr(gen, "POOL_SIZE", 3)
    one = gen.generate(tmp_path / "one", n=24, classes=4, seed=5, workers=1, chunk=5)
    two = gen.generate(tmp_path / "two", n=24, classes=4, seed=5, workers=2, chunk=5)
    a, b = _files(tmp_path / "one"), _files(tmp_path / "two")
    assert a == b and len(a) == 24 and one["written"] == two["written"] == 24
    classes = sorted(os.listdir(tmp_path / "one"))
    assert len(classes) == 4 and all(len(c) == 9 and c[0] == "n" and c[1:].isdigit() for c in classes)
    assert all(name.split("/")[1].startswith(name.split("/")[0] + "_") and name.endswith(".JPEG") for name in a)
    modes = {name: Image.open(tmp_path / "one" / name) for name in a}
    assert modes[gen.relative_path(0, 24, 4)].format == "PNG"  # a PNG named .JPEG, as in ImageNet
    assert modes[gen.relative_path(3, 24, 4)].mode == "L"
    assert modes[gen.relative_path(7, 24, 4)].mode == "CMYK"
    assert sum(im.format == "JPEG" and im.mode == "RGB" for im in modes.values()) == 21
    # a rerun skips finished files; another seed gives other bytes
    assert gen.generate(tmp_path / "one", n=24, classes=4, seed=5, workers=1)["written"] == 0
    gen.generate(tmp_path / "three", n=24, classes=4, seed=6, workers=1)
    assert _files(tmp_path / "three") != a


def test_sizes_follow_imagenet_spread():
    import numpy as np

    sizes = np.array([gen.image_size(np.random.default_rng([0, i])) for i in range(3000)])
    short = sizes.min(1)
    assert short.min() >= 200 and short.max() <= 1000 and 330 < short.mean() < 420
    assert 0.65 < (sizes[:, 0] > sizes[:, 1]).mean() < 0.85  # mostly landscape
