"""Shared test settings and fixtures: one torch thread, and a tiny pretraining setup (a generated
image folder and the overrides that make a run of it take seconds on a CPU)."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

# One intra-op thread: the suite shares 2 cores with its own worker processes (DataLoader, FFCV,
# gloo peers), and 2 OpenMP threads contending for them measured ~5x slower than 1.
torch.set_num_threads(1)

# 32 px crops of 40 px shapes, ResNet-18 with a small projector, batch 16: ~0.1-0.3 s a step here.
TINY = ["data.backend=torchvision", "data.workers=0", "model.arch=resnet18", "model.projector=[64,64]",
        "aug.size=32", "train.batch_size=16", "optim.warmup_epochs=0", "logging.every_steps=1",
        "logging.progress_bar=false", "runtime.device=cpu", "runtime.compile=false",
        "runtime.precision=fp32"]


@pytest.fixture(scope="session")
def tiny():
    """The overrides of a tiny CPU run (torchvision backend, no workers: no JIT warm-up)."""
    return list(TINY)


@pytest.fixture(scope="session")
def images(tmp_path_factory):
    """80 generated 40 px images in 10 class folders: 5 steps per epoch at batch 16."""
    from fastbt.demo.data import make_demo_folder

    root = tmp_path_factory.mktemp("shapes")
    make_demo_folder(root, per_class=8, size=40)
    return root


@pytest.fixture(scope="session")
def tiny_config(tiny):
    """tiny_config(images, out_dir, *overrides): the tiny run's Config."""
    from fastbt import config

    def make(images, out_dir, *extra):
        return config.load(None, [*tiny, f"data.path={images}", f"train.out_dir={out_dir}", *extra])
    return make


# ---- fastbt: generated labeled sets, shared by the training and evaluation tests ----------------

@pytest.fixture(scope="session")
def shapes(tmp_path_factory):
    """The demo's shapes at 40 px, labeled: train/ (80 images) and val/ (40 other images)."""
    from fastbt.demo.data import make_demo_folder

    root = tmp_path_factory.mktemp("labeled_shapes")
    make_demo_folder(root / "train", per_class=8, size=40, seed=0)
    make_demo_folder(root / "val", per_class=4, size=40, seed=1)
    return root


@pytest.fixture(scope="session")
def random_weights(tmp_path_factory):
    """A randomly initialized ResNet-18 backbone's weights (backbone.pth), seeded."""
    from fastbt.train.model import build_backbone

    torch.manual_seed(0)
    backbone, _ = build_backbone("resnet18")
    path = tmp_path_factory.mktemp("random") / "backbone.pth"
    torch.save(backbone.state_dict(), path)
    return path


# ---- pipelines: one generated image folder and its conversions, shared by the data tests --------

COLOUR_CLASSES, COLOUR_PER_CLASS = ("a", "b", "c"), 8


@pytest.fixture(scope="session")
def colour_datasets(tmp_path_factory):
    """({backend: path}, mean colour of each source image, labels): 24 flat-colour 64x48 images
    in 3 class folders (pipelines.sample_images.make_image_folder; a crop's mean colour names its image), read
    in place by torchvision and converted once for ffcv and dali (shards of 5: several files)."""
    import numpy as np
    from PIL import Image

    from pipelines.sample_images import make_image_folder
    from pipelines.convert import convert
    from pipelines.convert.options import Options

    root = tmp_path_factory.mktemp("colours")
    files = make_image_folder(root / "src", classes=COLOUR_CLASSES, per_class=COLOUR_PER_CLASS, size=(64, 48))
    paths = BackendPaths(torchvision=str(root / "src"))
    for fmt in ("ffcv", "dali"):
        if fmt in MISSING_BACKENDS:  # its [fmt] tests skip; the torchvision ones still run
            continue
        convert(root / "src", root / fmt, Options(fmt, shard_size=5), workers=2, progress=False)
        paths[fmt] = str(root / fmt)
    colours = np.stack([np.asarray(Image.open(f).convert("RGB"), np.float64).mean((0, 1)) for f in files])
    labels = np.array([COLOUR_CLASSES.index(f.parent.name) for f in files])
    return paths, colours, labels


@pytest.fixture(scope="session")
def natural_source(tmp_path_factory):
    """24 photo-like 160x120 JPEGs (pipelines.sample_images.natural_image) in 3 class folders: realistic sizes
    for conversions that must fill a small disk."""
    from pipelines.sample_images import make_image_folder

    root = tmp_path_factory.mktemp("natural") / "train"
    make_image_folder(root, classes=COLOUR_CLASSES, per_class=COLOUR_PER_CLASS, size=(160, 120), natural=True)
    return root


@pytest.fixture
def tmpfs(tmp_path):
    """mount(size): a tmpfs at tmp_path/"fs" (remounting changes its size); skips if not allowed."""
    import subprocess

    where = tmp_path / "fs"
    where.mkdir()
    mounted = []

    def mount(size: str):
        opts = f"remount,size={size}" if mounted else f"size={size}"
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(where)], capture_output=True)
        if done.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
        mounted.append(size)
        return where

    yield mount
    if mounted:
        subprocess.run(["umount", "-l", str(where)], check=False)


# ---- optional packages: where one is missing (e.g. scripts/test_torch211.sh's venv, like the GPU
# machine's) the tests that need it skip, naming it; where all are installed nothing changes --------

def _missing(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is None
    except ModuleNotFoundError:  # its parent package (nvidia) is missing
        return True


# backend -> the modules it needs (wds2idx: DALI's index tool, run by the DALI conversion)
_OPTIONAL = {"ffcv": ("ffcv",), "dali": ("nvidia.dali", "wds2idx")}
MISSING_BACKENDS = {backend: modules for backend, modules in _OPTIONAL.items()
                    if any(_missing(m) for m in modules)}


def pytest_collection_modifyitems(config, items):
    """A test parametrized with a missing backend ([ffcv], [dali]) skips before it starts."""
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        for backend in MISSING_BACKENDS.keys() & {v for v in params.values() if isinstance(v, str)}:
            item.add_marker(pytest.mark.skip(reason=f"needs {backend} (not installed)"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Any other test that failed only because a missing backend's module could not be imported (in
    the test, its fixtures or a subprocess it ran) is reported as skipped, naming the backend."""
    outcome = yield
    report = outcome.get_result()
    if not MISSING_BACKENDS or not report.failed or call.excinfo is None:
        return
    text = str(report.longrepr)
    for backend, modules in MISSING_BACKENDS.items():
        if any(f"No module named '{m}'" in text for m in modules):
            report.outcome = "skipped"
            report.longrepr = (str(item.path), item.location[1], f"Skipped: needs {backend} (not installed)")
            return


class BackendPaths(dict):
    """{backend: dataset path}; asking for a backend that is not installed skips the test."""

    def __missing__(self, backend):
        if backend in MISSING_BACKENDS:
            pytest.skip(f"needs {backend} (not installed)")
        raise KeyError(backend)


@pytest.fixture
def console_script():
    """The `fastbt` console script of this interpreter's venv; skips where fastbt is not installed
    (scripts/test_torch211.sh puts the checkout on PYTHONPATH instead)."""
    script = Path(sys.executable).parent / "fastbt"
    if not script.exists():
        pytest.skip("the fastbt console script is not installed in this venv")
    return script
