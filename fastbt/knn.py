"""Weighted kNN classification of frozen features (the common SSL protocol: cosine, k=20, T=0.07).

Each query votes over its k most similar training features, each neighbour weighted by
exp(similarity / T). Queries are processed in chunks against the whole training bank, so memory
is O(chunk x N_train), never O(N_query x N_train).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


@torch.no_grad()
def knn_predict(train_features: Tensor, train_labels: Tensor, query_features: Tensor,
                num_classes: int, k: int = 20, temperature: float = 0.07, chunk: int = 1024) -> Tensor:
    """Class scores (N_query x num_classes) from L2-normalized features, ranked by weighted votes."""
    bank = F.normalize(train_features.float(), dim=1)
    k = min(k, bank.shape[0])
    scores = []
    for queries in F.normalize(query_features.float(), dim=1).split(chunk):
        sim, idx = (queries @ bank.T).topk(k, dim=1)
        votes = torch.zeros(queries.shape[0], num_classes, device=queries.device)
        votes.scatter_add_(1, train_labels[idx], (sim / temperature).exp())
        scores.append(votes)
    return torch.cat(scores)


def topk_accuracy(scores: Tensor, labels: Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """{"top1": %, "top5": %} (a k above the number of classes counts as that number)."""
    ranked = scores.topk(min(max(ks), scores.shape[1]), dim=1).indices
    hits = ranked == labels[:, None]
    return {f"top{k}": 100.0 * hits[:, :k].any(dim=1).float().mean().item() for k in ks}
