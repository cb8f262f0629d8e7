"""How a pretraining run stops (fastbt.train.loop): weights or buffers that turn non-finite while the loss
is still finite, Ctrl-C, a disk that fills while logging. Each keeps a good checkpoint and says so
in one line."""

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import matplotlib.figure
import pytest
import torch

from fastbt import runlog
from fastbt.cli import main
from fastbt.train import checkpoint, loop
from fastbt.train.step import TrainStep


def poison_after_step_3(monkeypatch, name):
    """From step 3 on, `name` (a weight or a buffer of the model) holds inf; the loss of step 3 was
    computed before, so it is finite."""
    real_call = TrainStep.__call__
    calls = {"n": 0}

    def call(self, view1, view2, *clock):
        loss = real_call(self, view1, view2, *clock)
        calls["n"] += 1
        if calls["n"] == 3:
            tensors = dict(self.model.named_parameters()) | dict(self.model.named_buffers())
            with torch.no_grad():
                tensors[name].fill_(float("inf"))
        return loss

    monkeypatch.setattr(TrainStep, "__call__", call)


@pytest.mark.parametrize("name", ["backbone.bn1.running_var", "backbone.conv1.weight"],
                         ids=["buffer", "weight"])
def test_non_finite_weights_or_buffers_are_never_checkpointed(images, tiny_config, tmp_path,
                                                             monkeypatch, name):
    poison_after_step_3(monkeypatch, name)
    cfg = tiny_config(images, tmp_path / "run", "train.epochs=1", "train.checkpoint_every_steps=1")
    with pytest.raises(loop.NonFiniteLoss, match=rf"{name} became non-finite by step 3; stopping \(the "
                                                  r"last good checkpoint is .*ckpt_000000002.pt\)"):
        loop.pretrain(cfg)
    assert [p.name for p in checkpoint.checkpoints(tmp_path / "run")] == ["ckpt_000000002.pt",
                                                                         "ckpt_000000001.pt"]
    assert checkpoint.diverged(checkpoint.load_latest(tmp_path / "run")["model"]) is None


@pytest.mark.slow  # ~2 min here: a fresh interpreter, imports and a run under load
@pytest.mark.timeout(420)
def test_ctrl_c_writes_a_checkpoint_and_exits_like_a_preemption(images, tiny, tmp_path):
    run_dir = tmp_path / "interrupted"
    args = [*tiny, f"data.path={images}", f"train.out_dir={run_dir}", "train.epochs=50"]
    # a background job of a non-interactive shell starts with SIGINT ignored: a terminal's does not
    proc = subprocess.Popen([sys.executable, "-m", "fastbt.cli", "pretrain", os.devnull, *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        log = run_dir / "log.jsonl"
        deadline = time.monotonic() + 180
        while not (log.exists() and log.read_text().count("\n") >= 2):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0]
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=180)
    finally:
        proc.kill()
    assert proc.returncode == 0, out
    assert "Traceback" not in out and "fastbt: interrupted (Ctrl-C" in out, out
    saved = checkpoint.load_latest(run_dir)
    assert saved is not None and 2 <= saved["step"] < 250


def test_a_full_disk_while_logging_stops_in_one_line_and_keeps_the_checkpoint(images, tiny, tmp_path,
                                                                             monkeypatch, capsys):
    run_dir = tmp_path / "run"
    appends = {"n": 0}

    def full_at_the_fourth_record(path, mode="r", *args, **kwargs):
        if mode == "a" and Path(path).name == "log.jsonl":
            appends["n"] += 1
            if appends["n"] == 4:
                raise OSError(errno.ENOSPC, "No space left on device")
        return open(path, mode, *args, **kwargs)

    monkeypatch.setattr(runlog, "open", full_at_the_fourth_record, raising=False)

    def full(*args, **kwargs):  # the picture drawn at exit finds the disk full too
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", full)
    assert main(["pretrain", os.devnull, *tiny, f"data.path={images}", f"train.out_dir={run_dir}",
                 "train.epochs=1", "train.checkpoint_every_steps=2"]) == 2
    err = capsys.readouterr().err
    assert err == f"fastbt pretrain: error: cannot write {run_dir / 'log.jsonl'}: No space left on " \
                  "device; the checkpoints are intact: fix it and rerun to resume\n"
    assert checkpoint.load_latest(run_dir)["step"] == 2
