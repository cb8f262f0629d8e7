import re
from pathlib import Path

import pytest
import yaml

from fastbt import config
from fastbt.config import Config, ConfigError

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path, text, name="run.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_are_the_paper_recipe():
    cfg = config.load()
    assert cfg.model.arch == "resnet50" and cfg.model.projector == (8192, 8192, 8192)
    assert cfg.train.batch_size == 2048 and cfg.train.epochs == 1000
    assert cfg.loss.lambd == 0.0051
    assert (cfg.optim.lr_weights, cfg.optim.lr_biases, cfg.optim.weight_decay) == (0.2, 0.0048, 1e-6)


def test_base_yaml_mirrors_the_dataclass_defaults():
    on_disk = yaml.safe_load((REPO / "configs" / "base.yaml").read_text())
    assert on_disk == config.to_dict(Config())


@pytest.mark.parametrize("preset", sorted(p.name for p in (REPO / "configs").glob("*.yaml")))
def test_every_preset_loads_and_only_overrides(preset):
    path = REPO / "configs" / preset
    config.load(path)
    text = yaml.safe_load(path.read_text()) or {}
    if preset != "base.yaml":  # a preset holds overrides only, never a full copy
        n_keys = sum(len(v) for v in text.values())
        assert 0 < n_keys < len(list(_leaves(config.to_dict(Config())))) // 2


def _leaves(tree, prefix=""):
    for k, v in tree.items():
        if isinstance(v, dict):
            yield from _leaves(v, f"{prefix}{k}.")
        else:
            yield prefix + k


def test_file_then_overrides_take_precedence(tmp_path):
    path = write(tmp_path, "train:\n  epochs: 100\n  batch_size: 512\noptim:\n  weight_decay: 1e-5\n")
    cfg = config.load(path, ["train.epochs=300", "model.projector=[64, 32]", "runtime.compile=false"])
    assert cfg.train.epochs == 300  # override beats file
    assert cfg.train.batch_size == 512  # file beats default
    assert cfg.optim.weight_decay == 1e-5  # "1e-5" (a YAML 1.1 string) converted to float
    assert cfg.model.projector == (64, 32)
    assert cfg.runtime.compile is False
    assert cfg.loss.lambd == 0.0051  # default kept


def test_int_is_accepted_where_float_is_expected(tmp_path):
    assert config.load(None, ["loss.scale=1"]).loss.scale == 1.0


def test_round_trip_through_yaml(tmp_path):
    cfg = config.load(None, ["model.arch=resnet18", "model.projector=[128,128]", "data.backend=dali",
                             "optim.warmup_epochs=2.5", "train.out_dir=/tmp/x"])
    config.save(cfg, tmp_path / "resolved.yaml")
    assert config.load(tmp_path / "resolved.yaml") == cfg


def test_unknown_key_names_it_and_suggests_the_closest(tmp_path):
    path = write(tmp_path, "optim:\n  lr_weight: 0.3\n")
    with pytest.raises(ConfigError) as err:
        config.load(path)
    assert str(err.value) == (f"unknown config key 'optim.lr_weight' in {path}; "
                              "did you mean 'optim.lr_weights'?")


def test_unknown_section_in_an_override():
    with pytest.raises(ConfigError, match=r"unknown config key 'trian' in override "
                                          r"'trian.epochs=3'; did you mean 'train'\?"):
        config.load(None, ["trian.epochs=3"])


def test_unknown_key_without_a_close_match_lists_the_valid_ones():
    with pytest.raises(ConfigError, match=r"unknown config key 'loss.zzz' .*valid keys here: "
                                          r"loss.name, loss.lambd, loss.scale, loss.mode"):
        config.load(None, ["loss.zzz=1"])


@pytest.mark.parametrize("override, message", [
    ("train.epochs=ten", "config key 'train.epochs' expects int, got 'ten' (str)"),
    ("train.epochs=2.5", "config key 'train.epochs' expects int, got 2.5 (float)"),
    ("runtime.compile=1", "config key 'runtime.compile' expects bool, got 1 (int)"),
    ("loss.lambd=yes", "config key 'loss.lambd' expects float, got True (bool)"),
    ("data.backend=pil", "config key 'data.backend' expects one of 'ffcv', 'dali', 'torchvision', "
                         "got 'pil' (str)"),
    ("model.projector=8192", "config key 'model.projector' expects a list of ints, got 8192 (int)"),
    ("model.projector=[8192, x]", "config key 'model.projector[1]' expects int, got 'x' (str)"),
])
def test_wrong_type_names_key_expected_type_and_value(override, message):
    with pytest.raises(ConfigError) as err:
        config.load(None, [override])
    assert str(err.value) == message


