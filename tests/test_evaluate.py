"""Frozen-backbone evaluation end to end on tiny generated image sets (CPU; image folders unless
converted formats are named)."""

import json
import shutil

import pytest
import torch

import distributed
from checks import make_colour_folder, whole_and_resumed
from fastbt import config, runlog
from fastbt.cli import main
from fastbt.demo.data import make_demo_folder
from fastbt.errors import ConfigError
from fastbt.eval.data import center_crops, labeled_set
from fastbt.eval.features import Frozen, extract_features
from fastbt.eval.protocol import KnnEval
from fastbt.eval.weights import WeightsError, load_backbone
from fastbt.train import checkpoint
from fastbt.train.model import build_model
from pipelines.augment import AugSpec
from pipelines.convert import convert
from pipelines.convert.options import Options
from pipelines.convert.shards import shuffled_order
from pipelines.errors import DataError

# 32 px center crops of 40 px images; the whole set in one batch.
EVAL = ["model.arch=resnet18", "eval.size=32", "eval.resize=32", "eval.batch_size=80",
        "runtime.device=cpu", "runtime.precision=fp32", "data.workers=0"]


def data_args(shapes):
    return ["--train", str(shapes / "train"), "--val", str(shapes / "val")]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """What a pretraining run leaves: a checkpoint and the backbone exported from it."""
    out = tmp_path_factory.mktemp("run")
    torch.manual_seed(1)
    model = build_model("resnet18", (64, 64), channels_last=False)
    checkpoint.save(out, 5, {"model": model.state_dict(), "step": 5})
    checkpoint.export_backbone(checkpoint.checkpoints(out)[0], out / "backbone.pth")
    return out


def knn_cli(weights, shapes, *extra):
    assert main(["eval", "knn", "--weights", str(weights), *data_args(shapes), *EVAL, *extra]) == 0
    return json.loads(weights.with_name(f"{weights.stem}_knn.json").read_text())


def test_features_that_carry_the_class_score_high_and_blind_ones_score_chance(random_weights, tmp_path):
    make_colour_folder(tmp_path / "train", per_class=8, seed=0)
    make_colour_folder(tmp_path / "val", per_class=4, seed=1)  # same palette, other images
    blind = torch.load(random_weights, weights_only=True)
    blind["conv1.weight"].zero_()  # every image gives the same features
    torch.save(blind, tmp_path / "blind.pth")
    seeing, blind = knn_cli(random_weights, tmp_path), knn_cli(tmp_path / "blind.pth", tmp_path)
    assert seeing["top1"] >= 80 and blind["top1"] <= 20, (seeing, blind)
    assert seeing["num_train"] == 80 and seeing["num_val"] == 40


def test_a_checkpoint_scores_as_the_backbone_exported_from_it(run_dir, shapes):
    from_checkpoint = knn_cli(checkpoint.checkpoints(run_dir)[0], shapes)
    exported = knn_cli(run_dir / "backbone.pth", shapes)
    assert (from_checkpoint["top1"], from_checkpoint["top5"]) == (exported["top1"], exported["top5"])
    assert from_checkpoint["weights"].endswith("ckpt_000000005.pt")


def probe_cli(weights, shapes, out, *overrides, flags=()):
    return main(["eval", "linear", "--weights", str(weights), *data_args(shapes), "--out", str(out), *flags,
                 *EVAL, "eval.linear.epochs=3", "eval.linear.batch_size=16", *overrides])


def test_a_resumed_linear_probe_equals_the_uninterrupted_one(random_weights, shapes, tmp_path, monkeypatch):
    from fastbt.eval import linear

    small = ["eval.size=16", "eval.resize=16", "eval.linear.epochs=2"]  # 16 px: a quarter of the work
    log = whole_and_resumed(lambda out: probe_cli(random_weights, shapes, out, *small), linear, tmp_path,
                            monkeypatch, "head")
    assert [r["epoch"] for r in log] == [1, 2] and all(0 <= r["top5"] <= 100 for r in log)
    assert log[0]["train_images"] == 80


