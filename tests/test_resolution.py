"""Progressive resolution (pipelines/resolution.py): the schedule against FFCV's own function, every
backend cropping at the epoch's size, and one compiled graph per distinct size."""

import functools
from pathlib import Path

import numpy as np
import pytest
import torch

import pipelines
from fastbt import config
from fastbt.train.model import build_model
from fastbt.train.step import TrainStep
from pipelines.augment import AugSpec
from pipelines.resolution import Resolution, size_at, sizes

REPO = Path(__file__).resolve().parents[1]


def ffcv_get_resolution(epoch, min_res, max_res, end_ramp, start_ramp):
    """libffcv/ffcv-imagenet train_imagenet.py `get_resolution`, the reference."""
    if epoch <= start_ramp:
        return min_res
    if epoch >= end_ramp:
        return max_res
    interp = np.interp([epoch], [start_ramp, end_ramp], [min_res, max_res])
    return int(np.round(interp[0] / 32)) * 32


@pytest.mark.parametrize("epochs, low, high, start, end", [
    (88, 160, 192, 65, 76),    # ffcv-imagenet rn50_88_epochs.yaml
    (16, 160, 192, 11, 13),    # rn50_16_epochs.yaml
    (100, 160, 192, 70, 85),   # FFCV-SSL rn50_baseline.yaml
    (100, 160, 224, 70, 85),   # configs/fast.yaml
    (40, 96, 256, 5, 30),      # a long ramp: many multiples of 32 between
])
def test_the_schedule_is_ffcvs_get_resolution(epochs, low, high, start, end):
    schedule = Resolution(start=low, ramp_start_epoch=start, ramp_end_epoch=end)
    expected = [ffcv_get_resolution(e, low, high, end, start) for e in range(epochs)]
    assert sizes(schedule, high, epochs) == expected


def test_off_by_default_every_epoch_at_aug_size():
    assert AugSpec().size_at(0) == AugSpec().size_at(999) == 224
    assert sizes(Resolution(), 32, 5) == [32] * 5


def test_the_fast_preset_ramps_160_to_224_in_three_sizes_and_the_paper_preset_is_fixed():
    fast = config.load(REPO / "configs" / "fast.yaml")
    per_epoch = sizes(fast.aug.resolution, fast.aug.size, fast.train.epochs)
    assert per_epoch[0] == 160 and per_epoch[-1] == fast.aug.size == fast.eval.size == 224
    assert sorted(set(per_epoch)) == [160, 192, 224]  # 3 compiled graphs
    paper = config.load(REPO / "configs" / "paper.yaml")
    assert not paper.aug.resolution.on


def test_a_schedule_that_would_exceed_the_recompile_limit_is_refused():
    from fastbt.errors import ConfigError
    from fastbt.train.run import _check_compiled_sizes

    cfg = config.load(None, ["aug.resolution.start=32", "aug.resolution.multiple=8",
                             "aug.resolution.ramp_end_epoch=100", "train.epochs=101"])
    with pytest.raises(ConfigError, match="recompile limit"):
        _check_compiled_sizes(cfg)


# ---- every backend crops at the epoch's size -----------------------------------------------------

RAMP = Resolution(start=16, ramp_start_epoch=0, ramp_end_epoch=2, multiple=8)  # 16, 24, 32, 32


@pytest.fixture(scope="module")
def data(colour_datasets):
    return colour_datasets[0]  # {backend: path}


@pytest.mark.parametrize("backend", ["torchvision", "ffcv", "dali"])
def test_every_backend_crops_at_the_epochs_size_and_replays_an_epoch(backend, data):
    if backend == "dali":
        pytest.importorskip("nvidia.dali")
    aug = AugSpec(size=32, resolution=RAMP)
    crops = pipelines.backend(backend).crops(
        data[backend], aug=aug, batch_size=4, device="cpu", rank=0, world_size=1, seed=0, workers=2)

    def epoch(e):
        crops.set_epoch(e)
        return [(c1.clone(), c2.clone()) for c1, c2, _ in crops]

    seen = {e: epoch(e) for e in (0, 1, 2)}
    for e, batches in seen.items():
        assert {tuple(c.shape[2:]) for pair in batches for c in pair} == {(aug.size_at(e),) * 2}
    again = epoch(1)  # back to a smaller size: the same crops as the first time
    for (a1, a2), (b1, b2) in zip(seen[1], again):
        assert torch.equal(a1, b1) and torch.equal(a2, b2)


