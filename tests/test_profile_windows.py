"""The loop's one body (epoch iterator + step with a clock seam), the profiler's interleaved
windows and their reliability, and `fastbt profile --sweep`, on tiny CPU runs."""

import json
import os
import statistics
import time

import pytest
import torch

from fastbt import dist
from fastbt.cli import main
from fastbt.errors import ConfigError
from fastbt.profiling import sweep, verdict
from fastbt.profiling import windows as profiler
from fastbt.profiling.clocks import WallClock
from fastbt.train.run import build_run


def test_the_profiled_batches_are_the_loops_and_resume_at_epoch_and_offset(images, tiny_config, tmp_path):
    """What the profiler steps through (crop batches + augmentation, timed apart) is what iterating
    the loader gives the loop, and resumes at (epoch, offset) as a resumed run does."""
    run = build_run(tiny_config(images, tmp_path), dist.init("cpu"))  # 5 steps per epoch
    whole = profiler.crop_batches(run, 0)
    profiled = [profiler.views(run, whole) for _ in range(10)]
    looped = [views for epoch in range(2) for views in run.epoch(epoch)]
    resumed = profiler.crop_batches(run, 7)  # epoch 1, offset 2
    assert [next(resumed)[:2] for _ in range(4)] == [(1, 2), (1, 3), (1, 4), (2, 0)]
    for (a1, a2), (b1, b2) in zip(profiled, looped, strict=True):
        assert torch.equal(a1, b1) and torch.equal(a2, b2)
    for (a1, a2), (b1, b2) in zip(looped[7:], run.epoch(1, skip=2), strict=True):
        assert torch.equal(a1, b1) and torch.equal(a2, b2)
    assert not torch.equal(profiled[0][0], profiled[5][0])  # a new epoch is a new order


def test_the_step_reports_its_phases_to_a_clock_and_the_clock_changes_nothing(images, tiny_config,
                                                                             tmp_path):
    cfg = tiny_config(images, tmp_path)
    plain, clocked = (build_run(cfg, dist.init("cpu")) for _ in range(2))  # seeded alike
    clock = WallClock(torch.device("cpu"))
    b1, b2 = profiler.crop_batches(plain), profiler.crop_batches(clocked)
    for i in range(2):
        loss = profiler.step(plain, i, b1)
        clocked_loss = profiler.step(clocked, i, b2, clock)
        assert list(clock.stop()) == ["input", "augmentation", "forward", "loss", "backward",
                                      "optimizer"]
        assert torch.equal(loss, clocked_loss)
    for (key, a), b in zip(plain.model.state_dict().items(), clocked.model.state_dict().values()):
        assert torch.equal(a, b), key


def test_windows_are_interleaved_and_give_the_median_and_spread():
    order = []

    def body(kind, seconds):
        def run_one(clock):
            clock.start()
            order.append(kind)
            time.sleep(seconds)
        return run_one

    bodies = {"loader": body("loader", 0.001), "step": body("step", 0.004),
              "end_to_end": body("end_to_end", 0.005)}
    windows = profiler._windows(bodies, warmup=1, steps=2, repeats=3, device=torch.device("cpu"),
                               pairs=4, lead_in=3)
    rounds = ["step"] * 2 + ["loader"] * (3 + 2) + ["end_to_end"] * 2  # the loader's lead-in
    assert order == list(profiler.KINDS) + 3 * rounds  # the warm-ups, then ABCABC...
    for w in windows.values():
        assert len(w.pairs_per_s_each) == 3 and w.repeats == 3 and w.steps == 2
        assert w.pairs_per_s == statistics.median(w.pairs_per_s_each)
        assert w.spread == pytest.approx((max(w.pairs_per_s_each) - min(w.pairs_per_s_each))
                                         / w.pairs_per_s)
        assert w.first_step_s is not None and w.warmup_s >= w.first_step_s
    assert windows["loader"].pairs_per_s > windows["end_to_end"].pairs_per_s  # 1 ms vs 5 ms a step


