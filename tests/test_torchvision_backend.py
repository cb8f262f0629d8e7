"""The torchvision backend (pipelines/torchvision_backend/): a bad image met by a DataLoader worker
ends in one line naming the file, never the worker's traceback."""

import pytest

import pipelines
from pipelines.sample_images import make_image_folder
from pipelines.augment import AugSpec
from pipelines.errors import DataError

AUG = AugSpec(size=32)


@pytest.mark.parametrize("loader", ["train", "eval"])
def test_a_bad_image_in_a_torchvision_worker_is_one_line_naming_it(tmp_path, loader):
    src = tmp_path / "src"
    make_image_folder(src, classes=("a", "b"), per_class=4)
    bad = src / "b" / "b_0001.JPEG"
    bad.write_bytes(bad.read_bytes()[:100])
    if loader == "train":
        batches = pipelines.build_loader("torchvision", str(src), aug=AUG, batch_size=8, device="cpu", workers=1)
    else:
        batches = pipelines.build_eval_loader("torchvision", str(src), size=32, resize=36, mean=AUG.mean,
                                              std=AUG.std, batch_size=8, device="cpu", workers=1)
    with pytest.raises(DataError) as err:
        for _ in batches:
            pass
    assert str(err.value).startswith(f"{bad}: truncated or corrupt") and "\n" not in str(err.value)
