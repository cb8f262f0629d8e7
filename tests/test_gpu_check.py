"""scripts/gpu_check.sh (issue 20, item 1): the dry run on a copy of the checkout as the GPU machine
gets it (no .venv, python3 on PATH), which Python it picks, and a deadline that holds when a stage
hangs."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MAX_FILES, MAX_FILE_BYTES = 8, 16 << 20  # what comes back from the GPU machine's $OUT


def _copy_checkout(dest: Path) -> Path:
    """Tracked and untracked, not ignored files: what the device machine receives (no .venv)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=ROOT, capture_output=True, text=True, check=True).stdout
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    assert not (dest / ".venv").exists()
    return dest


def _python_on_path(bin_dir: Path, marker: Path, target: str = sys.executable) -> dict:
    """A `python3` on PATH that notes its use in `marker` and runs `target`; the environment."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    stub = bin_dir / "python3"
    stub.write_text(f'#!/bin/sh\necho "$@" >> "{marker}"\nexec "{target}" "$@"\n')
    stub.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "OUT", "GPU_CHECK_DEADLINE")}
    return {**env, "PATH": f"{bin_dir}:/usr/bin:/bin"}


@pytest.mark.dist  # spawns its worker, DataLoader workers and pytest
def test_the_dry_run_on_a_copy_without_venv_records_every_stage(tmp_path):
    checkout = _copy_checkout(tmp_path / "checkout")
    marker, out = tmp_path / "python3_used", tmp_path / "out"
    # the GPU run's own deadline (480 s): the dry run compiles with aot_eager (gpu_stages.DRY), all
    # 11 stages took 4.5 min at load 7 on 2 cores
    env = _python_on_path(tmp_path / "bin", marker)
    began = time.monotonic()
    done = subprocess.run(["bash", "scripts/gpu_check.sh", "--dry-run", str(out)], cwd=checkout, env=env,
                          capture_output=True, text=True, timeout=900)
    seconds = time.monotonic() - began
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "scripts/gpu_check.py --dry-run" in marker.read_text()  # python3: there is no .venv

    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    statuses = {r["stage"]: r["status"] for r in records}
    assert len(records) >= 5 and set(statuses.values()) <= {"ok", "skipped"}, statuses
    assert list(statuses)[:4] == ["env", "smoke", "step_eager", "step_compiled"]
    assert all(isinstance(r["seconds"], (int, float)) for r in records)
    env_stage = records[0]
    assert Path(env_stage["executable"]).resolve() == Path(sys.executable).resolve()
    assert records[1]["host_syncs"] == 0 and records[2]["pairs_per_s"] > 0
    assert records[3]["recompiles_while_timed"] == 0

    summary = (out / "summary.md").read_text().strip().splitlines()
    assert [line.split(":")[0] for line in summary[-3:]] == ["Works", "Speed", "Bound"]
    assert summary[-3].startswith("Works: yes")
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) <= MAX_FILES and all(p.stat().st_size <= MAX_FILE_BYTES for p in files), files
    print(f"dry run: {seconds:.0f} s, stages {statuses}")


def _stub_checkout(root: Path, venv: bool) -> Path:
    """gpu_check.sh alone, with a Python that only notes how it was called."""
    (root / "scripts").mkdir(parents=True)
    shutil.copy2(ROOT / "scripts" / "gpu_check.sh", root / "scripts" / "gpu_check.sh")
    if venv:
        (root / ".venv" / "bin").mkdir(parents=True)
        stub = root / ".venv" / "bin" / "python"
        stub.write_text(f'#!/bin/sh\necho "venv $@" >> "{root / "calls"}"\n')
        stub.chmod(0o755)
    return root


@pytest.mark.parametrize("venv", [True, False], ids=["venv", "python3"])
def test_gpu_check_runs_the_venv_python_when_there_is_one_else_python3(tmp_path, venv):
    checkout = _stub_checkout(tmp_path / "checkout", venv)
    calls = checkout / "calls"
    env = _python_on_path(tmp_path / "bin", calls, target="/bin/true")
    done = subprocess.run(["bash", "scripts/gpu_check.sh", "--dry-run", "OUT_A"], cwd=checkout, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert calls.read_text().splitlines() == [
        f"{'venv ' if venv else ''}scripts/gpu_check.py --dry-run {checkout}/OUT_A"]  # relative to the caller


def test_gpu_check_writes_to_the_out_variable_when_no_folder_is_given(tmp_path):
    checkout = _stub_checkout(tmp_path / "checkout", venv=True)
    env = {**_python_on_path(tmp_path / "bin", tmp_path / "unused"), "OUT": "/some/out"}
    subprocess.run(["bash", "scripts/gpu_check.sh", "--dry-run"], cwd=checkout, env=env, check=True, timeout=60)
    assert (checkout / "calls").read_text().split() == ["venv", "scripts/gpu_check.py", "--dry-run", "/some/out"]


FAKE_STAGES = '''
import subprocess, time
from pathlib import Path

class Skipped(Exception):
    pass

class Sizes:
    threads = 0
    compile_backend = "inductor"

DRY = GPU = Sizes()
GOALS = (3000, 3710)

def hang(sizes, scratch):
    child = subprocess.Popen(["sleep", "1000"])
    Path(__file__).with_name("child.pid").write_text(str(child.pid))
    time.sleep(1000)

def skip(sizes, scratch):
    raise Skipped("ffcv not installed")

STAGES = {"env": lambda sizes, scratch: {"git": "x"}, "smoke": lambda sizes, scratch: {"loss": 1.0},
          "hangs": hang, "after": skip}
LIMITS = {"hangs": 4}
'''


def test_a_hung_stage_is_cut_at_its_limit_with_its_processes_and_the_run_goes_on(tmp_path):
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    shutil.copy2(ROOT / "scripts" / "gpu_check.py", scripts / "gpu_check.py")
    (scripts / "gpu_stages.py").write_text(FAKE_STAGES)
    began = time.monotonic()
    done = subprocess.run([sys.executable, str(scripts / "gpu_check.py"), "--deadline", "60",
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert time.monotonic() - began < 30
    records = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["status"]) for r in records] == [
        ("env", "ok"), ("smoke", "ok"), ("hangs", "timed out"), ("after", "skipped")]
    assert records[3]["reason"] == "ffcv not installed" and 4 <= records[2]["seconds"] < 15
    child = int((scripts / "child.pid").read_text())
    time.sleep(0.5)
    assert not Path(f"/proc/{child}").exists() or "Z" in Path(f"/proc/{child}/stat").read_text().split()[2]


def test_a_failed_smoke_stage_stops_the_run_with_a_nonzero_exit(tmp_path):
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    shutil.copy2(ROOT / "scripts" / "gpu_check.py", scripts / "gpu_check.py")
    (scripts / "gpu_stages.py").write_text(FAKE_STAGES.replace('{"loss": 1.0}', '1 / 0'))
    done = subprocess.run([sys.executable, str(scripts / "gpu_check.py"), "--dry-run", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    records = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["status"]) for r in records] == [("env", "ok"), ("smoke", "failed")]
    assert "ZeroDivisionError" in records[1]["error"]
    assert "Works: NO" in (tmp_path / "out" / "summary.md").read_text()
