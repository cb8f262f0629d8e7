"""The loop's components say when they are due (fastbt.train.monitors), without a training run."""

from types import SimpleNamespace

import pytest
import torch

from fastbt import config, dist
from fastbt.train.monitors import Checkpoints, KnnMonitor, NonFiniteLoss, NonFiniteWatch

CPU = torch.device("cpu")


def checkpoints(tmp_path, *overrides, total_steps=10):
    cfg = config.load(None, list(overrides))
    world = dist.World(rank=1, local_rank=1, size=2, device=CPU)  # not rank 0: writes nothing
    run = SimpleNamespace(derived=SimpleNamespace(total_steps=total_steps, steps_per_epoch=5),
                          model=torch.nn.Linear(2, 2))  # finite weights: checked before a save
    return Checkpoints(cfg, world, run, tmp_path, NonFiniteWatch(CPU))


def test_checkpoints_are_due_by_step_count_and_by_time(tmp_path):
    saver = checkpoints(tmp_path, "train.checkpoint_every_steps=3", "train.checkpoint_every_minutes=1")
    now = saver.saved_at
    assert [step for step in range(1, 11) if saver.due(step, now)] == [3, 6, 9]
    assert saver.due(1, now + 61) and not saver.due(1, now + 59)
    off = checkpoints(tmp_path, "train.checkpoint_every_steps=0", "train.checkpoint_every_minutes=30")
    assert not any(off.due(step, off.saved_at) for step in range(1, 11))


def test_maybe_save_saves_on_a_stop_and_when_due_but_leaves_the_last_step_to_the_end(tmp_path):
    saver = checkpoints(tmp_path, "train.checkpoint_every_steps=5", total_steps=10)
    now = saver.saved_at
    assert [s for s in range(1, 11) if saver.maybe_save(s, now, stop=False)] == [5]  # 10: the end's
    assert saver.maybe_save(7, now, stop=True)
    assert saver.saved_at > now  # saving restarts the clock of time-based checkpoints


def test_no_checkpoint_after_a_non_finite_loss(tmp_path):
    saver = checkpoints(tmp_path, "train.checkpoint_every_steps=1")
    saver.watch.update(torch.tensor(float("nan")), step=4)
    saver.watch.update(torch.tensor(float("inf")), step=5)  # the first one is what is named
    with pytest.raises(NonFiniteLoss, match="non-finite at step 4; stopping "
                                            r"\(no checkpoint was written before it\)"):
        saver.maybe_save(5, saver.saved_at, stop=False)


def test_the_knn_monitor_is_due_at_the_end_of_every_nth_epoch_and_off_by_default():
    cfg = config.load(None, [])
    assert cfg.eval.knn.every_epochs == 0
    off = KnnMonitor(cfg, dist.World(rank=0, local_rank=0, size=1, device=CPU), steps_per_epoch=5)
    assert not any(off.due(step) for step in range(1, 51))
    on = KnnMonitor.__new__(KnnMonitor)  # the kNN itself needs labeled sets: only its schedule here
    on.steps_per_epoch, on.knn = 5, SimpleNamespace(due=lambda epoch: epoch > 0 and epoch % 2 == 0)
    assert [step for step in range(1, 31) if on.due(step)] == [10, 20, 30]
