"""The DALI backend (pipelines/dali_backend/): its crop source builds its pipeline once per loader,
and still replays any epoch exactly: after full epochs, after an epoch left early (break), and after
one abandoned mid-way; inspect's deep check reports a shard whose members are links."""

import gc
import io
import json
import shutil
import tarfile

import pytest
import torch

import pipelines
from checks import one_error_line
from fastbt.cli import main
from pipelines.augment import AugSpec
from pipelines.convert import manifest

BATCH = 4


@pytest.fixture(scope="module")
def dataset(colour_datasets):
    return colour_datasets[0]["dali"]  # 24 images in shards of 5


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


# ---- inspect's deep check (pipelines.dali_backend.verify) -------------------------------------

@pytest.mark.parametrize("link", [tarfile.SYMTYPE, tarfile.LNKTYPE])
def test_inspect_reports_a_shard_whose_members_are_links(colour_datasets, tmp_path, capsys, link):
    folder = tmp_path / "ds"
    shutil.copytree(colour_datasets[0]["dali"], folder)
    tar_path = folder / "shard-000000.tar"
    with tarfile.open(tar_path) as old:
        members = [(m, old.extractfile(m).read()) for m in old]
    target = [m.name for m, _ in members if m.name.endswith(".cls")][1]  # the shard's second label
    with tarfile.open(tar_path, "w", format=tarfile.USTAR_FORMAT) as new:
        for m, data in members:
            if m.name == target:
                m = tarfile.TarInfo(m.name)
                m.type, m.linkname = link, "/etc/passwd" if link == tarfile.SYMTYPE else members[1][0].name
                new.addfile(m)
            else:
                new.addfile(m, io.BytesIO(data))
    stored = json.loads((folder / manifest.MANIFEST_NAME).read_text())
    stored["files"][0]["bytes"] = tar_path.stat().st_size  # the manifest agrees: only the tar is odd
    (folder / manifest.MANIFEST_NAME).write_text(json.dumps(stored))
    assert main(["inspect", str(folder)]) == 2
    assert f"member '{target}' is not a regular file" in one_error_line(capsys.readouterr().err)
