"""How well a loader mixes classes: mean distinct classes per batch, against the exact expectation
for uniformly random batches. Shared by tests/test_shard_mixing.py and scripts/bench_pipelines.py.

    expected_distinct(class_counts, b) = sum_c 1 - C(N - n_c, b) / C(N, b)

(the chance that class c appears at least once in b samples drawn without replacement from N).
"""

from __future__ import annotations

import contextlib
from fractions import Fraction
from math import comb
from typing import Iterable, Sequence
from unittest import mock

import numpy as np


def expected_distinct(class_counts: Sequence[int], batch: int) -> float:
    n = sum(class_counts)
    return float(sum(1 - Fraction(comb(n - c, batch), comb(n, batch)) for c in class_counts))


def mean_distinct(label_batches: Iterable) -> float:
    return float(np.mean([len(np.unique(np.asarray(labels))) for labels in label_batches]))


@contextlib.contextmanager
def class_sorted_shards():
    """Within the block, conversions assign samples to shards in source order (sorted by class,
    then path), as fastbt did before shuffled shards: the 'before' of the mixing figures."""
    with mock.patch("pipelines.convert.shards.shuffled_order", lambda n, seed: np.arange(n)):
        yield


def streamed_label_batches(m, batch: int, buffer: int, seed: int, epoch: int) -> list[np.ndarray]:
    """The labels per batch that DALI's stock `readers.webdataset` yields for one epoch over a DALI
    dataset's shards, read as fastbt's DALI loader read them before it was built once: the shards
    in a seeded per-epoch order (`epoch_order`), samples shuffled within `buffer` (initial_fill).
    Labels only, no decoding. Full batches only."""
    from nvidia.dali import fn, pipeline_def

    from pipelines.order import epoch_order

    files = epoch_order(len(m.files), 0, 1, seed, epoch).tolist()
    tars, idxs = m.data_paths(), m.index_paths()

    @pipeline_def(batch_size=batch, num_threads=1, device_id=None, seed=seed + epoch)
    def labels():
        return fn.pad(fn.readers.webdataset(
            paths=[str(tars[i]) for i in files], index_paths=[str(idxs[i]) for i in files], ext=["cls"],
            random_shuffle=True, initial_fill=buffer, name="reader"), fill_value=0)

    pipe = labels()
    pipe.build()
    out = []
    for _ in range(pipe.epoch_size("reader") // batch):
        (digits,) = pipe.run()
        out.append(np.array([int(bytes(np.asarray(digits.at(i))).rstrip(b"\0")) for i in range(batch)]))
    return out
