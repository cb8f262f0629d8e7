"""Fail loudly when GPUs are present but torch cannot use them (issue 14, item 5)."""

import os
import stat
import subprocess
from pathlib import Path

import pytest
import torch

from fastbt import cli, dist
from fastbt.errors import DeviceError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def gpus_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(dist, "visible_gpus", lambda: (8, "535.104.05"))


def test_gpus_listed_but_cuda_unavailable_names_the_driver_and_the_build(gpus_without_cuda):
    with pytest.raises(DeviceError, match=r"8 GPU\(s\), driver 535.104.05.*CUDA 13.0.*R580"):
        dist.pick_device("auto", 0)
    with pytest.raises(DeviceError):
        dist.pick_device("cuda", 0)
    assert dist.pick_device("cpu", 0) == torch.device("cpu")  # asked for on purpose


def test_cuda_visible_devices_alone_counts_as_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(dist, "visible_gpus", lambda: (0, None))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    with pytest.raises(DeviceError, match="CUDA_VISIBLE_DEVICES=0,1"):
        dist.pick_device("auto", 0)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert dist.pick_device("auto", 0) == torch.device("cpu")


def test_a_machine_without_gpus_trains_on_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(dist, "visible_gpus", lambda: (0, None))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert dist.pick_device("auto", 0) == torch.device("cpu")


def test_the_cli_prints_one_line_and_exits_2(gpus_without_cuda, tmp_path, capsys):
    (tmp_path / "data").mkdir()  # a run directory inside data.path is refused before the device
    rc = cli.main(["pretrain", os.devnull, f"data.path={tmp_path / 'data'}", f"train.out_dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and "R580" in err and "Traceback" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine where CUDA is unusable")
def test_the_launcher_refuses_before_starting_processes(tmp_path):
    fake = tmp_path / "nvidia-smi"  # a driver that lists two GPUs torch cannot use
    fake.write_text("#!/bin/sh\necho 470.82.01\necho 470.82.01\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}", "PYTHONPATH": str(ROOT)}
    out = subprocess.run(["bash", str(ROOT / "scripts" / "pretrain_1node.sh"), os.devnull],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 2
    assert "2 GPU(s), driver 470.82.01" in out.stderr and "torchrun" not in out.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU-only behaviour")
def test_gpu_check_says_so_in_one_line_on_a_cpu_only_machine():
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    out = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "/nonexistent/out"],
                         capture_output=True, text=True, env=env, timeout=120)
    if dist.visible_gpus()[0]:
        pytest.skip("this machine lists GPUs")
    assert out.returncode == 0
    assert out.stdout.count("\n") == 1 and "no CUDA device" in out.stdout and not out.stderr
