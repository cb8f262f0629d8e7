"""A diverged run's "last good checkpoint" must be good: finite is not enough (issue 21, item 5).
At a huge LR the BN running_var passes through 1e25 before it overflows; such a checkpoint used to
be named good, and resuming it at a sane LR diverged again."""

import json
import re

import pytest
import torch

from fastbt.train import checkpoint, loop
from fastbt.train.model import build_model

SMALL = ["optim.warmup_epochs=0", "train.checkpoint_every_steps=1", "train.batch_size=8",
         "model.projector=[32,32]"]


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_every_tensor_starts_within_1_so_the_bound_is_relative_to_initialization(arch):
    state = build_model(arch, [64, 64], False).state_dict()
    largest = max(float(t.abs().max()) for t in state.values() if t.is_floating_point())
    assert 0.5 < largest <= 1.0 and checkpoint.BLOWN_UP / largest >= 1e3


def test_blown_up_but_finite_values_are_named():
    state = {"a.weight": torch.ones(3), "a.running_var": torch.tensor([1.0, 9e5, 2.0])}
    assert checkpoint.diverged(state) is None  # a standard deviation of 949
    state["a.running_var"][1] = 1.6e25
    assert checkpoint.diverged(state) == "a.running_var reached 1.6e+25 (a scale beyond 1e+03: diverged)"
    state["a.running_var"][1] = 1.0
    state["a.weight"][1] = -2e3
    assert checkpoint.diverged(state) == "a.weight reached 2e+03 (a scale beyond 1e+03: diverged)"
    state["a.weight"][1] = float("nan")
    assert checkpoint.diverged(state) == "a.weight became non-finite"
    assert checkpoint.diverged({"ok": torch.full((4,), -3.0), "n": torch.tensor([7])}) is None


# 1e9: the case (inf at step 4; steps 2-3 held 1e25 and 1e35); 1e5: the loss never turns
# non-finite, the running_var grows to 4e19 by step 8 and the run used to finish "successfully";
# 1e3: BN weights of 257 after one step, running_var 1e6 by step 6
@pytest.mark.parametrize("lr", ["1e9", pytest.param("1e5", marks=pytest.mark.slow),  # ~12 s each
                                pytest.param("1e3", marks=pytest.mark.slow)])
def test_the_last_good_checkpoint_after_a_divergence_resumes_at_a_sane_lr(images, tiny_config, tmp_path, lr):
    run_dir = tmp_path / "run"
    with pytest.raises(loop.NonFiniteLoss) as stop:
        loop.pretrain(tiny_config(images, run_dir, "train.epochs=2", *SMALL,
                                  f"optim.lr_weights={lr}", f"optim.lr_biases={lr}"))
    named = re.search(r"the last good checkpoint is (\S+)\)", str(stop.value))
    kept = checkpoint.checkpoints(run_dir)
    assert (named.group(1) if named else None) == (str(kept[0]) if kept else None), str(stop.value)
    assert named or "no checkpoint was written before it" in str(stop.value)
    for path in kept:  # each one the run left to fall back on: sane LR, a few steps, finite loss
        resumed = tmp_path / f"from_{path.stem}"
        resumed.mkdir()
        for name in (path.name, "config.yaml", ".fastbt-run"):
            (resumed / name).write_bytes((run_dir / name).read_bytes())
        cfg = tiny_config(images, resumed, "train.epochs=1", "train.resume=force",
                          *SMALL)  # the default LR
        loop.pretrain(cfg)  # a NonFiniteLoss here: that checkpoint was not good
        losses = [json.loads(line)["loss"] for line in (resumed / "log.jsonl").read_text().splitlines()]
        assert losses and all(torch.isfinite(torch.tensor(losses))), (path.name, losses)


def test_a_blown_up_checkpoint_is_skipped_on_resume_with_one_warning(tmp_path):
    model = build_model("resnet18", [32, 32], False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    from fastbt import config
    cfg = config.load(None, ["model.projector=[32,32]"])
    good = checkpoint.save_run(tmp_path, 1, model, optimizer, 10, cfg)
    with torch.no_grad():
        model.backbone.bn1.running_var.fill_(1.6e25)
    checkpoint.save_run(tmp_path, 2, model, optimizer, 10, cfg)
    with pytest.warns(UserWarning, match=r"ckpt_000000002.pt is not a usable checkpoint \('model' shows "
                                         r"divergence: backbone.bn1.running_var reached 1.6e\+25"):
        state = checkpoint.load_latest(tmp_path, problem=checkpoint.run_state_problem)
    assert state["path"] == str(good)
