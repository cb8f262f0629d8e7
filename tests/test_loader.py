"""pipelines.loader: `TwoViewLoader.set_epoch(epoch, skip)` resumes an epoch exactly (bitwise the
batches a whole epoch gives from `skip` on, augmentation included) without decoding the skipped
batches; `Augment` is a pure function of (seed, rank, epoch, batch index)."""

from unittest import mock

import pytest
import torch

import pipelines
from pipelines.augment import AugSpec

AUG, BATCH, SKIP = AugSpec(size=32), 4, 2


class Counter:
    """Wraps `fn`, counting the samples it is called for (`count(args)` says how many a call is)."""

    def __init__(self, fn, count=lambda args: 1):
        self.fn, self.count, self.n = fn, count, 0

    def __call__(self, *args, **kwargs):
        self.n += self.count(args)
        return self.fn(*args, **kwargs)


def _decodes(backend: str):
    """(owner, name, replacement, counter): patch owner.name, the function through which `backend`
    reads each sample it decodes, with `replacement`, which counts the samples in `counter`."""
    if backend == "ffcv":
        import pipelines.ffcv_backend.ops as ops
        counter = Counter(ops.imdecode)
        return ops, "imdecode", counter, counter
    if backend == "dali":
        import pipelines.dali_backend.reader as dali
        counter = Counter(dali.ShardReader.read, count=lambda args: len(args[1]))
        return dali.ShardReader, "read", lambda self, indices: counter(self, indices), counter  # a method
    import pipelines.torchvision_backend.reader as tv
    counter = Counter(tv._read)
    return tv, "_read", counter, counter


@pytest.mark.parametrize("backend", ["torchvision", "ffcv", "dali"])
def test_set_epoch_with_skip_yields_the_rest_of_the_epoch_bitwise_and_decodes_only_that(
        backend, colour_datasets):
    loader = pipelines.build_loader(backend, colour_datasets[0][backend], aug=AUG, batch_size=BATCH,
                                    device="cpu", seed=3, workers=0 if backend == "torchvision" else 2)
    loader.set_epoch(1)
    whole = [(v1.clone(), v2.clone()) for v1, v2 in loader]
    assert len(whole) == len(loader) == 24 // BATCH

    owner, name, replacement, counter = _decodes(backend)
    with mock.patch.object(owner, name, replacement):
        loader.set_epoch(1, skip=SKIP)
        rest = [(v1.clone(), v2.clone()) for v1, v2 in loader]
    assert len(rest) == len(whole) - SKIP
    for (a1, a2), (b1, b2) in zip(rest, whole[SKIP:]):
        assert torch.equal(a1, b1) and torch.equal(a2, b2)
    assert counter.n == (len(whole) - SKIP) * BATCH  # each remaining image once; none skipped

    loader.set_epoch(1)  # and skip=0 is the whole epoch again
    assert torch.equal(next(iter(loader))[0], whole[0][0])


def test_skip_beyond_the_epoch_is_refused(colour_datasets):
    loader = pipelines.build_loader("torchvision", colour_datasets[0]["torchvision"], aug=AUG,
                                    batch_size=BATCH, device="cpu", workers=0)
    with pytest.raises(ValueError, match="skip 7: expected 0 to 6"):
        loader.set_epoch(0, skip=7)


def test_augment_depends_on_the_epoch_and_index_only():
    from pipelines.loader import Augment

    augment = Augment(AUG, seed=5, rank=1)
    crops = torch.randint(0, 256, (2, BATCH, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    first = augment(crops[0], crops[1], 2, 7)
    augment(crops[0], crops[1], 0, 0)  # whatever ran in between
    again = augment(crops[0], crops[1], 2, 7)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], augment(crops[0], crops[1], 2, 8)[0])
    assert not torch.equal(first[0], augment(crops[0], crops[1], 3, 7)[0])
