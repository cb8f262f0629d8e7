"""A pretraining run's state in one module: what `save_run` writes, `resume_run` restores, and
what the backbone export and `read_backbone_state` read back."""

import random

import torch
import torchvision

from fastbt import config
from fastbt.train import checkpoint
from fastbt.train.model import build_model
from fastbt.train.optim import build_optimizer


def model_and_optimizer(seed):
    torch.manual_seed(seed)
    model = build_model("resnet18", (32,))
    return model, build_optimizer(model, weight_decay=1e-6, momentum=0.9, eta=0.001)


def test_a_saved_run_resumes_to_the_same_state(tmp_path):
    cfg = config.load(None, ["model.arch=resnet18"])
    model, optimizer = model_and_optimizer(0)
    model(torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32))[0].sum().backward()
    optimizer.step()  # momentum buffers: an optimizer state worth restoring
    torch.manual_seed(5)
    random.seed(5)
    path = checkpoint.save_run(tmp_path, 12, model, optimizer, steps_per_epoch=5, cfg=cfg)
    expected = (torch.rand(3), random.random())  # what the RNGs give next after the save

    fresh, fresh_optimizer = model_and_optimizer(1)
    assert checkpoint.resume_run(path, fresh, fresh_optimizer) == 12
    assert (torch.rand(3).tolist(), random.random()) == (expected[0].tolist(), expected[1])
    for (key, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), key
    assert str(fresh_optimizer.state_dict()) == str(optimizer.state_dict())
    saved = checkpoint.load(path)
    assert (saved["step"], saved["epoch"]) == (12, 2) and config.from_dict(saved["config"]) == cfg
    assert checkpoint.resume_run(None, fresh, fresh_optimizer) == 0


def test_the_exported_backbone_and_the_checkpoint_read_back_alike(tmp_path):
    cfg = config.load(None, [])
    model, optimizer = model_and_optimizer(0)
    path = checkpoint.save_run(tmp_path, 1, model, optimizer, steps_per_epoch=1, cfg=cfg)
    checkpoint.save_backbone(model, tmp_path / "backbone.pth")
    exported = checkpoint.read_backbone_state(tmp_path / "backbone.pth")
    from_checkpoint = checkpoint.read_backbone_state(path)
    assert exported.keys() == from_checkpoint.keys()
    assert all(torch.equal(exported[k], from_checkpoint[k]) for k in exported)
    result = torchvision.models.resnet18().load_state_dict(exported, strict=False)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"] and not result.unexpected_keys
