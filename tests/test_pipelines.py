"""Every data backend (torchvision, ffcv, dali) through `pipelines.build_loader` /
`build_eval_loader`, on CPU, from one small image folder and its two conversions.

Each test image is one flat colour (plus noise), different for every image, so the mean colour of
any crop names the image it came from (`identify`). Loaders are built once per configuration and
shared (`loader`): an FFCV loader JIT-compiles its pipeline on its first batch.
"""

import numpy as np
import pytest
import torch

import pipelines
from pipelines.sample_images import identify
from pipelines.augment import AugSpec, ViewSpec
from pipelines.errors import DataError
from pipelines.convert.manifest import load
from pipelines.order import rank_range
from pipelines.convert.shards import shard_samples

BACKENDS = ("torchvision", "ffcv", "dali")
CLASSES, PER_CLASS, BATCH = ("a", "b", "c"), 8, 4  # as conftest.colour_datasets
WORKERS = 2
N = len(CLASSES) * PER_CLASS
AUG = AugSpec(size=32)


@pytest.fixture(scope="module")
def data(colour_datasets):
    """{backend: path} and the source images' (mean colours, labels), in dataset order."""
    return colour_datasets


@pytest.fixture(scope="module")
def stored(data):
    """{backend: the source image of each dataset position}: the converted formats hold the images in
    a seeded shuffle (read from the shards' keys, the source positions), the folder in sorted order."""
    keys = [int(s.key) for tar in load(data[0]["dali"]).data_paths() for s in shard_samples(tar)]
    assert sorted(keys) == list(range(N)) and keys != sorted(keys)
    return {"torchvision": np.arange(N), "ffcv": np.array(keys), "dali": np.array(keys)}  # same bytes, same order


@pytest.fixture(scope="module")
def loader(data):
    """loader(backend, rank=0, world_size=1, seed=0): a TwoViewLoader, built once per arguments."""
    built = {}

    def get(backend, rank=0, world_size=1, seed=0):
        key = (backend, rank, world_size, seed)
        if key not in built:
            built[key] = pipelines.build_loader(backend, data[0][backend], aug=AUG, batch_size=BATCH,
                                                device="cpu", rank=rank, world_size=world_size, seed=seed,
                                                workers=WORKERS)
        return built[key]
    return get


def epoch_crops(crops, epoch: int, colours):
    """(image ids of view 1, of view 2, labels, view-1 crops) over one epoch of a crop source."""
    crops.set_epoch(epoch)
    ones, twos, labels, images = [], [], [], []
    for crops1, crops2, y in crops:
        for c in (crops1, crops2):
            assert c.dtype == torch.uint8 and c.shape == (BATCH, 3, AUG.size, AUG.size)
        ones.append(identify(crops1, colours))
        twos.append(identify(crops2, colours))
        labels.append(y.numpy())
        images.append(crops1)
    return np.concatenate(ones), np.concatenate(twos), np.concatenate(labels), torch.cat(images)


@pytest.mark.parametrize("backend", BACKENDS)
def test_views_are_normalized_floats_of_the_right_shape_and_count(backend, loader):
    views = loader(backend)
    assert views.dataset_size == N and len(views) == N // BATCH
    mean, std = torch.tensor(AUG.mean).view(1, 3, 1, 1), torch.tensor(AUG.std).view(1, 3, 1, 1)
    batches = 0
    for view1, view2 in views:
        batches += 1
        for v in (view1, view2):
            assert v.shape == (BATCH, 3, AUG.size, AUG.size) and v.dtype == torch.float32
            assert (v >= -mean / std - 1e-5).all() and (v <= (1 - mean) / std + 1e-5).all()
        assert not torch.equal(view1, view2)
    assert batches == len(views)


@pytest.mark.parametrize("backend", BACKENDS)
def test_crops_come_in_pairs_of_one_image_with_its_label(backend, loader, data):
    _, colours, labels = data
    crops = loader(backend).crops
    ones, twos, got_labels, _ = epoch_crops(crops, 0, colours)
    assert len(ones) == N // BATCH * BATCH and len(set(ones)) == len(ones)  # each image at most once
    np.testing.assert_array_equal(ones, twos)  # both crops of a pair are of one image
    np.testing.assert_array_equal(got_labels, labels[ones])
    crops.set_epoch(0)
    crops1, crops2, _ = next(iter(crops))
    assert not torch.equal(crops1, crops2)  # two different crops of each image


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_seed_and_epoch_give_the_same_batches_and_another_epoch_another_order(backend, loader, data):
    """What a resumed run relies on: set_epoch(e) replays epoch e, batch for batch."""
    colours = data[1]
    crops = loader(backend).crops
    first, _, _, images = epoch_crops(crops, 1, colours)
    again, _, _, images_again = epoch_crops(crops, 1, colours)
    np.testing.assert_array_equal(first, again)
    assert torch.equal(images, images_again)
    assert not np.array_equal(first, epoch_crops(crops, 2, colours)[0])
    views = loader(backend)
    views.set_epoch(1)
    a, b = (next(iter(views)) for _ in range(2))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.parametrize("backend", ["torchvision", "dali"])
