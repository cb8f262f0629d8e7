"""The Barlow Twins network: a torchvision ResNet backbone (fc removed) and an MLP projector.

`model.backbone.state_dict()` has exactly torchvision's keys minus `fc.*`, so an exported backbone
loads into `torchvision.models.resnet50()` (the official torch.hub release format).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torchvision
from torch import nn

ARCHS = ("resnet18", "resnet34", "resnet50")


def build_backbone(arch: str) -> tuple[nn.Module, int]:
    """A torchvision ResNet with fc = Identity, and its feature width."""
    if arch not in ARCHS:
        raise ValueError(f"unknown backbone {arch!r}; choose one of {', '.join(ARCHS)}")
    backbone = getattr(torchvision.models, arch)(weights=None, zero_init_residual=True)
    width = backbone.fc.in_features
    backbone.fc = nn.Identity()
    return backbone, width


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

    def __init__(self, arch: str = "resnet50", projector: Sequence[int] = (8192, 8192, 8192)):
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
