"""A run directory under hostile use: two runs at once, a changed config on resume, a full disk,
unreadable checkpoints, a log with replayed steps, another command writing into it. And what
`fastbt pretrain` does with train.out_dir before it trains (fastbt.train.rundir, fastbt.train.loop's
path checks): a folder it did not make is refused untouched, a run whose checkpoints are gone keeps
its log and config, temporary files of a killed run go, and refusals come before any change."""

import errno
import functools
import json
import os
import signal
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch

from fastbt import config, dist, runlog
from fastbt.cli import main
from fastbt.errors import RunDirError
from fastbt.train import checkpoint, loop, rundir
from fastbt.train.model import build_model
from fastbt.train.optim import build_optimizer

import distributed

REPO = Path(__file__).resolve().parents[1]
TINY = [f"data.path={REPO / 'tests'}",  # exists (checked first); the refusals come before loading
        "data.backend=torchvision", "data.workers=0", "model.arch=resnet18", "model.projector=[64,64]",
        "aug.size=32", "train.batch_size=16", "optim.warmup_epochs=0", "logging.every_steps=1",
        "logging.progress_bar=false", "runtime.device=cpu", "runtime.compile=false",
        "runtime.precision=fp32"]
ONE = dist.World(rank=0, local_rank=0, size=1, device=torch.device("cpu"))


def tiny(run_dir, *extra):
    return config.load(None, [*TINY, f"train.out_dir={run_dir}", *extra])


@functools.lru_cache(maxsize=None)
def model_and_optimizer(projector):
    """The run's real model and optimizer (what save_run writes and resume_run loads)."""
    model = build_model("resnet18", projector, channels_last=False)
    return model, build_optimizer(model, 1e-6, 0.9, 0.001)


def fake_run(run_dir, cfg, steps=(3, 6), logged=9):
    """A run directory as a killed run leaves it: made by a run (its lock), real checkpoints
    (save_run) at `steps`, log records up to `logged` and a line torn by the kill."""
    with rundir.exclusive(run_dir, ONE):
        pass
    model, optimizer = model_and_optimizer(tuple(cfg.model.projector))
    for step in steps:
        checkpoint.save_run(run_dir, step, model, optimizer, 5, cfg)
    config.save(cfg, run_dir / "config.yaml")
    lines = [json.dumps({"step": s, "loss": 1.0}) for s in range(1, logged + 1)]
    (run_dir / "log.jsonl").write_text("\n".join(lines) + '\n{"step": 10, "lo')
    return run_dir


def snapshot(run_dir):
    return {p.name: p.read_bytes() for p in sorted(run_dir.iterdir()) if p.is_file() and p.name not in (".lock", rundir.MARKER)}


def everything(folder):
    """Every file under `folder` (names relative to it) with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def one_line_error(capsys, argv):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


# ---------------------------------------------------------------------------------------------
# 4. One run per directory.


def test_a_second_run_into_the_same_directory_exits_2_naming_it_and_the_holder(tmp_path, capsys):
    run_dir = tmp_path / "run"
    with rundir.exclusive(run_dir, ONE):
        err = one_line_error(capsys, ["pretrain", os.devnull, *TINY, f"train.out_dir={run_dir}"])
        assert f"{run_dir} is in use by another fastbt run (PID {os.getpid()} on " in err
    with rundir.exclusive(run_dir, ONE):  # released at the end of the first
        pass


HOLD = textwrap.dedent("""
    import sys, time, torch
    from fastbt import dist
    from fastbt.train import rundir
    with rundir.exclusive(sys.argv[1], dist.World(0, 0, 1, torch.device("cpu"))):
        print("locked", flush=True)
        time.sleep(600)
