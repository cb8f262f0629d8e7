"""Every scripts/bench_*.py runs to its end with tiny sizes (issue 20): a bench that crashes cannot
land again. bench_augment, bench_loss and bench_optim also serve scripts/gpu_check.py's stages
(tests/test_gpu_check.py runs those); bench_pipelines is covered where it is being rewritten."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def bench(name: str, *args: str, timeout: int = 300) -> str:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / f"{name}.py"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done.stdout


def needs(module: str):
    try:
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        found = False
    return pytest.mark.skipif(not found, reason=f"{module} not installed")


def test_bench_loss_counts_the_per_rank_table():  # its timing cases run in gpu_check's loss_op stage
    out = bench("bench_loss", "--per-rank-only", "--global-batch", "64", "--global-dim", "256", "--ranks", "1", "2")
    assert "| 1 | gram |" in out and "FlopCounterMode" in out and "| 2 | direct |" in out


@pytest.mark.slow  # a fresh process per timing case
def test_bench_loss_prints_both_tables():
    out = bench("bench_loss", "--n", "64", "--dims", "256", "--reps", "1", "--threads", "1",
                "--global-batch", "64", "--global-dim", "256", "--ranks", "1")
    assert "| 1 | gram |" in out and "| 256 |" in out  # the per-rank table (W=1 counted), the timing row


def test_bench_augment_runs_every_row():
    out = bench("bench_augment", "--batch", "2", "--size", "32", "--reps", "1", "--threads", "1")
    assert "official PIL path" in out and "batched, eager" in out


@pytest.mark.slow  # compiles LARS; its time_lars runs in gpu_check's lars stage (the dry run)
def test_bench_optim_times_both_optimizers():
    out = bench("bench_optim", "--arch", "resnet18", "--projector", "32", "32", "--reps", "1")
    assert "| eager |" in out and "| compiled |" in out and "eager / compiled" in out


@pytest.mark.slow  # the fast preset's sizes (up to 224 px), three rounds of steps
def test_bench_resolution_prices_the_schedule():
    out = bench("bench_resolution", "--rounds", "1", "--batch", "1")
    assert "configs/fast.yaml" in out


@pytest.mark.slow
@pytest.mark.dist
@needs("ffcv")
@needs("nvidia.dali")
def test_bench_convert_converts_to_both_formats():
    out = bench("bench_convert", "--images", "8", "--size", "64x48", "--workers", "1", "--rq-images", "2",
                "--repeats", "1", "--shard-size", "4")
    assert "| ffcv | 1 |" in out and "| dali | 1 |" in out


@pytest.mark.slow
@pytest.mark.dist
@needs("nvidia.dali")
def test_bench_dali_epochs_times_both_modes():
    out = bench("bench_dali_epochs", "--images", "16", "--batch", "4", "--size", "32", "--workers", "1",
                "--epochs", "1", "--rounds", "1")
    assert "built once" in out and "rebuilt" in out
