"""Class mixing per batch, on a class-sorted source of 20 classes: every loader's batches hold about
as many distinct classes as uniformly random batches do (pipelines/class_mixing.py has the exact expectation),
and so does DALI's stock streaming reader over fastbt's shuffled shards; over class-sorted shards
(as fastbt wrote them before) it does not, which shows the measurement can fail.

Scaled like ImageNet with DALI's reader: one class per shard when sorted, a shuffle buffer of
three shards. Printed figures: `pytest -s`.
"""

import pytest

import pipelines
from pipelines.sample_images import make_image_folder
from pipelines.class_mixing import class_sorted_shards, expected_distinct, mean_distinct, streamed_label_batches
from pipelines.augment import AugSpec
from pipelines.convert import convert
from pipelines.convert.options import Options

CLASSES, PER_CLASS, BATCH = 20, 24, 24
BUFFER = 3 * PER_CLASS  # the stock reader's initial_fill: three shards, as 4096 is to ImageNet's 1000
EXPECTED = expected_distinct([PER_CLASS] * CLASSES, BATCH)  # 14.34
TOLERANCE = 0.10


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """{name: path}: the class-sorted source folder, its conversions, and a class-sorted DALI one."""
    root = tmp_path_factory.mktemp("mixing")
    make_image_folder(root / "src", classes=[f"class_{i:02d}" for i in range(CLASSES)], per_class=PER_CLASS,
                      size=(24, 16))
    paths = {"torchvision": root / "src"}
    options = dict(max_resolution=24, shard_size=PER_CLASS)
    for fmt in ("dali", "ffcv"):
        convert(root / "src", root / fmt, Options(fmt, **options), workers=2, progress=False, log=lambda _: None)
        paths[fmt] = root / fmt
    with class_sorted_shards():
        convert(root / "src", root / "sorted", Options("dali", **options), workers=2, progress=False,
                log=lambda _: None)
    paths["sorted"] = root / "sorted"
    return {k: str(v) for k, v in paths.items()}


def within_tolerance(figure: float) -> bool:
    return abs(figure - EXPECTED) <= TOLERANCE * EXPECTED


def test_the_expectation_is_exact():
    # 2 classes of 2, batches of 2: P(both classes) = 4/6, so E = 1 + 4/6
    assert expected_distinct([2, 2], 2) == pytest.approx(1 + 4 / 6, abs=1e-12)
    assert expected_distinct([5], 3) == 1 and expected_distinct([1] * 10, 4) == 4


@pytest.mark.parametrize("backend", ["dali", "ffcv", "torchvision"])
def test_loader_batches_mix_classes_like_uniformly_random_batches(backend, datasets):
    crops = pipelines.build_loader(backend, datasets[backend], aug=AugSpec(size=16), batch_size=BATCH,
                                   device="cpu", workers=2).crops
    for epoch in (0, 3):
        crops.set_epoch(epoch)
        figure = mean_distinct(labels for _, _, labels in crops)
        print(f"{backend} epoch {epoch}: {figure:.2f} distinct classes per batch of {BATCH} "
              f"(uniformly random: {EXPECTED:.2f})")
        assert within_tolerance(figure), (backend, epoch, figure, EXPECTED)


def test_a_streaming_reader_mixes_shuffled_shards_but_not_class_sorted_ones(datasets):
    from pipelines.convert.manifest import load

    shuffled, sorted_ = load(datasets["dali"]), load(datasets["sorted"])
    for epoch in (0, 3):
        after = mean_distinct(streamed_label_batches(shuffled, BATCH, BUFFER, seed=0, epoch=epoch))
        before = mean_distinct(streamed_label_batches(sorted_, BATCH, BUFFER, seed=0, epoch=epoch))
        print(f"DALI readers.webdataset, epoch {epoch}: class-sorted shards {before:.2f}, shuffled shards "
              f"{after:.2f} distinct classes per batch of {BATCH} (uniformly random: {EXPECTED:.2f})")
        assert within_tolerance(after), (epoch, after)
        assert before < 0.7 * EXPECTED, (epoch, before)
