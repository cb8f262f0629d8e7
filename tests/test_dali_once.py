"""The DALI crop source builds its pipeline once per loader, and still replays any epoch exactly:
after full epochs, after an epoch left early (break), and after one abandoned mid-way."""

import gc

import pytest
import torch

import pipelines
from pipelines.sample_images import make_image_folder
from pipelines.augment import AugSpec
from pipelines.convert import convert
from pipelines.options import Options

BATCH = 4


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("dali_once")
    make_image_folder(root / "src", classes=("a", "b", "c"), per_class=8, size=(40, 30))
    convert(root / "src", root / "dali", Options("dali", max_resolution=40, shard_size=5), workers=2,
            progress=False, log=lambda _: None)
    return str(root / "dali")


def crop_source(path):
    return pipelines.build_loader("dali", path, aug=AugSpec(size=16), batch_size=BATCH, device="cpu",
                                  workers=1).crops


def epoch(crops, e):
    crops.set_epoch(e)
    return [(c1.clone(), c2.clone(), y.clone()) for c1, c2, y in crops]


def assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert all(torch.equal(u, v) for u, v in zip(x, y))


def test_one_pipeline_serves_every_epoch_and_replays_each(dataset):
    crops, fresh = crop_source(dataset), crop_source(dataset)
    first = epoch(crops, 0)
    built = crops.batches
    assert len(first) == len(crops) == 24 // BATCH
    second = epoch(crops, 1)
    assert crops.batches is built  # not rebuilt
    assert_same(epoch(crops, 0), first)  # epoch 0 again, after epoch 1
    assert_same(epoch(fresh, 1), second)  # a fresh loader's epoch 1 (a resumed run)
    assert [y.tolist() for *_, y in first] != [y.tolist() for *_, y in second]


def test_an_epoch_left_early_or_abandoned_does_not_leak_into_the_next(dataset):
    crops, fresh = crop_source(dataset), crop_source(dataset)
    crops.set_epoch(2)
    for _ in crops:  # left after one batch: DALI has already scheduled more
        break
    assert_same(epoch(crops, 2), epoch(fresh, 2))
    crops.set_epoch(3)
    abandoned = iter(crops)
    next(abandoned)
    crops.set_epoch(4)
    batches = iter(crops)
    got = [next(batches)]
    del abandoned  # closed late, in the middle of epoch 4: must not stop it
    gc.collect()
    got += list(batches)
    assert_same([tuple(t.clone() for t in b) for b in got], epoch(fresh, 4))
    assert_same(epoch(crops, 5), epoch(fresh, 5))
    assert crops.batches is not None and fresh.batches is not crops.batches