def test_the_verdict_flags_an_impossible_or_noisy_profile():
    quiet = dict.fromkeys(profiler.KINDS, 0.1)
    # the report the issue quotes: end to end at 430% of the slower window
    impossible = verdict.reliability({"loader": 83, "step": 19, "end_to_end": 83}, quiet)
    assert not impossible["reliable"]
    assert "exceeds the slower of loader and step" in impossible["reasons"][0]
    # end to end a little above the step, but within the spread: noise, not a contradiction
    assert verdict.reliability({"loader": 80, "step": 20, "end_to_end": 21}, quiet)["reliable"]
    assert verdict.reliability({"loader": 80, "step": 20, "end_to_end": 19}, quiet)["reliable"]
    noisy = verdict.reliability({"loader": 80, "step": 20, "end_to_end": 19},
                                quiet | {"step": 0.9})
    assert noisy["reasons"] == ["the step windows vary by 90% (over 25%)"]
    phases = dict.fromkeys(verdict.PHASES, 0.01) | {"grad_comm": None}
    judged = verdict.judge(80, 20, 19, phases, noisy)
    assert judged["summary"].startswith("UNRELIABLE") and judged["reliable"] is False
    steady = verdict.reliability({"loader": 80, "step": 20, "end_to_end": 19}, quiet)
    assert verdict.judge(80, 20, 19, phases, steady)["reliable"] is True


def test_sweep_settings_are_the_product_or_one_at_a_time():
    axes = sweep.parse(["data.backend=ffcv,dali", "model.projector=[64,64],[128]"])
    assert axes == [("data.backend", ["ffcv", "dali"]), ("model.projector", ["[64,64]", "[128]"])]
    assert sweep.settings(axes) == [
        ["data.backend=ffcv", "model.projector=[64,64]"],
        ["data.backend=ffcv", "model.projector=[128]"],
        ["data.backend=dali", "model.projector=[64,64]"],
        ["data.backend=dali", "model.projector=[128]"]]
    assert sweep.settings(axes, one_at_a_time=True) == [
        [], ["data.backend=ffcv"], ["data.backend=dali"], ["model.projector=[64,64]"],
        ["model.projector=[128]"]]
    with pytest.raises(ConfigError, match="expected key=value1,value2"):
        sweep.parse(["data.backend"])


def test_sweep_profiles_two_settings_and_ranks_them(images, tiny, tmp_path, capsys):
    out = tmp_path / "sweep"
    args = ["profile", os.devnull, *tiny, f"data.path={images}", "profile.warmup_steps=1",
            "profile.repeats=2", "--steps", "2", "--sweep", "train.batch_size=4,8", "--out", str(out)]
    assert main(args) == 0
    ranking = json.loads((out / "sweep.json").read_text())
    ranked = ranking["ranked"]
    assert sorted(r["setting"][0] for r in ranked) == ["train.batch_size=4", "train.batch_size=8"]
    assert ranked[0]["end_to_end"] >= ranked[1]["end_to_end"]
    for row in ranked:  # each row is its own report's numbers
        r = json.loads(open(row["report"]).read())
        assert r["config"]["train"]["batch_size"] == int(row["setting"][0].split("=")[1])
        assert row["end_to_end"] == r["global_pairs_per_s"]["end_to_end"]
        assert row["spread"] == r["windows"]["end_to_end"]["spread"]
    md = (out / "sweep.md").read_text()
    assert "| 1 | " + ranked[0]["setting"][0] in md
    override_line = md.split("Override line:")[1].strip().splitlines()[0]  # a noise warning may follow
    assert override_line.split()[-1] == ranked[0]["setting"][0]
    assert "fastest " + ranked[0]["setting"][0] in capsys.readouterr().out


def test_a_sweep_with_a_bad_key_stops_before_profiling(images, tiny, tmp_path, capsys):
    out = tmp_path / "bad"
    assert main(["profile", os.devnull, *tiny, f"data.path={images}", "--sweep",
                 "train.batch_sise=4,8", "--out", str(out)]) == 2
    assert "batch_sise" in capsys.readouterr().err and not out.exists()
