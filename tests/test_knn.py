import pytest
import torch
import torch.nn.functional as F

from fastbt.eval.knn import knn_predict, merge_nearest, nearest, topk_accuracy, vote


def brute_force(train, train_labels, queries, num_classes, k, t):
    """One query at a time, from the definition."""
    train, queries = F.normalize(train, dim=1), F.normalize(queries, dim=1)
    out = torch.zeros(len(queries), num_classes)
    for q in range(len(queries)):
        sims = torch.tensor([float(train[i] @ queries[q]) for i in range(len(train))])
        for i in sims.argsort(descending=True)[:k].tolist():
            out[q, train_labels[i]] += torch.exp(sims[i] / t)
    return out


def random_features(n_train=60, n_query=13, dim=8, classes=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    train, queries = torch.randn(n_train, dim, generator=g), torch.randn(n_query, dim, generator=g)
    labels = torch.randint(0, classes, (n_train,), generator=g)
    return F.normalize(train, dim=1), labels, F.normalize(queries, dim=1)


def test_knn_matches_brute_force_in_chunks():
    train, labels, queries = random_features()
    want = brute_force(train, labels, queries, 5, k=7, t=0.1)
    got = knn_predict(train, labels, queries, 5, k=7, temperature=0.1, chunk=4)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)


def test_neighbours_found_in_shards_and_merged_equal_those_of_the_whole_bank():
    train, labels, queries = random_features(n_train=23)
    whole = vote(*nearest(train, labels, queries, k=7), 5, 0.1)
    # three uneven shards, one smaller than k: its missing neighbours are -inf and get no vote
    found = [nearest(train[a:b], labels[a:b], queries, k=7) for a, b in ((0, 10), (10, 13), (13, 23))]
    merged = merge_nearest(torch.cat([s for s, _ in found], 1), torch.cat([y for _, y in found], 1), k=7)
    torch.testing.assert_close(vote(*merged, 5, 0.1), whole)
    want = brute_force(train, labels, queries, 5, k=7, t=0.1)
    torch.testing.assert_close(whole, want, rtol=1e-5, atol=1e-4)


def test_a_bank_smaller_than_k_votes_with_what_it_has():
    train, labels, queries = random_features(n_train=3)
    got = knn_predict(train, labels, queries, 5, k=20, temperature=0.1)
    torch.testing.assert_close(got, brute_force(train, labels, queries, 5, k=3, t=0.1), rtol=1e-5, atol=1e-4)


def test_an_fp16_bank_ranks_as_fp32_does():
    train, labels, queries = random_features(n_train=500, n_query=50, dim=64)
    fp32 = knn_predict(train, labels, queries, 5, k=20, temperature=0.07)
    fp16 = knn_predict(train.half(), labels, queries, 5, k=20, temperature=0.07)
    assert (fp16.argmax(1) == fp32.argmax(1)).float().mean() >= 0.95


def test_topk_accuracy():
    scores = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5]])
    labels = torch.tensor([1, 1, 0])
    acc = topk_accuracy(scores, labels, ks=(1, 2))
    assert acc["top1"] == pytest.approx(100 / 3)
    assert acc["top2"] == pytest.approx(200 / 3)