def test_a_section_given_a_scalar_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="config key 'optim' is a section"):
        config.load(write(tmp_path, "optim: 3\n"))


def test_bad_files_are_named(tmp_path):
    with pytest.raises(ConfigError, match="config file '.*nope.yaml' not found"):
        config.load(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match=r"config file '.*bad.yaml' is not valid YAML at line 3: expected ','"):
        config.load(write(tmp_path, "train:\n  epochs: [1\n", "bad.yaml"))
    with pytest.raises(ConfigError, match="must hold a mapping of sections, got list"):
        config.load(write(tmp_path, "- 1\n", "list.yaml"))
    with pytest.raises(ConfigError, match="override 'train.epochs' must look like key.sub=value"):
        config.load(None, ["train.epochs"])


def test_derived_values():
    cfg = config.load(None, ["train.batch_size=2048", "train.epochs=100", "optim.warmup_epochs=10"])
    d = config.derive(cfg, world_size=8, dataset_size=1_281_167)
    assert d.per_device_batch == 256
    assert d.steps_per_epoch == 625  # 1_281_167 // 2048, last partial batch dropped
    assert d.total_steps == 62_500 and d.warmup_steps == 6_250
    assert d.base_lr == 8.0


def test_derived_values_refuse_impossible_worlds():
    cfg = config.load(None, ["train.batch_size=100"])
    with pytest.raises(ConfigError, match="batch_size=100 is not divisible by the world size 8"):
        config.derive(cfg, world_size=8, dataset_size=1000)
    with pytest.raises(ConfigError, match=r"larger than the dataset \(50 images\)"):
        config.derive(cfg, world_size=1, dataset_size=50)


@pytest.mark.parametrize("override, message", [
    ("train.epochs=0", "config key 'train.epochs' must be > 0, got 0"),
    ("optim.weight_decay=-1e-6", "config key 'optim.weight_decay' must be >= 0, got -1e-06"),
    ("model.projector=[]", "config key 'model.projector' must be a non-empty list of positive sizes, got ()"),
])
def test_out_of_range_values_are_named(override, message):
    with pytest.raises(ConfigError) as err:
        config.load(None, [override])
    assert str(err.value) == message


def test_aug_section_is_the_recipe_and_is_checked():
    cfg = config.load(None, ["aug.size=96", "aug.view2.solarize_p=0.0"])
    assert cfg.aug.size == 96 and cfg.aug.view2.solarize_p == 0.0
    assert cfg.aug.view1.blur_p == 1.0 and cfg.aug.view2.blur_p == 0.1  # the paper's asymmetry
    with pytest.raises(ConfigError, match=r"config section 'aug.view1': .*hue must be in \[0, 0.5\]"):
        config.load(None, ["aug.view1.hue=0.7"])
    with pytest.raises(ConfigError, match="did you mean 'aug.view2.gray_p'"):
        config.load(None, ["aug.view2.grey_p=0.1"])


# ---- crop sizes the augmentation can take ------------------------------------------------------

@pytest.mark.parametrize("overrides, key", [
    (["aug.size=8"], "size must be more than 8 px"),
    (["aug.size=32", "aug.resolution.start=8", "aug.resolution.multiple=8", "aug.resolution.ramp_end_epoch=2"],
     "resolution.start must be more than 8 px"),
    (["aug.size=5000"], "size must be in 1..1024"),
    (["aug.size=32", "aug.resolution.start=16", "aug.resolution.ramp_end_epoch=8", "train.epochs=8"],
     "'aug.resolution.ramp_end_epoch' is 8, but the run has 8 epochs"),
])
def test_crop_sizes_the_blur_or_the_run_cannot_take_are_refused_naming_the_key(overrides, key):
    from fastbt import config
    from fastbt.errors import ConfigError

    with pytest.raises(ConfigError, match=re.escape(key)):
        config.load(None, overrides)


def test_the_smallest_size_the_blur_takes_is_accepted_and_runs():
    import torch

    from fastbt import config
    from pipelines.augment import blur_kernel_size, gaussian_blur

    assert config.load(None, ["aug.size=9"]).aug.size == 9
    k = blur_kernel_size(2.0)
    x = torch.rand(2, 3, 9, 9)
    assert gaussian_blur(x, torch.tensor([2.0, 0.1]), k).shape == x.shape