def test_a_fresh_loader_with_the_same_seed_gives_the_same_crops(backend, loader, data):
    """(For ffcv, see test_ffcv_crops_depend_on_the_sample_not_on_the_rank.)"""
    colours = data[1]
    fresh = pipelines.build_loader(backend, data[0][backend], aug=AUG, batch_size=BATCH, device="cpu", seed=0,
                                   workers=WORKERS)
    ids, _, _, images = epoch_crops(fresh.crops, 1, colours)
    ids_shared, _, _, images_shared = epoch_crops(loader(backend).crops, 1, colours)
    np.testing.assert_array_equal(ids, ids_shared)
    assert torch.equal(images, images_shared)
    other = epoch_crops(loader(backend, seed=1).crops, 1, colours)[0]
    assert not np.array_equal(ids, other)


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_ranks_see_disjoint_samples_and_as_many_batches(backend, loader, data):
    colours = data[1]
    seen = []
    for rank in (0, 1):
        crops = loader(backend, rank=rank, world_size=2).crops
        assert len(crops) == (N // 2) // BATCH
        seen.append(epoch_crops(crops, 0, colours)[0])
        assert len(seen[-1]) == len(crops) * BATCH
    assert not set(seen[0]) & set(seen[1])


def test_ffcv_crops_depend_on_the_sample_not_on_the_rank(loader, data, stored):
    """FFCV crops are a function of (seed, epoch, view, image): a fresh loader for another rank
    gives the same crop of an image as the shared one does. torchvision and DALI follow the same
    order of dataset positions."""
    colours = data[1]
    ids, _, _, images = epoch_crops(loader("ffcv").crops, 0, colours)
    for rank in (0, 1):
        rank_ids, _, _, rank_images = epoch_crops(loader("ffcv", rank=rank, world_size=2).crops, 0, colours)
        where = {image: i for i, image in enumerate(ids)}
        for image, crop in zip(rank_ids, rank_images):
            if image in where:
                assert torch.equal(crop, images[where[image]])
    np.testing.assert_array_equal(ids, stored["ffcv"][epoch_crops(loader("torchvision").crops, 0, colours)[0]])
    np.testing.assert_array_equal(ids, epoch_crops(loader("dali").crops, 0, colours)[0])


def test_ffcv_crops_are_the_drawn_boxes_resized_and_flipped(loader, data, stored):
    """Each crop is exactly its image decoded, cut to the box `crop_boxes` draws for (seed, epoch,
    view, index), resized with OpenCV and flipped when drawn so (the noise shows any offset or flip)."""
    import cv2
    from ffcv.libffcv import imdecode

    from pipelines.crop_params import ATTEMPTS, crop_boxes, uniforms
    from pipelines.ffcv_backend.beton import beton_contents
    from pipelines.ffcv_backend.ops import CV2_INTERPOLATION
    from pipelines.convert.manifest import load

    colours = data[1]
    crops = loader("ffcv").crops
    crops.set_epoch(3)
    batch = next(iter(crops))
    index = np.argsort(stored["ffcv"])[identify(batch[0], colours)]  # dataset positions
    _, widths, heights, jpeg = beton_contents(load(data[0]["ffcv"]).data_paths()[0])
    for view_index, (view, got) in enumerate(zip((AUG.view1, AUG.view2), batch[:2])):
        u = uniforms(0, 3, view_index, index, 2 * ATTEMPTS + 3)
        h, w = heights[index].astype(np.int64), widths[index].astype(np.int64)
        top, left, crop_h, crop_w = crop_boxes(u[:, 1:], h, w, view)
        for k, i in enumerate(index):
            image = np.empty((h[k], w[k], 3), np.uint8)
            imdecode(np.frombuffer(jpeg(i), np.uint8), image, *[int(h[k]), int(w[k])] * 2, 0, 0, 1, 1, False, False)
            want = cv2.resize(image[top[k]:top[k] + crop_h[k], left[k]:left[k] + crop_w[k]],
                              (AUG.size, AUG.size), interpolation=CV2_INTERPOLATION[AUG.interpolation])
            want = want[:, ::-1] if u[k, 0] < view.flip_p else want
            np.testing.assert_array_equal(got[k].permute(1, 2, 0).numpy(), want)


def test_crop_boxes_follow_torchvision_random_resized_crop():
    from torchvision.transforms import v2

    from pipelines.crop_params import ATTEMPTS, crop_boxes, uniforms

    n, view = 4000, ViewSpec()
    heights, widths = np.full(n, 240), np.full(n, 320)
    top, left, h, w = crop_boxes(uniforms(0, 0, 0, np.arange(n), 2 * ATTEMPTS + 2), heights, widths, view)
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 240).all() and (left + w <= 320).all()
    torch.manual_seed(0)
    reference = np.array([v2.RandomResizedCrop.get_params(torch.empty(3, 240, 320), list(view.crop_scale),
                                                          list(view.crop_ratio))[2:] for _ in range(n)])
    for ours, theirs in ((h * w / (240 * 320), reference.prod(1) / (240 * 320)),
                         (np.log(w / h), np.log(reference[:, 1] / reference[:, 0]))):
        assert abs(ours.mean() - theirs.mean()) < 4 * theirs.std() / np.sqrt(n) * np.sqrt(2)
    # No box of the allowed shapes fits a 1000 x 10 image: the centered fallback, as torchvision's.
    one = crop_boxes(uniforms(0, 0, 0, np.arange(1), 2 * ATTEMPTS + 2), np.array([10]), np.array([1000]), view)
    assert [int(x[0]) for x in one] == [0, (1000 - 13) // 2, 10, 13]  # 13 = round(10 * 4 / 3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_eval_batches_hold_every_image_once_in_order_with_its_label(backend, data, stored):
    paths, colours, labels = data
    mean, std = torch.tensor(AUG.mean).view(1, 3, 1, 1), torch.tensor(AUG.std).view(1, 3, 1, 1)
    ids, got_labels = [], []
    for rank in (0, 1):  # the two shares, in rank order, are the whole set in order
        batches = pipelines.build_eval_loader(backend, paths[backend], size=32, resize=36, mean=AUG.mean,
                                              std=AUG.std, batch_size=5, device="cpu", rank=rank, world_size=2,
                                              workers=WORKERS)
        assert len(batches) == -(-len(rank_range(N, rank, 2)) // 5)
        count = 0
        for images, y in batches:
            count += 1
            assert images.shape[1:] == (3, 32, 32) and images.dtype == torch.float32
            ids.append(identify((images * std + mean) * 255, colours))
            got_labels.append(y.numpy())
        assert count == len(batches)
    np.testing.assert_array_equal(np.concatenate(ids), stored[backend])  # the dataset's order
    np.testing.assert_array_equal(np.concatenate(got_labels), labels[stored[backend]])


@pytest.mark.parametrize("backend", ["ffcv", "dali"])
def test_a_bad_path_or_another_format_is_one_clear_error(backend, data, tmp_path):
    paths = data[0]
    other = "dali" if backend == "ffcv" else "ffcv"
    for path, message in ((tmp_path / "nowhere", "no manifest"),
                          (paths[other], f"holds a {other} dataset, not {backend}")):
        for build in (lambda: pipelines.build_loader(backend, str(path), aug=AUG, batch_size=BATCH, device="cpu",
                                                     workers=WORKERS),
                      lambda: pipelines.build_eval_loader(backend, str(path), size=32, resize=36, mean=AUG.mean,
                                                          std=AUG.std, batch_size=BATCH, device="cpu",
                                                          workers=WORKERS)):
            with pytest.raises(DataError, match=message) as err:
                build()
            assert "\n" not in str(err.value)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_dali_mixed_decode_gives_the_right_images_on_the_gpu(data):
    paths, colours, labels = data
    loader = pipelines.build_loader("dali", paths["dali"], aug=AUG, batch_size=BATCH, device="cuda",
                                    workers=WORKERS)
    batches = 0
    for crops1, crops2, batch_labels in loader.crops:
        assert crops1.device.type == crops2.device.type == "cuda" and crops1.dtype == torch.uint8
        assert crops1.shape == (BATCH, 3, AUG.size, AUG.size)
        for crops in (crops1, crops2):  # both views come from the images the labels name
            assert (labels[identify(crops.cpu(), colours)] == batch_labels.cpu().numpy()).all()
        batches += 1
    assert batches == len(loader)
