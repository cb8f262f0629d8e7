"""Helpers for tests of what a user sees: exactly one error line, and code run in a fresh Python
with a timeout (a regression that hangs fails its test instead of hanging the suite)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
HANG = 180  # seconds: an FFCV conversion of 24 tiny images takes ~20 s here (~9 s importing ffcv)


def one_error_line(err: str) -> str:
    """The one line of stderr that says "error:"; no traceback."""
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    return lines[0]


def run_python(code: str, timeout: int = HANG) -> subprocess.CompletedProcess:
    """Run `code` in a fresh Python that sees this tree and tests/; a hang fails the test."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}
    try:
        return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                              text=True, timeout=timeout, env=env, cwd=REPO)
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"hung: no exit within {timeout} s\n{err.stderr}")


def convert_code(src, out, fmt: str, workers: int, patch: str = "") -> str:
    """`fastbt convert` of `src` (64 px, shards of 4) as code for `run_python`, after `patch`."""
    return f"""
        import errno, os, sys
        {patch}
        from fastbt.cli import main
        sys.exit(main(["convert", {str(src)!r}, {str(out)!r}, "--format", {fmt!r}, "--max-resolution",
                       "64", "--shard-size", "4", "--workers", "{workers}"]))
    """


def assert_disk_full(result: subprocess.CompletedProcess, partial: Path) -> None:
    """A conversion that filled the disk: exit 2, one line saying so, no cut-short file left."""
    assert result.returncode == 2, result.stderr
    line = one_error_line(result.stderr)
    assert f"no space left on device while writing {partial}" in line, line
    assert line.endswith("MB and rerun to resume") and " free " in line, line
    assert not list(partial.rglob("*.tmp"))  # cut-short files are removed at once


def make_colour_folder(root, per_class, size=40, seed=0):
    """Ten classes told apart by background colour, each image with a rectangle of random colour:
    the features of a randomly initialized network follow colour, so they carry the class."""
    import numpy as np
    from PIL import Image

    palette = np.random.default_rng(1234).uniform(0, 255, (10, 3))  # the same in every split
    rng = np.random.default_rng(seed)
    for label, colour in enumerate(palette):
        (root / f"c{label}").mkdir(parents=True)
        for i in range(per_class):
            pixels = colour + rng.normal(0, 20, (size, size, 3))
            x, y = rng.integers(0, size // 2, 2)
            pixels[y:y + size // 3, x:x + size // 3] = rng.uniform(0, 255, 3)
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(root / f"c{label}" / f"{i}.png")


def whole_and_resumed(run, module, out_dir: Path, monkeypatch, key: str):
    """Run `run(dir)` for 2 epochs into out_dir/"whole"; then into out_dir/"split", crashing in its
    second epoch (module.cosine_lr raises) and rerun to resume. Checks that the resumed `key`
    state and log.jsonl equal the uninterrupted ones bit for bit; returns the uninterrupted log."""
    from fastbt import runlog
    from fastbt.train import checkpoint

    class Crash(Exception):
        pass

    assert run(out_dir / "whole") == 0
    real_lr = module.cosine_lr

    def crash_in_epoch_2(base, epoch, epochs):
        if epoch == 1:
            raise Crash()
        return real_lr(base, epoch, epochs)

    monkeypatch.setattr(module, "cosine_lr", crash_in_epoch_2)
    with pytest.raises(Crash):
        run(out_dir / "split")
    monkeypatch.setattr(module, "cosine_lr", real_lr)
    assert checkpoint.load_latest(out_dir / "split")["epoch"] == 1
    assert run(out_dir / "split") == 0
    whole, resumed = (checkpoint.load_latest(out_dir / name)[key] for name in ("whole", "split"))
    for name in whole:  # the same crops, the same momentum: bit for bit
        torch.testing.assert_close(resumed[name], whole[name], rtol=0, atol=0)
    logs = [runlog.read(out_dir / name / "log.jsonl") for name in ("whole", "split")]
    assert [_without_times(log) for log in logs[1:]] == [_without_times(logs[0])]
    return logs[0]


def _without_times(records):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]
