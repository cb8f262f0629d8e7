"""Frozen-feature evaluation of a backbone: feature extraction and the kNN protocol."""

from __future__ import annotations

from typing import Iterable

import torch
from torch import Tensor, nn

from fastbt.knn import knn_predict, topk_accuracy


@torch.no_grad()
def extract_features(backbone: nn.Module, batches: Iterable[tuple[Tensor, Tensor]],
                     device: torch.device) -> tuple[Tensor, Tensor]:
    """Backbone features (eval mode: BN running statistics) and labels of every batch, on device."""
    backbone.eval()
    features, labels = [], []
    for images, batch_labels in batches:
        features.append(backbone(images.to(device, non_blocking=True)).float())
        labels.append(batch_labels.to(device))
    return torch.cat(features), torch.cat(labels)


def knn_accuracy(backbone: nn.Module, train: Iterable, val: Iterable, num_classes: int,
                 device: torch.device, k: int = 20, temperature: float = 0.07) -> dict[str, float]:
    """Weighted kNN top-1/top-5 (%) of val against train, on the frozen backbone's features."""
    train_features, train_labels = extract_features(backbone, train, device)
    val_features, val_labels = extract_features(backbone, val, device)
    scores = knn_predict(train_features, train_labels, val_features, num_classes, k, temperature)
    return topk_accuracy(scores, val_labels)
