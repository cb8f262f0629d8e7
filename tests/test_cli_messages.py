"""Leftovers of issue 21: messages that name the wrong thing or take two lines, and a path form
`fastbt plot` refused."""

import json
import os
import subprocess
import sys

import pytest

from fastbt import config, demo
from fastbt.cli import main
from fastbt.train import checkpoint
from fastbt.train.model import build_model
from fastbt.train.optim import build_optimizer
from pipelines.errors import DataError


def one_line_error(capsys, argv):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


def test_inspect_of_a_json_that_is_not_a_dataset_names_that_file(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notrep.json").write_text('{"a": 1}')
    err = one_line_error(capsys, ["inspect", "notrep.json"])
    assert err.startswith("fastbt inspect: error: notrep.json: not a fastbt dataset") and " . " not in err


def test_plot_accepts_the_log_file_as_well_as_the_run_directory(tmp_path, capsys):
    run_dir = tmp_path / "r1"
    run_dir.mkdir()
    (run_dir / "log.jsonl").write_text(json.dumps({"step": 1, "loss": 2.0, "lr": 0.1}) + "\n")
    assert main(["plot", str(run_dir / "log.jsonl")]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {run_dir / 'curves.png'}"
    assert (run_dir / "curves.png").stat().st_size > 0


def test_fresh_demo_out_through_a_symlink_names_the_link_and_its_target(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "real/notes.txt").write_text("mine")
    (tmp_path / "projlink").symlink_to(tmp_path / "real")
    with pytest.raises(DataError) as err:
        demo.clear(tmp_path / "projlink")
    assert str(err.value).startswith(f"{tmp_path / 'projlink'} is a symbolic link to {tmp_path / 'real'}, ")
    assert "holds" not in str(err.value)
    assert (tmp_path / "real/notes.txt").read_text() == "mine"


def test_a_skipped_checkpoint_is_reported_in_one_line(tmp_path):
    """Python's warning format echoes the warning's source line on a second line."""
    run_dir = tmp_path / "run"
    tiny = ["data.backend=torchvision", "model.arch=resnet18", "model.projector=[32,32]",
            "runtime.device=cpu", f"data.path={tmp_path / 'data'}", f"train.out_dir={run_dir}"]
    cfg = config.load(None, tiny)
    model = build_model("resnet18", [32, 32], channels_last=False)
    optimizer = build_optimizer(model, 1e-6, 0.9, 0.001)
    run_dir.mkdir()
    (tmp_path / "data").mkdir()
    (run_dir / ".fastbt-run").write_text("")
    config.save(cfg, run_dir / "config.yaml")
    for step in (3, 6):
        checkpoint.save_run(run_dir, step, model, optimizer, 5, cfg)
    (run_dir / "ckpt_000000006.pt").write_bytes(b"torn")
    # a changed batch size: refused right after the damaged checkpoint is skipped, before training
    proc = subprocess.run([sys.executable, "-m", "fastbt.cli", "pretrain", os.devnull, *tiny,
                           "train.batch_size=32"], capture_output=True, text=True, timeout=300)
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 2, proc.stderr
    assert lines[0].startswith(f"fastbt: warning: checkpoint {run_dir / 'ckpt_000000006.pt'} is unreadable")
    assert lines[1].startswith("fastbt pretrain: error: ")