""")


def test_a_killed_run_leaves_no_stale_lock(tmp_path):
    run_dir = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert holder.stdout.readline() == "locked\n"
        with pytest.raises(RunDirError, match=f"in use by another fastbt run \\(PID {holder.pid} on "):
            with rundir.exclusive(run_dir, ONE):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=60)
    with rundir.exclusive(run_dir, ONE):  # the OS released the dead holder's lock
        assert (run_dir / ".lock").read_text().startswith(f"PID {os.getpid()} on ")


def claim(rank, world_size, run_dir):
    world = dist.World(rank, rank, world_size, torch.device("cpu"))
    try:
        with rundir.exclusive(run_dir, world):
            return "trained"
    except RunDirError as err:
        return str(err)


@pytest.mark.dist
@pytest.mark.timeout(180)
def test_under_torchrun_a_refusal_on_rank_0_stops_every_rank(tmp_path):
    run_dir = tmp_path / "run"
    with rundir.exclusive(run_dir, ONE):
        results = distributed.run(claim, 2, run_dir)
    assert all(f"in use by another fastbt run (PID {os.getpid()} on " in r for r in results), results
    # (the agreed success is test_loop's two-process run, which goes through the same lock)


# ---------------------------------------------------------------------------------------------
# 5. Resume only the run this config made.


def test_resume_refuses_another_config_listing_the_keys_and_changes_nothing(tmp_path, capsys):
    run_dir = fake_run(tmp_path / "run", tiny(tmp_path / "run"))
    before = snapshot(run_dir)
    with pytest.raises(RunDirError) as err:
        rundir.prepare(run_dir, tiny(run_dir, "train.epochs=5", "train.batch_size=32"), ONE)
    assert f"{run_dir} holds a run made with another config (train.batch_size: 16 -> 32, " \
           "train.epochs: 1000 -> 5); rerun with its config" in str(err.value)
    assert "train.resume=force" in str(err.value) and "train.resume=restart" in str(err.value)
    assert snapshot(run_dir) == before
    err = one_line_error(capsys, ["pretrain", os.devnull, *TINY, f"train.out_dir={run_dir}",
                                  "optim.lr_weights=1.5"])
    assert "another config (optim.lr_weights: 0.2 -> 1.5)" in err and snapshot(run_dir) == before


def test_keys_that_do_not_change_the_computation_may_change_on_resume(tmp_path):
    run_dir = fake_run(tmp_path / "run", tiny(tmp_path / "run"))
    cfg = tiny(run_dir, "logging.every_steps=7", "data.workers=3", "train.checkpoint_every_steps=2",
               "runtime.compile=true", "eval.knn.every_epochs=1", "profile.steps=3")
    path = rundir.prepare(run_dir, cfg, ONE)
    assert path == str(run_dir / "ckpt_000000006.pt")
    assert config.load(run_dir / "config.yaml") == cfg  # the new values are the run's now
    saved, _ = model_and_optimizer((64, 64))
    model = build_model("resnet18", (64, 64), channels_last=False)
    assert checkpoint.resume_run(path, model, build_optimizer(model, 1e-6, 0.9, 0.001)) == 6
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), saved.state_dict().values()))


def test_force_resumes_with_the_new_values_but_not_with_another_model(tmp_path, capsys):
    run_dir = fake_run(tmp_path / "run", tiny(tmp_path / "run"))
    cfg = tiny(run_dir, "train.epochs=5", "train.resume=force")
    assert rundir.prepare(run_dir, cfg, ONE) == str(run_dir / "ckpt_000000006.pt")
    assert "resuming" in capsys.readouterr().out
    assert config.load(run_dir / "config.yaml").train.resume == "auto"  # rerunning it never forces
    with pytest.raises(RunDirError, match=r"holds a run of another model \(model.projector: \[64, 64\] -> "
                                          r"\[32, 32\]\).*train.resume=restart"):
        rundir.prepare(run_dir, tiny(run_dir, "model.projector=[32,32]", "train.resume=force"), ONE)


def test_restart_sets_the_previous_run_aside_and_starts_at_step_0(tmp_path):
    run_dir = fake_run(tmp_path / "run", tiny(tmp_path / "run"))
    (run_dir / "backbone.pth").write_bytes(b"weights")
    before = snapshot(run_dir)
    cfg = tiny(run_dir, "model.projector=[32,32]", "train.resume=restart")
    assert rundir.prepare(run_dir, cfg, ONE) is None
    (aside,) = run_dir.glob("previous-*")
    assert snapshot(aside) == before  # moved, not lost
    assert checkpoint.checkpoints(run_dir) == [] and not (run_dir / "log.jsonl").exists()
    assert config.load(run_dir / "config.yaml").model.projector == (32, 32)


# ---------------------------------------------------------------------------------------------
# 16. Unreadable checkpoints, replayed log records.


def test_when_no_checkpoint_can_be_read_the_run_stops_unless_told_to_restart(tmp_path, capsys):
    run_dir = fake_run(tmp_path / "run", tiny(tmp_path / "run"))
    for path in checkpoint.checkpoints(run_dir):
        path.write_bytes(path.read_bytes()[:100])
    before = snapshot(run_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the one line is the whole message: no warnings besides
        err = one_line_error(capsys, ["pretrain", os.devnull, *TINY, f"train.out_dir={run_dir}"])
    assert f"none of the 2 checkpoint(s) in {run_dir} can be read (newest: ckpt_000000006.pt); add " \
           "train.resume=restart to start over from step 0" in err
    assert snapshot(run_dir) == before
    assert rundir.prepare(run_dir, tiny(run_dir, "train.resume=restart"), ONE) is None
    (aside,) = run_dir.glob("previous-*")
    assert sorted(p.name for p in aside.iterdir()) == ["ckpt_000000003.pt", "ckpt_000000006.pt",
                                                       "config.yaml", "log.jsonl"]


def test_resuming_drops_the_log_records_past_the_resumed_step(tmp_path):
    run_dir = fake_run(tmp_path / "run", tiny(tmp_path / "run"))
    newest = checkpoint.checkpoints(run_dir)[0]
    newest.write_bytes(newest.read_bytes()[:100])
    with pytest.warns(UserWarning, match="ckpt_000000006.pt is unreadable"):
        assert rundir.prepare(run_dir, tiny(run_dir), ONE) == str(run_dir / "ckpt_000000003.pt")
    assert [r["step"] for r in runlog.read(run_dir / "log.jsonl")] == [1, 2, 3]
    assert not list(run_dir.glob(".*tmp"))
    fake_run(run_dir, tiny(run_dir))
    rundir.prepare(run_dir, tiny(run_dir), ONE)
    assert [r["step"] for r in runlog.read(run_dir / "log.jsonl")] == [1, 2, 3, 4, 5, 6]
    assert not list(run_dir.glob(".*tmp"))


class Crash(Exception):
    pass


def test_a_killed_and_resumed_run_logs_each_step_once(images, tmp_path, monkeypatch):
    cfg = tiny(tmp_path / "run", f"data.path={images}", "train.epochs=2", "train.checkpoint_every_steps=3")
    real_write = runlog.RunLog.write

    def killed_before_logging_step_8(self, record):
        if record["step"] == 8:
            raise Crash()
        real_write(self, record)

    monkeypatch.setattr(runlog.RunLog, "write", killed_before_logging_step_8)
    with pytest.raises(Crash):
        loop.pretrain(cfg)
    assert [r["step"] for r in runlog.read(tmp_path / "run" / "log.jsonl")] == list(range(1, 8))
    monkeypatch.setattr(runlog.RunLog, "write", real_write)
    loop.pretrain(cfg)  # resumes at step 6
    assert [r["step"] for r in runlog.read(tmp_path / "run" / "log.jsonl")] == list(range(1, 11))


# ---------------------------------------------------------------------------------------------
# 6. A full disk while writing a checkpoint.


def test_disk_full_during_a_checkpoint_write_is_one_error_and_keeps_the_previous(tmp_path, monkeypatch):
    checkpoint.save(tmp_path, 1, {"step": 1, "w": torch.ones(3)})
    real_save = torch.save

    def full(obj, f):  # what torch.save does on ENOSPC: a RuntimeError raised while handling it
        f.write(b"partial")
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(RunDirError, match=f"^no space left on device while writing {tmp_path}/"
                                          r"ckpt_000000002.pt \(\d+ MB free there\): free some space"):
        checkpoint.save(tmp_path, 2, {"step": 2, "w": torch.ones(3)})
    monkeypatch.setattr(torch, "save", real_save)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt_000000001.pt"]
    assert checkpoint.load_latest(tmp_path)["step"] == 1


def test_a_pretraining_run_stops_in_one_line_when_the_disk_fills(images, tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    real_save = torch.save
    calls = {"n": 0}

    def full_at_the_second_checkpoint(obj, f):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(obj, f)

    monkeypatch.setattr(torch, "save", full_at_the_second_checkpoint)
    err = one_line_error(capsys, ["pretrain", os.devnull, *TINY, f"data.path={images}",
                                  f"train.out_dir={run_dir}", "train.checkpoint_every_steps=2"])
    assert err.startswith(f"fastbt pretrain: error: no space left on device while writing "
                          f"{run_dir}/ckpt_000000004.pt (")
    assert [p.name for p in checkpoint.checkpoints(run_dir)] == ["ckpt_000000002.pt"]
    assert checkpoint.load_latest(run_dir)["step"] == 2


@pytest.fixture
def small_tmpfs(tmpfs):
    return tmpfs("1m")  # conftest's tmpfs fixture: mounted, skipped where not allowed, unmounted after


def test_a_really_full_tmpfs_gives_the_same_error(small_tmpfs):
    checkpoint.save(small_tmpfs, 1, {"step": 1, "w": torch.ones(1000)})
    with pytest.raises(RunDirError, match=r"^no space left on device while writing .*ckpt_000000002.pt"):
        checkpoint.save(small_tmpfs, 2, {"step": 2, "w": torch.ones(1_000_000)})  # 4 MB
    assert [p.name for p in small_tmpfs.iterdir()] == ["ckpt_000000001.pt"]
    assert torch.equal(checkpoint.load_latest(small_tmpfs)["w"], torch.ones(1000))


# ---------------------------------------------------------------------------------------------
# 15. Other commands do not write into a run directory.


def test_eval_linear_refuses_to_write_into_a_pretraining_run(tmp_path, capsys):
    run_dir = fake_run(tmp_path / "run", tiny(tmp_path / "run"))
    with rundir.exclusive(run_dir, ONE):
        pass  # as every pretraining run leaves it: with a .lock
    before = snapshot(run_dir)
    err = one_line_error(capsys, ["eval", "linear", "--weights", str(run_dir / "ckpt_000000006.pt"),
                                  "--train", str(tmp_path), "--val", str(tmp_path), "--out", str(run_dir)])
    assert f"{run_dir} is a pretraining run directory; the linear probe would overwrite" in err
    assert snapshot(run_dir) == before


# ---------------------------------------------------------------------------------------------
# Before training: what pretrain does with train.out_dir (formerly tests/test_rundir.py).


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
def tiny_tmpfs(tmpfs):
    return tmpfs("64k")  # conftest's tmpfs fixture: mounted, skipped where not allowed, unmounted after


def fill(folder):
    """Fill the filesystem of `folder` to the last byte."""
    with open(folder / "filler", "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError as err:
            assert err.errno == errno.ENOSPC


def test_a_full_disk_when_the_lock_is_written_is_one_line(tiny_tmpfs, capsys):
    fill(tiny_tmpfs)
    err = one_line_error(capsys, ["pretrain", os.devnull, *TINY, f"train.out_dir={tiny_tmpfs / 'run'}"])
    assert f"cannot write {tiny_tmpfs / 'run' / '.lock'}: No space left on device" in err


def test_a_full_disk_while_logging_is_one_line(tiny_tmpfs):
    log = runlog.RunLog(tiny_tmpfs / "log.jsonl")
    log.write({"step": 1, "loss": 2.0})
    fill(tiny_tmpfs)
    with pytest.raises(RunDirError, match=f"cannot write {tiny_tmpfs / 'log.jsonl'}: No space left "
                                          "on device; the checkpoints are intact"):
        log.write({"step": 2, "loss": 1.0, "pad": "x" * 8192})


def test_resuming_in_a_read_only_run_directory_is_one_line(tmp_path, capsys, monkeypatch):
    run_dir = finished_run(tmp_path / "run", tiny(tmp_path / "run"), backbone=False)

    def read_only(*args, **kwargs):  # root ignores permissions: what a read-only folder gives
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(config, "save", read_only)
    err = one_line_error(capsys, ["pretrain", os.devnull, *TINY, f"train.out_dir={run_dir}"])
    assert f"cannot write in the run directory {run_dir}: Permission denied" in err
