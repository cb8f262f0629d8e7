"""What a checkpoint or weights file that torch refuses to load is reported as."""

import collections
import warnings

import pytest
import torch

from fastbt.train import checkpoint


class Pickled:  # a class: torch.load(weights_only=True) refuses to unpickle it
    pass


def test_pickled_code_is_named_without_torchs_weights_only_false_advice(tmp_path):
    torch.save({"model": collections.OrderedDict(), "x": Pickled()}, tmp_path / "ckpt_000000001.pt")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert checkpoint.load_latest(tmp_path) is None
    message = str(caught[0].message)
    assert "pickled code (GLOBAL " in message and "Pickled" in message
    assert "weights_only" not in message and "\x1b" not in message and "\n" not in message
    with pytest.raises(checkpoint.WeightsError) as err:
        checkpoint.read_backbone_state(tmp_path / "ckpt_000000001.pt")
    assert "weights_only" not in str(err.value) and "pickled code" in str(err.value)
