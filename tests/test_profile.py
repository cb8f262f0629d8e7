"""`fastbt profile` on a tiny run (CPU, torchvision backend): the report, its arithmetic, the verdict."""

import json
import os
import time

import pytest
import torch

from fastbt import config
from fastbt.cli import main
from fastbt.profiling import verdict, windows
from pipelines.torchvision_backend.reader import TorchvisionCrops

import distributed

# per batch of the slowed loader: several times a step of batch 4 here (~0.3 s), and still more
# than one (~2 s) when the shared machine's load average is 14 on its 2 cores
SLEEP_S = 3.0


@pytest.fixture(scope="module")
def normal(images, tiny, tmp_path_factory):
    """A report made through the command line, with a torch.profiler trace."""
    out = tmp_path_factory.mktemp("normal")
    assert main(["profile", os.devnull, *tiny, "profile.warmup_steps=1", "profile.trace=true",
                 "profile.repeats=3",
                 "profile.trace_steps=1", "train.batch_size=8", f"data.path={images}",
                 "--steps", "3", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def slowed(images, tiny, tmp_path_factory):
    """A report whose crop source sleeps before every batch."""
    out = tmp_path_factory.mktemp("slowed")
    real_iter = TorchvisionCrops.__iter__

    def slow_iter(self):
        for batch in real_iter(self):
            time.sleep(SLEEP_S)
            yield batch

    cfg = config.load(None, [*tiny, "profile.warmup_steps=1", "profile.steps=1", "profile.repeats=2",
                             "train.batch_size=4", f"data.path={images}"])
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(TorchvisionCrops, "__iter__", slow_iter)
        windows.profile(cfg, out)
    return out


def read(out):
    return json.loads((out / "report.json").read_text())


def test_the_report_files_exist_and_parse(normal):
    r = read(normal)
    assert r["config"]["profile"]["steps"] == 3 and r["config"]["data"]["backend"] == "torchvision"
    assert r["environment"]["versions"]["torch"] == torch.__version__.split("+")[0]
    assert r["flops"]["per_pair"] > 0 and r["memory"]["host_peak_rss_bytes"] > 0
    assert r["projection"]["seconds"] > 0 and r["verdict"]["bound"] in ("input", "compute")
    md = (normal / "report.md").read_text()
    for heading in ("## Verdict", "## Throughput", "## Where a step's time goes", "## Environment"):
        assert heading in md
    for chart in ("phases.png", "throughput.png"):
        assert (normal / chart).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((normal / "trace.json").read_text())["traceEvents"]
    # three interleaved windows of each kind, the load average before and after, a reliability
    assert all(len(w["pairs_per_s_each"]) == 3 for w in r["windows"].values())
    assert len(r["load_average"]["start"]) == len(r["load_average"]["end"]) == 3
    assert r["reliability"]["reliable"] == r["verdict"]["reliable"]
    assert "Load average" in md and "spread" in md


def test_the_phases_add_up_to_the_measured_step_time(normal):
    r = read(normal)
    assert len(r["phase_steps"]) == 3
    assert abs(r["phase_sum_s"] - r["phase_step_s"]) <= r["phase_tolerance"] * r["phase_step_s"]
    assert all(t >= 0 for step in r["phase_steps"] for t in step.values() if t is not None)
    # one CPU process: no copy to a device, no gradients to communicate, and the report says why
    assert r["phases"]["host_to_device"] is None and r["phases"]["grad_comm"] is None
    assert set(r["phase_notes"]) == {"host_to_device", "grad_comm"}


def test_the_loader_alone_is_at_least_as_fast_as_end_to_end(normal):
    rates = read(normal)["global_pairs_per_s"]
    assert rates["loader"] >= rates["end_to_end"]


def test_a_slowed_loader_is_called_input_bound(slowed):
    r = read(slowed)
    rates = r["global_pairs_per_s"]
    assert rates["loader"] <= 4 / SLEEP_S  # the sleep bounds it: 4 pairs a batch
    assert rates["loader"] < rates["step"]
    assert r["verdict"]["bound"] == "input" and r["verdict"]["fix_first"] == "data_wait"
    assert r["verdict"]["factor"] == pytest.approx(rates["step"] / rates["loader"])


def test_the_verdict_follows_from_the_numbers():
    phases = dict.fromkeys(verdict.PHASES, 0.01) | {"augmentation": 0.02, "backward": 0.05,
                                                   "grad_comm": None}
    slow_input = verdict.judge(loader=100, step=300, end_to_end=90, phases=phases)
    assert (slow_input["bound"], slow_input["fix_first"]) == ("input", "augmentation")
    assert slow_input["factor"] == 3 and slow_input["overlap"] == 0.9
    slow_step = verdict.judge(loader=300, step=100, end_to_end=50, phases=phases)
    assert (slow_step["bound"], slow_step["fix_first"]) == ("compute", "backward")
    assert "barely overlap" in slow_step["summary"]  # 50 is half of what the step could take
    assert verdict.project(1000, 256, end_to_end=128, step=256) == {
        "total_steps": 1000, "seconds": 2000, "seconds_at_step_rate": 1000}
    assert verdict.device_peak("NVIDIA H100 80GB HBM3", "bf16") == 989e12
    assert verdict.device_peak("NVIDIA H100 PCIe", "bf16") == 756e12
    assert verdict.device_peak("NVIDIA H100 80GB HBM3", "fp32") is None
    assert verdict.device_peak(None, "bf16") is None


def test_compare_prints_the_ratios(normal, slowed, capsys):
    a, b = normal / "report.json", slowed / "report.json"
    assert main(["profile", "--compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    loader = read(slowed)["global_pairs_per_s"]["loader"] / read(normal)["global_pairs_per_s"]["loader"]
    assert "| | A | B | B/A |" in out
    assert "| loader alone, pairs/s (all processes) |" in out and f"| {loader:.2f}x |" in out
    assert "| host-to-device, ms/step | n.a. | n.a. | n.a. |" in out


def test_profile_needs_a_config_or_compare(capsys):
    assert main(["profile"]) == 2
    assert capsys.readouterr().err.startswith("fastbt profile: error: give a CONFIG")


def profile_on_two_ranks(rank, world_size, cfg, out):
    windows.profile(cfg, out)


@pytest.mark.dist
@pytest.mark.slow  # ~50 s here, most of it starting two processes
def test_under_two_processes_rank_0_reports_the_gradient_communication(images, tiny, tmp_path):
    cfg = config.load(None, [*tiny, "profile.warmup_steps=1", "profile.steps=1", "profile.repeats=1",
                             "train.batch_size=8", f"data.path={images}"])
    distributed.run(profile_on_two_ranks, 2, cfg, tmp_path, init_group=False)
    r = read(tmp_path)
    assert r["setup"]["world_size"] == 2 and r["setup"]["global_batch"] == 8
    assert len(r["per_rank_end_to_end_pairs_per_s"]) == 2
    assert r["phases"]["grad_comm"] is not None and r["phases"]["grad_comm"] >= 0
    assert abs(r["phase_sum_s"] - r["phase_step_s"]) <= r["phase_tolerance"] * r["phase_step_s"]
