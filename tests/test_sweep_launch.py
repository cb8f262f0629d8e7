"""`fastbt profile --sweep` under torchrun (python -m fastbt.launch): every setting opens and closes
its own process group on every rank; rank 0 alone speaks and writes the ranking."""

import json
import os
import signal
import subprocess
import sys

import pytest


@pytest.mark.dist
@pytest.mark.slow  # two interpreters under torchrun, two settings of one 1-step window each: 1 min
# on a quiet machine, up to 10 at load 10
@pytest.mark.timeout(600)
def test_a_sweep_under_the_launcher_profiles_each_setting_on_both_ranks(images, tiny, tmp_path):
    out = tmp_path / "sweep"
    command = [sys.executable, "-m", "fastbt.launch", "--standalone", "--nproc_per_node=2", "-m", "fastbt.cli",
               "profile", "/dev/null", *tiny, f"data.path={images}", "model.projector=[32,32]",
               "profile.steps=1", "profile.warmup_steps=1", "profile.repeats=1", "--out", str(out),
               "--sweep", "train.batch_size=8,16"]
    # its own session: on a timeout the launcher and its workers go together (a killed launcher
    # leaves its workers running and holding the output pipe)
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=540)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, output
    for n, size in enumerate((8, 16), 1):  # once, from rank 0
        assert output.count(f"fastbt profile --sweep: {n}/2: train.batch_size={size}\n") == 1, output
    ranking = json.loads((out / "sweep.json").read_text())
    assert sorted(row["setting"] for row in ranking["ranked"]) == [["train.batch_size=16"],
                                                                  ["train.batch_size=8"]]
    for n, size in enumerate((8, 16)):
        report = json.loads((out / f"{n:02d}" / "report.json").read_text())
        assert report["setup"]["world_size"] == 2 and report["setup"]["global_batch"] == size
        assert len(report["per_rank_end_to_end_pairs_per_s"]) == 2
    assert (out / "sweep.md").read_text().count("| train.batch_size=") == 2
