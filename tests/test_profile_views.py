"""The profiler's synthetic views are what the loader hands the step (issue 20): the same dtype
and shape, so the compiled two-view forward sees one input signature and compiles once (fp32
synthetic views next to the loader's bf16 ones compiled it twice)."""

import torch

from fastbt import dist
from fastbt.profiling import windows
from fastbt.train.meter import NO_CLOCK
from fastbt.train.step import TrainStep

PHASES = ("forward", "loss", "backward", "optimizer")


def test_every_window_feeds_the_step_views_of_one_dtype_and_shape(images, tmp_path, tiny_config, monkeypatch):
    seen = set()

    def record(self, view1, view2, clock=NO_CLOCK):  # the step, minus the arithmetic: what it was given
        seen.update({(v.dtype, tuple(v.shape)) for v in (view1, view2)})
        for phase in PHASES:
            clock.lap(phase)
        return torch.zeros(())

    monkeypatch.setattr(TrainStep, "__call__", record)
    cfg = tiny_config(images, tmp_path, "runtime.precision=bf16", "profile.steps=1", "profile.repeats=1",
                      "profile.warmup_steps=1")
    world = dist.World(rank=0, local_rank=0, size=1, device=torch.device("cpu"))
    windows.measure(cfg, world, tmp_path)
    assert seen == {(torch.bfloat16, (16, 3, 32, 32))}
