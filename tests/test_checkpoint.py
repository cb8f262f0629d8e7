import random

import pytest
import torch
import torchvision

from fastbt.train import checkpoint
from fastbt.train.model import build_model


def state(step):
    return {"step": step, "w": torch.full((3,), float(step)),
            "rng": {"torch": torch.get_rng_state(), "python": random.getstate()}}


def test_save_is_atomic_and_keeps_the_two_newest(tmp_path):
    for step in (10, 20, 30):
        checkpoint.save(tmp_path, step, state(step))
    assert [p.name for p in checkpoint.checkpoints(tmp_path)] == ["ckpt_000000030.pt", "ckpt_000000020.pt"]
    assert not list(tmp_path.glob(".*tmp"))  # no temporary left behind
    loaded = checkpoint.load_latest(tmp_path)
    assert loaded["step"] == 30 and torch.equal(loaded["w"], torch.full((3,), 30.0))
    random.setstate(loaded["rng"]["python"])  # plain-Python RNG state survives weights_only loading


def test_a_corrupt_newest_checkpoint_falls_back_with_a_warning(tmp_path):
    checkpoint.save(tmp_path, 1, state(1))
    newest = checkpoint.save(tmp_path, 2, state(2))
    newest.write_bytes(newest.read_bytes()[:100])  # truncated, as by a crash mid-copy
    with pytest.warns(UserWarning, match=r"ckpt_000000002.pt is unreadable .*falling back"):
        loaded = checkpoint.load_latest(tmp_path)
    assert loaded["step"] == 1


def test_no_checkpoint_means_a_fresh_start(tmp_path):
    assert checkpoint.load_latest(tmp_path) is None


def test_an_interrupted_write_leaves_the_old_checkpoint_intact(tmp_path, monkeypatch):
    checkpoint.save(tmp_path, 1, state(1))

    def crash(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError):
        checkpoint.save(tmp_path, 2, state(2))
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt_000000001.pt"]  # no partial file
    assert checkpoint.load_latest(tmp_path)["step"] == 1


def test_exported_backbone_loads_into_torchvision_with_only_fc_missing(tmp_path):
    model = build_model("resnet18", (32,))
    checkpoint.save(tmp_path, 5, {"model": model.state_dict(), "step": 5})
    n = checkpoint.export_backbone(checkpoint.checkpoints(tmp_path)[0], tmp_path / "backbone.pth")
    weights = torch.load(tmp_path / "backbone.pth", weights_only=True)
    assert n == len(weights)
    result = torchvision.models.resnet18().load_state_dict(weights, strict=False)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"] and not result.unexpected_keys
    torch.testing.assert_close(weights["conv1.weight"], model.backbone.conv1.weight)


def test_export_refuses_a_file_that_is_not_a_checkpoint(tmp_path):
    torch.save({"something": torch.zeros(1)}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="x.pt is not a fastbt checkpoint"):
        checkpoint.export_backbone(tmp_path / "x.pt", tmp_path / "out.pth")


def test_export_refuses_a_damaged_file(tmp_path):
    (tmp_path / "bad.pt").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="bad.pt is not a readable checkpoint"):
        checkpoint.export_backbone(tmp_path / "bad.pt", tmp_path / "out.pth")
