import pytest
import torch
import torch.nn.functional as F

from fastbt.knn import knn_predict, topk_accuracy


def brute_force(train, train_labels, queries, num_classes, k, t):
    """One query at a time, from the definition."""
    train, queries = F.normalize(train, dim=1), F.normalize(queries, dim=1)
    out = torch.zeros(len(queries), num_classes)
    for q in range(len(queries)):
        sims = torch.tensor([float(train[i] @ queries[q]) for i in range(len(train))])
        for i in sims.argsort(descending=True)[:k].tolist():
            out[q, train_labels[i]] += torch.exp(sims[i] / t)
    return out


def test_knn_matches_brute_force_in_chunks():
    g = torch.Generator().manual_seed(0)
    train, queries = torch.randn(60, 8, generator=g), torch.randn(13, 8, generator=g)
    labels = torch.randint(0, 5, (60,), generator=g)
    want = brute_force(train, labels, queries, 5, k=7, t=0.1)
    got = knn_predict(train, labels, queries, 5, k=7, temperature=0.1, chunk=4)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)


def test_topk_accuracy():
    scores = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5]])
    labels = torch.tensor([1, 1, 0])
    acc = topk_accuracy(scores, labels, ks=(1, 2))
    assert acc["top1"] == pytest.approx(100 / 3)
    assert acc["top2"] == pytest.approx(200 / 3)
