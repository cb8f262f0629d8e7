"""Refusals under torchrun (fastbt.launch, fastbt.cli): one line from rank 0 and exit status 2, not
torchrun's ChildFailedError traceback; other failures still reported as torchrun reports them. And
no deprecation warnings from fastbt's DDP and global-BN calls."""

import os
import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

from fastbt import launch
from fastbt.cli import main
from fastbt.errors import DeviceError

import distributed


def failure(exitcode, timestamp):
    found = ProcessFailure(local_rank=0, pid=1, exitcode=exitcode, error_file="<N/A>")
    found.timestamp = timestamp
    return found


@pytest.mark.parametrize("codes, expected", [
    ({0: 2, 1: -15}, True),  # rank 0 refused, torchrun stopped rank 1
    ({0: 2, 1: 2}, True),
    ({0: 1, 1: 2}, False),  # the first failure was not a refusal
    ({0: 2, 1: -9}, False),
    ({0: -11}, False),
])
def test_refused_means_the_first_failure_exited_2_and_the_rest_were_stopped(codes, expected):
    err = ChildFailedError("fastbt", {rank: failure(code, rank) for rank, code in codes.items()})
    assert launch.refused(err) == expected


def test_only_rank_0_prints_a_refusal_every_rank_shares(monkeypatch, capsys):
    monkeypatch.setenv("RANK", "1")
    assert main(["pretrain", os.devnull, "bogus.key=1"]) == 2
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("RANK", "0")
    assert main(["pretrain", os.devnull, "bogus.key=1"]) == 2
    assert capsys.readouterr().err.startswith("fastbt pretrain: error: unknown config key 'bogus'")


def test_a_problem_of_one_rank_alone_is_printed_by_that_rank(monkeypatch, capsys):
    def gpu_missing(cfg):
        raise DeviceError("no GPU 1 here")

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setattr("fastbt.loop.pretrain", gpu_missing)
    assert main(["pretrain", os.devnull]) == 2
    assert capsys.readouterr().err == "fastbt pretrain: error: no GPU 1 here\n"


def launched(*args):
    return subprocess.run([sys.executable, "-m", "fastbt.launch", "--standalone", "--nproc_per_node=2",
                           *args], capture_output=True, text=True, timeout=400)


@pytest.mark.dist
@pytest.mark.slow  # two interpreters importing torch under torchrun: ~1-2 min here
@pytest.mark.timeout(900)
def test_a_refusal_under_the_launcher_is_one_line_and_exit_2(tmp_path):
    result = launched("-m", "fastbt.cli", "pretrain", os.devnull, "bogus.key=1")
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert output.count("\n") == 1 and "fastbt pretrain: error: unknown config key 'bogus'" in output
    script = tmp_path / "exit3.py"
    script.write_text("import sys; sys.exit(3)\n")
    result = launched(str(script))  # not a refusal: torchrun's own report, status 1
    assert result.returncode == 1 and "ChildFailedError" in result.stderr
    assert "failed (exitcode: 3)" in result.stderr


def ddp_step_warnings(rank, world_size):
    from fastbt.norm import use_global_batch_norm
    from fastbt.run import wrap_ddp

    torch.manual_seed(0)
    model = use_global_batch_norm(nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)),
                                  torch.device("cpu"), torch.distributed.group.WORLD)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ddp = wrap_ddp(model)  # kept: its backward hook refers to it
        ddp(torch.randn(8, 4)).sum().backward()
    return [f"{w.category.__name__} {w.filename}:{w.lineno}: {w.message}" for w in caught
            if issubclass(w.category, (FutureWarning, DeprecationWarning))]


@pytest.mark.dist
@pytest.mark.slow  # two processes importing torch: ~1.5 min here
@pytest.mark.timeout(300)
def test_ddp_and_global_batch_norm_use_no_deprecated_api():
    assert distributed.run(ddp_step_warnings, 2) == [[], []]
