"""The Barlow Twins network: a classification backbone (logits layer removed) and an MLP projector.

`ARCHS` is the one table of backbones (the config and the CLI check names against it): name -> a
function building the classifier with random weights. Every torchvision classification model is in
it. Its final Linear layer (the logits: ResNet's `fc`, the `classifier[-1]` of MobileNet /
EfficientNet / ConvNeXt, ViT's `heads.head`, ...) becomes Identity, and that layer's input width is
the feature width (a Dropout before it stays, as timm's `reset_classifier(0)` keeps it). For
ResNets `model.backbone.state_dict()` then has exactly torchvision's keys minus `fc.*`, so an
exported backbone loads into `torchvision.models.resnet50()` (the official torch.hub release
format). Another backbone: a function returning a classifier whose last Linear is its logits
layer, and one `ARCHS` entry.
"""

from __future__ import annotations

import functools
from typing import Sequence

import torch
import torchvision
from torch import nn

from fastbt.registry import Registry

# construction arguments beyond weights=None, by the torchvision module that defines the model
_TORCHVISION_KWARGS = {
    "torchvision.models.resnet": {"zero_init_residual": True},  # as the official code (BN of the
                                                                # last block of each branch = 0)
    "torchvision.models.googlenet": {"aux_logits": False, "init_weights": True},  # one output
    "torchvision.models.inception": {"aux_logits": False, "init_weights": True},
}


def torchvision_classifier(name: str) -> nn.Module:
    builder = torchvision.models.get_model_builder(name)
    return builder(weights=None, **_TORCHVISION_KWARGS.get(builder.__module__, {}))


COMMON_ARCHS = ("resnet18", "resnet34", "resnet50")  # listed first; what a weights file is tried against
# every torchvision classifier but squeezenet, whose classifier is a convolution: no feature vector
ARCHS: Registry = Registry("backbone", (
    (name, functools.partial(torchvision_classifier, name))
    for name in dict.fromkeys(COMMON_ARCHS + tuple(torchvision.models.list_models(module=torchvision.models)))
    if not name.startswith("squeezenet")))


def build_backbone(arch: str) -> tuple[nn.Module, int]:
    """The classifier `arch` (random init) with its logits layer = Identity, and its feature width."""
    if arch not in ARCHS:
        raise ValueError(f"unknown backbone {arch!r}; choose a torchvision classification model, "
                         f"e.g. {', '.join(COMMON_ARCHS)} (fastbt.train.model.ARCHS lists all)")
    backbone = ARCHS[arch]()
    name, logits = [(n, m) for n, m in backbone.named_modules() if isinstance(m, nn.Linear)][-1]
    parent, _, attr = name.rpartition(".")
    setattr(backbone.get_submodule(parent), attr, nn.Identity())
    return backbone, logits.in_features


def feature_width(arch: str) -> int:
    """The width of `arch`'s features, built on the meta device (no memory, no initialization)
    where its constructor allows: RegNet's computes its stage widths with tensors, so it is built
    for real."""
    try:
        with torch.device("meta"):
            return build_backbone(arch)[1]
    except NotImplementedError:  # "Cannot copy out of meta tensor"
        return build_backbone(arch)[1]


def build_projector(sizes: Sequence[int]) -> nn.Sequential:
    """Linear(no bias)-BN-ReLU for each hidden size, then a final Linear(no bias).

    `sizes` starts with the backbone width: (2048, 8192, 8192, 8192) is the paper's projector.
    """
    layers: list[nn.Module] = []
    for d_in, d_out in zip(sizes[:-2], sizes[1:-1]):
        layers += [nn.Linear(d_in, d_out, bias=False), nn.BatchNorm1d(d_out), nn.ReLU(inplace=True)]
    layers.append(nn.Linear(sizes[-2], sizes[-1], bias=False))
    return nn.Sequential(*layers)


class BarlowTwinsNet(nn.Module):
    """Two views -> two projector embeddings. The loss (and its batch normalization) lives apart.

    Both views go through one `forward` call, as in the official code: DDP expects one forward per
    backward, and each view keeps its own BatchNorm statistics (the views are not concatenated).
    """

    def __init__(self, arch: str, projector: Sequence[int]):
        super().__init__()
        self.backbone, width = build_backbone(arch)
        self.projector = build_projector([width, *projector])
        self.embedding_dim = projector[-1]

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.projector(self.backbone(images))

    def forward(self, view1: torch.Tensor, view2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.embed(view1), self.embed(view2)


def build_model(arch: str, projector: Sequence[int], channels_last: bool = True) -> BarlowTwinsNet:
    model = BarlowTwinsNet(arch, projector)
    if channels_last:  # convolutions in NHWC run faster on tensor cores; harmless on CPU
        model = model.to(memory_format=torch.channels_last)
    return model
