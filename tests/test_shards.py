"""Shard assignment: a seeded permutation of the source list. The same seed gives the same shards
(byte for byte, so resume and FFCV/DALI byte identity hold), another seed another assignment."""

from types import SimpleNamespace

import numpy as np
import pytest

from pipelines.sample_images import make_image_folder
from pipelines.convert import driver as convert_module
from pipelines.convert import shards
from pipelines.dali_backend import index as dali_index
from pipelines.ffcv_backend import beton
from pipelines.convert import convert
from pipelines.errors import DataError
from pipelines.convert.options import Options

CLASSES, PER_CLASS, SHARD = 4, 6, 5


def class_sorted_source(n_classes=CLASSES, per_class=PER_CLASS):
    return [SimpleNamespace(path=f"c{c}/{i}.jpg", label=c) for c in range(n_classes) for i in range(per_class)]


def positions(jobs):
    return [[pos for pos, _, _ in job.items] for job in jobs]


def test_shard_jobs_hold_every_sample_once_in_shards_of_the_size():
    samples = class_sorted_source()
    jobs = shards.shard_jobs(samples, SHARD, seed=0)
    assert [job.index for job in jobs] == list(range(5)) and [len(job.items) for job in jobs] == [5, 5, 5, 5, 4]
    assert sorted(sum(positions(jobs), [])) == list(range(len(samples)))
    for job in jobs:  # the path and label travel with their position
        assert all((path, label) == (samples[pos].path, samples[pos].label) for pos, path, label in job.items)


def test_the_plan_builds_each_job_when_asked_and_holds_no_object_per_sample():
    import tracemalloc

    samples = class_sorted_source(100, 500)  # 50,000
    tracemalloc.start()
    try:
        jobs = shards.shard_jobs(samples, 1000, seed=0)
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert held / len(samples) < 20, held / len(samples)  # the order: 8 bytes; a tuple each was ~100
    assert [jobs.size(i) for i in range(len(jobs))] == [len(job.items) for job in jobs] == [1000] * 50
    assert jobs[-1] == jobs[49] and jobs[49].index == 49
    with pytest.raises(IndexError):
        jobs[50]


def test_the_same_seed_gives_the_same_assignment_and_another_seed_another():
    samples = class_sorted_source()
    assert positions(shards.shard_jobs(samples, SHARD, 7)) == positions(shards.shard_jobs(samples, SHARD, 7))
    assert positions(shards.shard_jobs(samples, SHARD, 7)) != positions(shards.shard_jobs(samples, SHARD, 8))


def test_shards_of_a_class_sorted_source_are_not_class_sorted():
    samples = class_sorted_source(100, 10)  # 1,000 samples, shards of 10: one class each if sorted
    jobs = shards.shard_jobs(samples, 10, seed=0)
    classes = [len({label for _, _, label in job.items}) for job in jobs]
    # 10 draws from 100 equal classes: 9.6 distinct on average
    assert np.mean(classes) > 9 and min(classes) >= 6


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards") / "src"
    make_image_folder(root, classes=[f"c{i}" for i in range(CLASSES)], per_class=PER_CLASS, size=(24, 16))
    return root


def _convert(source, out, seed, fmt="dali"):
    return convert(source, out, Options(fmt, max_resolution=24, shard_size=SHARD, seed=seed), workers=2,
                   progress=False, log=lambda _: None)


def _keys(m):
    return [[s.key for s in shards.shard_samples(tar)] for tar in m.data_paths()]


def test_conversions_with_one_seed_are_identical_and_with_another_differ(source, tmp_path):
    a, b, other = (_convert(source, tmp_path / name, seed) for name, seed in (("a", 3), ("b", 3), ("c", 4)))
    assert a.options["seed"] == 3 and other.options["seed"] == 4  # recorded in the manifest
    assert [f.path for f in a.files] == [f.path for f in b.files]
    for f in a.files:
        assert (a.folder / f.path).read_bytes() == (b.folder / f.path).read_bytes()
        assert (a.folder / f.index).read_bytes() == (b.folder / f.index).read_bytes()
    assert _keys(a) != _keys(other)
    assert sorted(sum(_keys(a), [])) == sorted(sum(_keys(other), []))  # the same samples


def test_a_resumed_conversion_keeps_its_seed(source, tmp_path, monkeypatch):
    def stop(*_):
        raise DataError("stopped after the shards")

    out = tmp_path / "out"
    with monkeypatch.context() as patch:  # leave an unfinished conversion with seed 1 in OUT.partial
        patch.setattr(convert_module, "_check_unreadable", stop)
        with pytest.raises(DataError, match="stopped"):
            _convert(source, out, seed=1)
    with pytest.raises(DataError, match="other settings .*seed 1 -> 2"):
        _convert(source, out, seed=2)
    assert _convert(source, out, seed=1).options["seed"] == 1  # the same seed resumes


def test_an_ffcv_conversion_writes_no_dali_index(source, tmp_path, monkeypatch):
    def no_index(*_):
        raise AssertionError("a DALI index written for an FFCV dataset")

    spooled = []
    real_write_beton = beton.write_beton

    def write_beton(path, tars, workers, progress):
        spooled.extend(sorted(p.name for p in tars[0].parent.iterdir()))
        return real_write_beton(path, tars, workers, progress)

    monkeypatch.setattr(dali_index, "write_index", no_index)
    monkeypatch.setattr(beton, "write_beton", write_beton)
    m = _convert(source, tmp_path / "ffcv", seed=0, fmt="ffcv")
    assert m.num_images == CLASSES * PER_CLASS
    assert spooled == [f"shard-{i:06d}.tar" for i in range(5)]
