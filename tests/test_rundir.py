"""What `fastbt pretrain` does with train.out_dir before it trains (fastbt.train.rundir, fastbt.train.loop's
path checks): a folder it did not make is refused untouched, a run whose checkpoints are gone keeps
its log and config, temporary files of a killed run go, and refusals come before any change."""

import errno
import json
import os
import sys

import pytest

from fastbt import config, dist, runlog
from fastbt.cli import main
from fastbt.errors import RunDirError
from fastbt.train import rundir

import torch

REPO_TESTS = os.path.dirname(os.path.abspath(__file__))
TINY = [f"data.path={REPO_TESTS}", "data.backend=torchvision", "data.workers=0", "model.arch=resnet18",
        "model.projector=[64,64]", "aug.size=32", "train.batch_size=16", "logging.progress_bar=false",
        "runtime.device=cpu", "runtime.compile=false", "runtime.precision=fp32"]
ONE = dist.World(rank=0, local_rank=0, size=1, device=torch.device("cpu"))


def tiny(run_dir, *extra):
    return config.load(None, [*TINY, f"train.out_dir={run_dir}", *extra])


def everything(folder):
    """Every file under `folder` (names relative to it) with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def one_line_error(capsys, argv):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def finished_run(run_dir, cfg, backbone=True):
    """A run as it ends, then its checkpoints deleted by hand: config.yaml, log.jsonl, backbone.pth."""
    with rundir.exclusive(run_dir, ONE):
        pass
    config.save(cfg, run_dir / "config.yaml")
    (run_dir / "log.jsonl").write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n"
                                               for s in range(1, 6)))
    if backbone:
        (run_dir / "backbone.pth").write_bytes(b"weights")
    return run_dir


def test_a_folder_of_the_users_own_files_is_refused_and_left_untouched(tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "log.jsonl").write_text('{"step": 1, "loss": 3.0}\n')
    (mine / "config.yaml").write_text("train: {epochs: 3}\n")
    (mine / "backbone.pth").write_bytes(b"my weights")
    before = everything(mine)
    assert main(["pretrain", os.devnull, *TINY, f"train.out_dir={mine}"]) == 2
    assert everything(mine) == before  # not even a lock file
    err = capsys.readouterr().err
    assert err == f"fastbt pretrain: error: train.out_dir {mine} holds files no fastbt run wrote " \
                  "(backbone.pth, config.yaml, log.jsonl); a run would replace them: choose another " \
                  "train.out_dir (an empty or new folder)\n"


def test_a_new_or_empty_folder_becomes_a_run_directory(tmp_path):
    for run_dir in (tmp_path / "new", tmp_path / "empty"):
        (tmp_path / "empty").mkdir(exist_ok=True)
        with rundir.exclusive(run_dir, ONE):
            assert rundir.prepare(run_dir, tiny(run_dir), ONE) is None
        assert rundir.made_by_fastbt(run_dir)


def test_a_run_whose_checkpoints_were_deleted_refuses_another_config_and_keeps_its_files(tmp_path,
                                                                                        capsys):
    run_dir = finished_run(tmp_path / "run", tiny(tmp_path / "run"), backbone=False)
    before = everything(run_dir)
    assert main(["pretrain", os.devnull, *TINY, f"train.out_dir={run_dir}", "train.epochs=7"]) == 2
    assert everything(run_dir) == {**before, ".lock": everything(run_dir)[".lock"]}
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"{run_dir} holds a run made with another config (train.epochs: 1000 -> 7)" in err
    with pytest.raises(RunDirError, match="another config"):  # forcing has nothing to resume
        rundir.prepare(run_dir, tiny(run_dir, "train.epochs=7", "train.resume=force"), ONE)


def test_a_finished_run_without_checkpoints_is_not_wiped_by_a_rerun(tmp_path):
    run_dir = finished_run(tmp_path / "run", tiny(tmp_path / "run"))
    before = everything(run_dir)
    with pytest.raises(RunDirError, match=r"holds a finished run \(backbone.pth\) but no checkpoint "
                                          r"to resume; add train.resume=restart"):
        rundir.prepare(run_dir, tiny(run_dir), ONE)
    assert everything(run_dir) == before
    assert rundir.prepare(run_dir, tiny(run_dir, "train.resume=restart"), ONE) is None
    (aside,) = run_dir.glob("previous-*")
    assert sorted(p.name for p in aside.iterdir()) == ["backbone.pth", "config.yaml", "log.jsonl"]


def test_a_run_killed_before_its_first_checkpoint_starts_over_with_the_same_config(tmp_path):
    run_dir = finished_run(tmp_path / "run", tiny(tmp_path / "run"), backbone=False)
    assert rundir.prepare(run_dir, tiny(run_dir), ONE) is None
    assert runlog.read(run_dir / "log.jsonl") == []  # its steps are trained and logged again


def test_temporary_files_a_killed_run_left_are_removed_at_start(tmp_path):
    run_dir = finished_run(tmp_path / "run", tiny(tmp_path / "run"), backbone=False)
    ours = [".ckpt_000000003.pt.tmp", ".log.jsonl.tmp", "config.yaml.tmp", ".backbone.pth.tmp",
            ".curves.png.tmp.png"]
    for name in [*ours, ".notes.tmp", "ckpt_3.pt.tmp.keep"]:
        (run_dir / name).write_bytes(b"partial")
    with rundir.exclusive(run_dir, ONE):
        rundir.prepare(run_dir, tiny(run_dir), ONE)
    left = {p.name for p in run_dir.iterdir()}
    assert not left & set(ours) and {".notes.tmp", "ckpt_3.pt.tmp.keep"} <= left


def test_restart_checks_data_path_before_moving_the_previous_run(tmp_path, capsys):
    run_dir = finished_run(tmp_path / "run", tiny(tmp_path / "run"))
    before = everything(run_dir)
    assert main(["pretrain", os.devnull, *TINY, f"train.out_dir={run_dir}",
                 f"data.path={tmp_path / 'missing'}", "train.resume=restart"]) == 2
    assert everything(run_dir) == before
    assert capsys.readouterr().err.count("\n") == 1


def test_a_refused_tensorboard_start_leaves_config_yaml_alone(tmp_path, capsys, monkeypatch):
    run_dir = finished_run(tmp_path / "run", tiny(tmp_path / "run"), backbone=False)
    before = everything(run_dir)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # not installed
    assert main(["pretrain", os.devnull, *TINY, f"train.out_dir={run_dir}",
                 "logging.tensorboard=true"]) == 2
    assert everything(run_dir) == before
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "tensorboard package is not installed" in err


@pytest.mark.parametrize("through_link", [False, True], ids=["path", "symlink"])
def test_an_out_dir_inside_data_path_is_refused(tmp_path, capsys, through_link):
    data = tmp_path / "data"
    (data / "cls").mkdir(parents=True)
    (tmp_path / "link").symlink_to(data)
    out = (tmp_path / "link" if through_link else data) / "run"
    assert main(["pretrain", os.devnull, *TINY, f"data.path={data}", f"train.out_dir={out}"]) == 2
    assert sorted(p.name for p in data.iterdir()) == ["cls"]
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"train.out_dir {out} is inside data.path {data}" in err


# ---- a full disk, a read-only run directory

@pytest.fixture
def small_tmpfs(tmpfs):
    return tmpfs("64k")  # conftest's tmpfs fixture: mounted, skipped where not allowed, unmounted after


def fill(folder):
    """Fill the filesystem of `folder` to the last byte."""
    with open(folder / "filler", "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError as err:
            assert err.errno == errno.ENOSPC


def test_a_full_disk_when_the_lock_is_written_is_one_line(small_tmpfs, capsys):
    fill(small_tmpfs)
    err = one_line_error(capsys, ["pretrain", os.devnull, *TINY, f"train.out_dir={small_tmpfs / 'run'}"])
    assert f"cannot write {small_tmpfs / 'run' / '.lock'}: No space left on device" in err


def test_a_full_disk_while_logging_is_one_line(small_tmpfs):
    log = runlog.RunLog(small_tmpfs / "log.jsonl")
    log.write({"step": 1, "loss": 2.0})
    fill(small_tmpfs)
    with pytest.raises(RunDirError, match=f"cannot write {small_tmpfs / 'log.jsonl'}: No space left "
                                          "on device; the checkpoints are intact"):
        log.write({"step": 2, "loss": 1.0, "pad": "x" * 8192})


def test_resuming_in_a_read_only_run_directory_is_one_line(tmp_path, capsys, monkeypatch):
    run_dir = finished_run(tmp_path / "run", tiny(tmp_path / "run"), backbone=False)

    def read_only(*args, **kwargs):  # root ignores permissions: what a read-only folder gives
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(config, "save", read_only)
    err = one_line_error(capsys, ["pretrain", os.devnull, *TINY, f"train.out_dir={run_dir}"])
    assert f"cannot write in the run directory {run_dir}: Permission denied" in err
