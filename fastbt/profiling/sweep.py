"""`fastbt profile CONFIG --sweep key=v1,v2 [--sweep key2=...]`: which knob to turn.

Each setting (the cartesian product of the swept values; with `--one-at-a-time` the config as
given, then each swept value alone) is profiled with the robust interleaved windows of
`fastbt.profiling.windows` into OUT/NN/. OUT/sweep.md and OUT/sweep.json rank the settings by end-to-end
pairs/s (median of the windows, with the spread) and give the override line of the fastest.
Every setting's config is checked before the first is profiled, so a typo costs nothing.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

from fastbt import config, dist
from fastbt.errors import ConfigError
from fastbt.profiling import report, windows


def parse(sweeps: list[str]) -> list[tuple[str, list[str]]]:
    """["data.backend=ffcv,dali", "model.projector=[64,64],[128,128]"] -> [(key, values), ...]:
    values split at commas outside brackets."""
    axes = []
    for sweep in sweeps:
        key, sep, values = sweep.partition("=")
        split = _split_top_level(values)
        if not sep or not key or not all(split):
            raise ConfigError(f"--sweep {sweep!r}: expected key=value1,value2,...")
        earlier = next((values for swept, values in axes if swept == key), None)
        if earlier is not None:  # every combination of a key with itself is no setting at all
            raise ConfigError(f"--sweep {sweep!r}: {key} is swept twice; give its values once: "
                              f"--sweep {key}={','.join([*earlier, *split])}")
        axes.append((key, split))
    return axes


def _split_top_level(text: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for ch in text:
        depth += {"[": 1, "{": 1, "]": -1, "}": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    return [*parts, current]


def settings(axes: list[tuple[str, list[str]]], one_at_a_time: bool = False) -> list[list[str]]:
    """The overrides of every setting to profile."""
    if one_at_a_time:
        return [[]] + [[f"{key}={value}"] for key, values in axes for value in values]
    return [[f"{key}={value}" for key, value in zip((k for k, _ in axes), combo)]
            for combo in itertools.product(*(values for _, values in axes))]


def sweep(config_path: str | None, overrides: list[str], axes: list[tuple[str, list[str]]],
          out_dir: str | Path, one_at_a_time: bool = False) -> dict | None:
    """Profile every setting; rank 0 writes and returns the ranking (other ranks: None)."""
    out_dir = Path(out_dir)
    runs = [(setting, config.load(config_path, [*overrides, *setting]))
            for setting in settings(axes, one_at_a_time)]
    # one process group for every setting: leaving it and joining again under torchrun hung the
    # second setting (tests/test_sweep_launch.py)
    with dist.joined(runs[0][1].runtime.device, runs[0][1].runtime.dist_timeout_s) as world:
        for n, (setting, cfg) in enumerate(runs):
            if world.is_main:
                print(f"fastbt profile --sweep: {n + 1}/{len(runs)}: {_name(setting)}", flush=True)
            windows.profile(cfg, out_dir / f"{n:02d}")
    if not world.is_main:
        return None
    rows = [_row(setting, out_dir / f"{n:02d}" / "report.json") for n, (setting, _) in enumerate(runs)]
    ranking = {"config": config_path, "overrides": overrides, "one_at_a_time": one_at_a_time,
               "axes": [{"key": k, "values": v} for k, v in axes],
               "ranked": sorted(rows, key=lambda row: -row["end_to_end"])}
    (out_dir / "sweep.json").write_text(json.dumps(ranking, indent=1) + "\n")
    (out_dir / "sweep.md").write_text(markdown(ranking))
    best = ranking["ranked"][0]
    print(f"fastbt profile --sweep: fastest {_name(best['setting'])}, {best['end_to_end']:.1f} "
          f"pairs/s end to end (spread {best['spread']:.0%})\nreport: {out_dir / 'sweep.md'}",
          flush=True)
    return ranking


def _row(setting: list[str], path: Path) -> dict:
    r = report.load(path)
    return {"setting": setting, "report": str(path),
            "end_to_end": r["global_pairs_per_s"]["end_to_end"],
            "spread": r["windows"]["end_to_end"]["spread"],
            "loader": r["global_pairs_per_s"]["loader"], "step": r["global_pairs_per_s"]["step"],
            "bound": r["verdict"]["bound"], "reliable": r["reliability"]["reliable"]}


def _name(setting: list[str]) -> str:
    return " ".join(setting) or "(the config as given)"


def markdown(ranking: dict) -> str:
    ranked = ranking["ranked"]
    lines = [f"# fastbt profile --sweep: {len(ranked)} settings of {ranking['config']}", "",
             "Ranked by end-to-end pairs/s (all processes; the median of the interleaved windows; "
             "spread = (max - min) / median).", "",
             "| rank | setting | end to end | spread | loader alone | step alone | bound | reliable "
             "| report |", "|---:|---|---:|---:|---:|---:|---|---|---|"]
    for rank, row in enumerate(ranked, 1):
        lines.append(f"| {rank} | {_name(row['setting'])} | {row['end_to_end']:.1f} "
                     f"| {row['spread']:.0%} | {row['loader']:.1f} | {row['step']:.1f} "
                     f"| {row['bound']} | {'yes' if row['reliable'] else 'no'} | {row['report']} |")
    best = ranked[0]
    line = " ".join([*ranking["overrides"], *best["setting"]])
    lines += ["", f"Fastest: {_name(best['setting'])}. Override line:", "", f"    {line}"]
    if len(ranked) > 1:
        second = ranked[1]
        gap = best["end_to_end"] - second["end_to_end"]
        if gap <= max(best["spread"] * best["end_to_end"], second["spread"] * second["end_to_end"]):
            lines += ["", f"The first two differ by {gap:.1f} pairs/s, within their spread: not a "
                          "clear winner on this machine; rerun with more profile.repeats."]
    return "\n".join(lines) + "\n"
