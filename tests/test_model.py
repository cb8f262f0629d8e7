import pytest
import torch
import torchvision

from fastbt.train.model import build_model, build_projector


@pytest.mark.parametrize("arch, width", [("resnet18", 512), ("resnet34", 512), ("resnet50", 2048)])
def test_backbone_keys_are_torchvision_minus_fc(arch, width):
    model = build_model(arch, (64, 32))
    reference = getattr(torchvision.models, arch)().state_dict()
    expected = {k for k in reference if not k.startswith("fc.")}
    assert set(model.backbone.state_dict()) == expected
    # and an export loads into the torchvision model with exactly fc.* missing
    result = getattr(torchvision.models, arch)().load_state_dict(model.backbone.state_dict(), strict=False)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"] and not result.unexpected_keys
    assert model.projector[0].in_features == width


def test_output_shapes_and_channels_last():
    model = build_model("resnet18", (64, 64, 32)).train()
    x = torch.randn(4, 3, 64, 64).to(memory_format=torch.channels_last)
    z1, z2 = model(x, x.flip(0))
    assert z1.shape == z2.shape == (4, 32)
    assert model.backbone(x).shape == (4, 512)
    conv = model.backbone.conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last)


def test_zero_init_residual():
    model = build_model("resnet50", (16,))
    assert all(torch.count_nonzero(b.bn3.weight) == 0
               for layer in (model.backbone.layer1, model.backbone.layer4) for b in layer)


def test_projector_layout():
    proj = build_projector([2048, 8192, 8192, 8192])
    kinds = [type(m).__name__ for m in proj]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU"] * 2 + ["Linear"]
    assert all(m.bias is None for m in proj if isinstance(m, torch.nn.Linear))
    assert proj[-1].out_features == 8192


def test_unknown_arch_is_named():
    with pytest.raises(ValueError, match="unknown backbone 'vit_b'"):
        build_model("vit_b", (8,))