def test_the_cached_features_probe_logs_every_epoch_and_writes_its_result(random_weights, shapes, tmp_path):
    weights = tmp_path / "r18.pth"
    shutil.copy(random_weights, weights)
    assert main(["eval", "linear", "--weights", str(weights), *data_args(shapes), "--cached-features",
                 *EVAL, "eval.linear.epochs=2"]) == 0
    log = runlog.read(tmp_path / "r18_linear_cached" / "log.jsonl")
    result = json.loads((tmp_path / "r18_linear_cached.json").read_text())
    assert [r["epoch"] for r in log] == [1, 2] and log[0]["lr"] == 0.3
    assert (result["top1"], result["top5"]) == (log[-1]["top1"], log[-1]["top5"])
    assert result["cached_features"] and result["num_train"] == 80


def test_resuming_with_other_settings_is_refused(random_weights, shapes, tmp_path, capsys):
    out = tmp_path / "probe"
    assert probe_cli(random_weights, shapes, out, "eval.linear.epochs=1", flags=["--cached-features"]) == 0
    assert probe_cli(random_weights, shapes, out, "eval.linear.epochs=1", "eval.linear.lr=0.1",
                     flags=["--cached-features"]) == 2
    assert "eval.linear.lr: 0.3 there, 0.1 now" in capsys.readouterr().err


def one_line_error(capsys, argv):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    return err


def test_an_unreadable_weights_file_is_a_one_line_error(shapes, tmp_path, capsys):
    bad = tmp_path / "backbone.pth"
    bad.write_text("not a checkpoint")
    err = one_line_error(capsys, ["eval", "knn", "--weights", str(bad), *data_args(shapes), *EVAL])
    assert err.startswith(f"fastbt eval: error: {bad}: not a readable weights file")
    err = one_line_error(capsys, ["eval", "knn", "--weights", str(tmp_path / "nope.pth"), *data_args(shapes),
                                  *EVAL])
    assert "nope.pth: no such weights file" in err


def test_weights_of_another_architecture_name_the_mismatch_and_the_fit(random_weights, shapes, capsys):
    err = one_line_error(capsys, ["eval", "linear", "--weights", str(random_weights), *data_args(shapes),
                                  *EVAL, "--arch", "resnet50"])
    assert f"{random_weights}: the weights do not fit resnet50" in err
    assert "layer1.0.conv1.weight has shape [64, 64, 3, 3], expected [64, 64, 1, 1]" in err
    assert err.rstrip().endswith("they fit resnet18 (set the architecture to resnet18)")


def test_a_state_dict_of_something_else_is_refused(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"weight": torch.zeros(3)}, path)
    with pytest.raises(WeightsError, match="do not fit resnet18: .*missing tensors.*unexpected tensors"):
        load_backbone(path, "resnet18")
    torch.save([1, 2], path)
    with pytest.raises(WeightsError, match="neither a backbone state_dict nor a fastbt checkpoint"):
        load_backbone(path, "resnet18")


def test_train_and_val_sets_must_share_their_classes(shapes, tmp_path):
    make_demo_folder(tmp_path / "val", per_class=1, size=40, classes=("disc", "ring"))
    cfg = config.load(None, [*EVAL, f"eval.train={shapes / 'train'}", f"eval.val={tmp_path / 'val'}"])
    want = r"classes differ .* \(2 classes vs 10; first difference: 'disc' where the train set has 'checker"
    with pytest.raises(DataError, match=want):
        KnnEval(cfg, torch.device("cpu"))
    with pytest.raises(ConfigError, match="'eval.train' is empty"):
        KnnEval(config.load(None, EVAL), torch.device("cpu"))


