"""Checkpoints that load but do not hold a run's state (a bare tensor, no model, no RNG states, a
config that is not a mapping, non-finite weights) are skipped like unreadable ones: one warning
naming the file, and the previous checkpoint is resumed through the real resume path."""

import warnings

import pytest
import torch
from torch import nn

from fastbt import checkpoint, config, dist, rundir
from fastbt.errors import RunDirError

ONE = dist.World(rank=0, local_rank=0, size=1, device=torch.device("cpu"))


def small_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))


def a_run(run_dir, *extra):
    """A run directory with real checkpoints (save_run) at steps 3 and 6; returns its config."""
    cfg = config.load(None, ["data.path=/unused", f"train.out_dir={run_dir}", *extra])
    with rundir.exclusive(run_dir, ONE):
        pass
    model = small_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in (3, 6):
        checkpoint.save_run(run_dir, step, model, optimizer, 5, cfg)
    config.save(cfg, run_dir / "config.yaml")
    return cfg


def bare_tensor(state):
    return torch.ones(3)


def no_model(state):
    return {k: v for k, v in state.items() if k != "model"}


def no_rng(state):  # train.resume=force reached state["rng"] and crashed
    return {k: v for k, v in state.items() if k != "rng"}


def config_a_string(state):
    return {**state, "config": "train: {epochs: 3}"}


def inf_running_var(state):
    model = dict(state["model"], **{"1.running_var": torch.full((3,), float("inf"))})
    return {**state, "model": model}


@pytest.mark.parametrize("damage", [bare_tensor, no_model, no_rng, config_a_string,
                                    inf_running_var])
def test_a_checkpoint_of_the_wrong_structure_falls_back_to_the_previous_one(tmp_path, damage):
    run_dir = tmp_path / "run"
    cfg = a_run(run_dir, "train.resume=force")
    newest = run_dir / "ckpt_000000006.pt"
    torch.save(damage(torch.load(newest, weights_only=True)), newest)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = rundir.prepare(run_dir, cfg, ONE)
    assert path == str(run_dir / "ckpt_000000003.pt")
    (warning,) = caught
    message = str(warning.message)
    assert message.startswith(f"checkpoint {newest} is not a usable checkpoint (") and "\n" not in message
    model = small_model()
    assert checkpoint.resume_run(path, model, torch.optim.SGD(model.parameters(), lr=0.1)) == 3


def test_when_every_checkpoint_has_the_wrong_structure_the_run_stops(tmp_path):
    run_dir = tmp_path / "run"
    cfg = a_run(run_dir)
    for path in checkpoint.checkpoints(run_dir):
        torch.save({"step": 1}, path)
    with pytest.raises(RunDirError, match=r"none of the 2 checkpoint\(s\) .* can be read"):
        rundir.prepare(run_dir, cfg, ONE)  # one line says it all


def test_run_state_problem_accepts_what_save_run_writes(tmp_path):
    a_run(tmp_path)
    state = checkpoint.load(tmp_path / "ckpt_000000006.pt")
    assert checkpoint.run_state_problem(state) is None
