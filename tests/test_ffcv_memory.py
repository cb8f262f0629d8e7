"""The FFCV loader's memory pre-flight (issue 23, pipelines.ffcv_backend.memory): a process cache
per rank that does not fit the node is refused in one line naming what to set, before FFCV
allocates; the shared OS cache is kept, with a warning when the .beton outruns the memory."""

import os
import warnings

import pytest

import pipelines
from pipelines.augment import AugSpec
from pipelines.errors import DataError
from pipelines.ffcv_backend import memory

GB = 10**9


def test_the_os_cache_is_chosen_and_kept_silent_when_it_fits(monkeypatch):
    monkeypatch.delenv(memory.PROCESS_CACHE_VARIABLE, raising=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert memory.choose_os_cache("x.beton", 50 * GB, ranks=8, available=100 * GB) is True


def test_a_beton_larger_than_the_memory_warns_once_and_still_loads(monkeypatch):
    monkeypatch.delenv(memory.PROCESS_CACHE_VARIABLE, raising=False)
    with pytest.warns(UserWarning, match="every epoch reads it from disk"):
        assert memory.choose_os_cache("x.beton", 150 * GB, ranks=8, available=100 * GB) is True


def test_the_process_cache_is_kept_where_a_copy_per_rank_fits_and_refused_where_not(monkeypatch):
    monkeypatch.setenv(memory.PROCESS_CACHE_VARIABLE, "1")
    assert memory.choose_os_cache("x.beton", 5 * GB, ranks=8, available=100 * GB) is False
    with pytest.raises(DataError) as refused:
        memory.choose_os_cache("x.beton", 50 * GB, ranks=8, available=100 * GB)
    line = str(refused.value)
    assert "\n" not in line and "400.0 GB" in line and f"unset {memory.PROCESS_CACHE_VARIABLE}" in line


def test_mem_available_and_ranks_per_node_read_the_node(monkeypatch):
    assert 0 < memory.mem_available() < 1 << 50
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert memory.ranks_per_node() == 4
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert memory.ranks_per_node() == 1


def test_build_loader_refuses_before_ffcv_allocates_with_a_faked_node(colour_datasets, monkeypatch):
    monkeypatch.setenv(memory.PROCESS_CACHE_VARIABLE, "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    from pipelines.ffcv_backend.reader import open_dataset

    size = open_dataset(colour_datasets[0]["ffcv"])[1]
    monkeypatch.setattr(memory, "mem_available", lambda: 4 * os.path.getsize(size))  # < 8 copies
    with pytest.raises(DataError, match=f"8 rank.*unset {memory.PROCESS_CACHE_VARIABLE}"):
        pipelines.build_loader("ffcv", colour_datasets[0]["ffcv"], aug=AugSpec(size=32), batch_size=4,
                               device="cpu", workers=1)
    monkeypatch.setattr(memory, "mem_available", lambda: 100 * os.path.getsize(size))  # fits: loads
    loader = pipelines.build_loader("ffcv", colour_datasets[0]["ffcv"], aug=AugSpec(size=32), batch_size=4,
                                    device="cpu", workers=1)
    assert type(loader.crops.loader.memory_manager).__name__ == "ProcessCacheManager"
