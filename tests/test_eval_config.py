"""`fastbt eval` judges weights from a run directory at the resolution that run trained at."""

import json

import pytest
import torch

from fastbt import config
from fastbt.cli import main
from fastbt.demo.data import make_demo_folder
from fastbt.eval.setup import eval_setup, proportional_resize
from fastbt.train.model import build_backbone


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    make_demo_folder(root / "train", per_class=2, size=40, seed=0)
    make_demo_folder(root / "val", per_class=1, size=40, seed=1)
    return root


def make_run(root, shapes, *overrides):
    """What a run directory holds for evaluation: its resolved config.yaml and backbone.pth."""
    root.mkdir()
    cfg = config.load(None, ["model.arch=resnet18", "aug.size=32", "runtime.device=cpu", "data.workers=0",
                             f"eval.train={shapes / 'train'}", f"eval.val={shapes / 'val'}", *overrides])
    config.save(cfg, root / "config.yaml")
    torch.manual_seed(0)
    torch.save(build_backbone("resnet18")[0].state_dict(), root / "backbone.pth")
    return root / "backbone.pth"


def test_the_proportion_is_imagenets_256_to_224():
    assert proportional_resize(224) == 256 and proportional_resize(32) == 37 and proportional_resize(64) == 73


def test_weights_in_a_run_directory_default_to_its_training_resolution(shapes, tmp_path):
    weights = make_run(tmp_path / "run", shapes)
    setup = eval_setup(weights, None, [], {})
    assert (setup.cfg.eval.size, setup.cfg.eval.resize) == (32, 37)
    assert setup.cfg.model.arch == "resnet18" and setup.cfg.eval.train == str(shapes / "train")
    assert str(tmp_path / "run" / "config.yaml") in setup.describe() and "32 px" in setup.describe()
    # the same when the run's own config is named with --config
    assert eval_setup(weights, str(tmp_path / "run" / "config.yaml"), [], {}).cfg == setup.cfg


def test_a_resolution_the_user_sets_wins(shapes, tmp_path):
    weights = make_run(tmp_path / "run", shapes)
    setup = eval_setup(weights, None, ["eval.size=48"], {})
    assert (setup.cfg.eval.size, setup.cfg.eval.resize) == (48, 256) and "command line" in setup.describe()
    own = tmp_path / "mine.yaml"
    own.write_text("eval: {size: 64, resize: 72}\n")
    setup = eval_setup(weights, str(own), [], {})
    assert (setup.cfg.eval.size, setup.cfg.eval.resize) == (64, 72) and str(own) in setup.describe()
    own.write_text("eval: {batch_size: 8}\n")  # a file that says nothing of resolution: the run's
    assert (eval_setup(weights, str(own), [], {}).cfg.eval.size) == 32


def test_weights_outside_a_run_directory_keep_the_config_defaults(tmp_path):
    torch.save(build_backbone("resnet18")[0].state_dict(), tmp_path / "resnet18.pth")
    setup = eval_setup(tmp_path / "resnet18.pth", None, [], {"model.arch": "resnet18"})
    assert (setup.cfg.eval.size, setup.cfg.eval.resize) == (224, 256)
    assert setup.cfg.model.arch == "resnet18"


def test_eval_knn_prints_and_stores_the_resolution_it_used(shapes, tmp_path, capsys):
    weights = make_run(tmp_path / "run", shapes, "eval.batch_size=32")
    assert main(["eval", "knn", "--weights", str(weights)]) == 0
    out = capsys.readouterr().out
    assert "fastbt eval knn: center crops of 32 px (short side resized to 37; the run's aug.size" in out
    result = json.loads((tmp_path / "run" / "backbone_knn.json").read_text())
    assert (result["size"], result["resize"], result["num_train"], result["num_val"]) == (32, 37, 20, 10)
