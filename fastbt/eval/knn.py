"""Weighted kNN classification of frozen features (the common SSL protocol: cosine, k=20, T=0.07).

Each query votes over its k most similar training features, each neighbour weighted by
exp(similarity / T). Features are L2-normalized rows (cosine similarity is then a dot product);
the bank may be fp16 on a GPU to halve its memory. Queries are processed in chunks sized so that
one chunk's similarity block stays under SIMILARITY_BYTES: memory is O(chunk x N_bank), never
O(N_query x N_bank). The search (`nearest`) and the vote (`vote`) are apart so that the
neighbours found in several shards of a bank (one per process) can be merged (`merge_nearest`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

SIMILARITY_BYTES = 1 << 30  # one query chunk's similarity block: 1 GiB (~200 queries x 1.28M fp32)


@torch.no_grad()
def nearest(bank: Tensor, bank_labels: Tensor, queries: Tensor, k: int,
            chunk: int | None = None) -> tuple[Tensor, Tensor]:
    """The k most similar bank rows of every query: (similarities, labels), both N_query x k, best
    first. Rows of `bank` and `queries` must be L2-normalized. With fewer than k bank rows the
    missing neighbours have similarity -inf (they get no vote)."""
    if chunk is None:
        chunk = max(1, SIMILARITY_BYTES // max(1, bank.shape[0] * bank.element_size()))
    found = min(k, bank.shape[0])
    sims, labels = [], []
    for q in queries.split(chunk):
        sim, idx = (q.to(bank.dtype) @ bank.T).topk(found, dim=1)
        sims.append(sim.float())
        labels.append(bank_labels[idx])
    sims = torch.cat(sims) if sims else queries.new_zeros(0, found, dtype=torch.float32)
    labels = torch.cat(labels) if labels else bank_labels.new_zeros(0, found)
    if found < k:  # pad so that shards of any size give candidate lists of one width
        sims = F.pad(sims, (0, k - found), value=-float("inf"))
        labels = F.pad(labels, (0, k - found))
    return sims, labels


def merge_nearest(sims: Tensor, labels: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The best k of candidate lists laid side by side (N_query x (shards * k)), best first."""
    sims, idx = sims.topk(k, dim=1)
    return sims, labels.gather(1, idx)


def vote(sims: Tensor, labels: Tensor, num_classes: int, temperature: float) -> Tensor:
    """Class scores (N_query x num_classes): each neighbour adds exp(similarity / T) to its class."""
    votes = torch.zeros(sims.shape[0], num_classes, device=sims.device)
    return votes.scatter_add_(1, labels, (sims / temperature).exp())


def knn_predict(bank: Tensor, bank_labels: Tensor, queries: Tensor, num_classes: int, k: int,
                temperature: float, chunk: int | None = None) -> Tensor:
    """Class scores of L2-normalized queries against an L2-normalized bank."""
    return vote(*nearest(bank, bank_labels, queries, k, chunk), num_classes, temperature)


def topk_correct(scores: Tensor, labels: Tensor, ks: tuple[int, ...] = (1, 5)) -> Tensor:
    """How many rows have their label among their top-k scores, for each k (a device tensor: no
    host sync). A k above the number of classes counts as that number."""
    ranked = scores.topk(min(max(ks), scores.shape[1]), dim=1).indices
    hits = ranked == labels[:, None]
    return torch.stack([hits[:, :k].any(dim=1).sum() for k in ks])


def accuracy(correct: Tensor, total: int, ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """{"top1": %, "top5": %} from `topk_correct` counts over `total` rows."""
    return {f"top{k}": 100.0 * c / max(1, total) for k, c in zip(ks, correct.tolist())}


def topk_accuracy(scores: Tensor, labels: Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """{"top1": %, "top5": %} of one block of scores."""
    return accuracy(topk_correct(scores, labels, ks), len(labels), ks)