# ---- torch.compile: one graph per distinct size ---------------------------------------------------

def test_the_compiled_step_keeps_one_graph_per_size(monkeypatch):
    """TrainStep's compiled forward through a counting backend (dynamo's guards and recompiles do
    not depend on the backend): sizes 16, 24, 32, then 16 and 32 again -> 3 graphs, each static."""
    graphs = []

    def counting(gm, example_inputs):
        graphs.append([tuple(x.shape) for x in example_inputs  # the views: batch 2, 3 channels
                       if isinstance(x, torch.Tensor) and tuple(x.shape[:2]) == (2, 3) and x.dim() == 4])
        return gm.forward

    torch._dynamo.reset()
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend=counting))
    cfg = config.load(None, ["runtime.compile=true", "runtime.device=cpu", "runtime.precision=fp32"])
    model = build_model("resnet18", (32, 32), False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    step = TrainStep(model, optimizer, lambda z1, z2, scale, group: (z1 - z2).pow(2).mean(), cfg.runtime,
                     torch.device("cpu"))
    for size in (16, 24, 32, 16, 32, 24):
        step(torch.randn(2, 3, size, size), torch.randn(2, 3, size, size))
    torch._dynamo.reset()
    assert len(graphs) == 3
    assert [g[0] for g in graphs] == [(2, 3, s, s) for s in (16, 24, 32)]  # static: no symbolic sizes


# ---- profiler and projection --------------------------------------------------------------------

def test_the_projection_integrates_the_step_time_over_the_schedule():
    """A step whose time per pair is a + b x pixels (a fixed cost plus a per-pixel one) is projected
    exactly from its two ends; end to end follows the step where the step is the slower."""
    from fastbt.profiling import verdict

    def seconds_per_pair(size):
        return 1e-3 + 1e-5 * size ** 2

    epoch_sizes = [16, 16, 24, 32]
    steps, pairs = 10, 8
    at_end, at_start = 1 / seconds_per_pair(32), 1 / seconds_per_pair(16)
    p = verdict.project_schedule(epoch_sizes, 16, 32, steps, pairs, end_to_end=at_end, step=at_end, loader=1e9,
                                 step_at_start=at_start)
    expected = steps * pairs * sum(seconds_per_pair(s) for s in epoch_sizes)
    assert p["seconds_at_step_rate"] == pytest.approx(expected)
    assert p["seconds"] == pytest.approx(expected)  # the loader never bounds here
    assert p["fixed_size_seconds"] == pytest.approx(steps * pairs * 4 * seconds_per_pair(32))
    assert p["saved"] == pytest.approx(1 - expected / p["fixed_size_seconds"])
    assert p["epochs_per_size"] == {"16": 2, "24": 1, "32": 1} and p["total_steps"] == 40
    slow_loader = verdict.project_schedule(epoch_sizes, 16, 32, steps, pairs, end_to_end=1.0, step=10.0,
                                           loader=1.0, step_at_start=40.0)
    assert slow_loader["saved"] == 0  # input-bound at every size: the schedule saves nothing


def test_profile_measures_the_step_at_both_ends_of_the_schedule(images, tiny, tmp_path):
    import json

    from fastbt.profiling import windows

    cfg = config.load(None, [*tiny, f"data.path={images}", "profile.warmup_steps=1", "profile.steps=1",
                             "profile.repeats=2", "train.batch_size=4", "train.epochs=3",
                             "aug.resolution.start=16", "aug.resolution.ramp_end_epoch=2",
                             "aug.resolution.multiple=16"])
    windows.profile(cfg, tmp_path / "p")
    r = json.loads((tmp_path / "p" / "report.json").read_text())
    assert set(r["windows"]) == {"loader", "step", "end_to_end", "step_start"}
    proj = r["projection"]
    assert (proj["start_size"], proj["end_size"], proj["epochs_per_size"]) == (16, 32, {"16": 1, "32": 2})
    assert 0 < proj["seconds"] and proj["fixed_size_seconds"] > 0
    assert "Progressive resolution (1 at 16 px, 2 at 32 px)" in (tmp_path / "p" / "report.md").read_text()