def monitor(rank, world_size, train, val, weights):
    cfg = config.load(None, [*EVAL, f"eval.train={train}", f"eval.val={val}", "eval.batch_size=16",
                             "eval.size=16", "eval.resize=16", "eval.knn.every_epochs=2"])
    backbone, _ = load_backbone(weights, "resnet18")
    backbone.train()
    knn = KnnEval(cfg, torch.device("cpu"), rank, world_size)
    result = knn(backbone)
    assert backbone.training  # the monitor gives the training loop its model back as it was
    return result, [knn.due(e) for e in range(5)]


@pytest.mark.dist
def test_the_knn_monitor_over_two_processes_equals_one_process(shapes, random_weights, tmp_path):
    shutil.copytree(shapes / "val", tmp_path / "val")
    next((tmp_path / "val" / "disc").iterdir()).unlink()  # 39 images: the processes' shares differ
    data = (shapes / "train", tmp_path / "val", random_weights)
    alone = monitor(0, 1, *data)
    assert alone[1] == [False, False, True, False, True]
    for result, due in distributed.run(monitor, 2, *data):
        assert due == alone[1]
        assert result == pytest.approx(alone[0])


# ffcv is slow: ~10 s to import, 10-20 s of JIT compilation for each new loader
@pytest.mark.parametrize("fmt", [pytest.param("ffcv", marks=pytest.mark.slow), "dali"])
def test_a_converted_dataset_is_recognized_and_evaluated(fmt, shapes, random_weights, tmp_path):
    pytest.importorskip({"ffcv": "ffcv", "dali": "nvidia.dali"}[fmt])
    for split in ("train", "val"):
        convert(shapes / split, tmp_path / split, Options(fmt, max_resolution=40), workers=1,
                progress=False, log=lambda *_: None)
    converted_val, image_val = labeled_set(tmp_path / "val"), labeled_set(shapes / "val")
    assert (converted_val.format, converted_val.classes, converted_val.size) == (fmt, image_val.classes, 40)

    frozen = Frozen(load_backbone(random_weights, "resnet18")[0].eval())
    features = [extract_features(frozen, center_crops(data, size=32, resize=32, aug=AugSpec(), batch_size=16,
                                                      device="cpu", workers=1))
                for data in (converted_val, image_val)]
    stored = torch.from_numpy(shuffled_order(image_val.size, 0))  # the dataset order: the shards' shuffle
    assert torch.equal(features[0][1], features[1][1][stored])  # the same images in the same order
    similarity = torch.nn.functional.cosine_similarity(features[0][0], features[1][0][stored])
    assert similarity.min() > 0.9, similarity  # JPEG re-encoding and resizing differ slightly

    result = knn_cli(random_weights, tmp_path, "data.workers=1")  # --train/--val: the converted sets
    assert result["num_train"] == 80 and 0 <= result["top1"] <= 100
    assert probe_cli(random_weights, tmp_path, tmp_path / "probe", "eval.linear.epochs=1",
                     "data.workers=1") == 0
    assert runlog.read(tmp_path / "probe" / "log.jsonl")[0]["train_images"] == 80  # the format's crops


def test_two_probes_with_their_own_out_keep_their_own_results(random_weights, shapes, tmp_path):
    weights = tmp_path / "r18.pth"
    shutil.copy(random_weights, weights)
    flags = ["--cached-features"]
    assert probe_cli(weights, shapes, tmp_path / "lr_a", "eval.linear.epochs=1", flags=flags) == 0
    assert probe_cli(weights, shapes, tmp_path / "lr_b/", "eval.linear.epochs=1", "eval.linear.lr=0.1",
                     flags=flags) == 0
    a, b = (json.loads((tmp_path / f"{name}.json").read_text()) for name in ("lr_a", "lr_b"))
    assert (a["recipe"]["lr"], b["recipe"]["lr"]) == (0.3, 0.1)
    assert not (tmp_path / "r18_linear_cached.json").exists()  # nothing written for a probe not run
