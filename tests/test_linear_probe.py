"""`fastbt eval linear`: what it may do with its --out folder, and what it refuses to train on."""

import pytest
import torch

from fastbt.cli import main
from fastbt.demo.data import make_demo_folder
from fastbt.train.model import build_backbone

EVAL = ["model.arch=resnet18", "eval.size=16", "eval.resize=16", "eval.batch_size=80",
        "runtime.device=cpu", "runtime.precision=fp32", "data.workers=0", "eval.linear.epochs=1"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe")
    make_demo_folder(root / "train", per_class=3, size=24, seed=0)  # 30 images
    make_demo_folder(root / "val", per_class=2, size=24, seed=1)
    torch.manual_seed(0)
    backbone, _ = build_backbone("resnet18")
    torch.save(backbone.state_dict(), root / "backbone.pth")
    return root


def probe(setup, out, *overrides):
    return main(["eval", "linear", "--weights", str(setup / "backbone.pth"), "--train", str(setup / "train"),
                 "--val", str(setup / "val"), "--out", str(out), *EVAL, *overrides])


def one_line(capsys):
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_a_folder_of_the_users_checkpoints_and_log_is_refused_untouched(setup, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    for n in (1, 2, 3):
        torch.save({"model": {"w": torch.ones(n)}, "step": n}, out / f"ckpt_{n}.pt")
    (out / "log.jsonl").write_text('{"step": 1}\n')
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert probe(setup, out, "eval.linear.batch_size=8") == 2
    assert "holds files no linear probe wrote" in one_line(capsys)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_a_foreign_checkpoint_named_as_ours_is_refused_in_one_line(setup, tmp_path, capsys):
    out = tmp_path / "probe"
    out.mkdir()
    torch.save({"model": {}, "step": 5, "config": {}}, out / "ckpt_000000005.pt")  # a pretraining one
    assert probe(setup, out, "eval.linear.batch_size=8") == 2
    assert "no linear probe wrote (ckpt_000000005.pt)" in one_line(capsys)
    assert [p.name for p in out.iterdir()] == ["ckpt_000000005.pt"]


def test_our_own_probe_resumes_and_a_file_added_to_it_is_refused(setup, tmp_path, capsys):
    out = tmp_path / "probe"
    assert probe(setup, out, "eval.linear.batch_size=8") == 0
    assert probe(setup, out, "eval.linear.batch_size=8", "eval.linear.epochs=2") == 2  # other settings
    assert "other settings" in one_line(capsys)
    (out / "notes.txt").write_text("mine")
    assert probe(setup, out, "eval.linear.batch_size=8") == 2
    assert "notes.txt" in one_line(capsys)


def test_fewer_train_images_than_a_batch_is_refused_not_reported_untrained(setup, tmp_path, capsys):
    assert probe(setup, tmp_path / "probe", "eval.linear.batch_size=256") == 2
    err = one_line(capsys)
    assert "eval.linear.batch_size 256 is more than the 30 images" in err
    assert not (tmp_path / "probe").exists()  # nothing trained, nothing written
