"""The pretraining 2-process == 1-process check with runtime.compile=true: the model (with global
BN's collectives in its graph) and LARS compiled. ~5 CPU-minutes; 22 wall-minutes on the shared
2-core machine."""

import pytest

from fastbt import loop

import distributed
from test_loop import NO_PHOTOMETRIC, assert_same_run, images, tiny_config  # noqa: F401 (fixture)

COMPILED = ["train.epochs=1", "runtime.compile=true", *NO_PHOTOMETRIC]


def compiled_run(rank, world_size, images, out_dir):
    loop.pretrain(tiny_config(images, out_dir, *COMPILED))


@pytest.mark.slow
@pytest.mark.dist
def test_two_compiled_processes_match_one_compiled_process(images, tmp_path):
    one = loop.pretrain(tiny_config(images, tmp_path / "one", *COMPILED))
    distributed.run(compiled_run, 2, images, tmp_path / "two", init_group=False)
    assert_same_run(one, tmp_path / "two")
