"""scripts/bench_scale.py (issue 23): `fastbt convert` measured as a user runs it, killed at half and
resumed; and the conversion's progress bar shows images/s and the time left."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.convert import convert
from pipelines.convert.options import Options
from pipelines.sample_images import make_image_folder

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("bench_scale", ROOT / "scripts" / "bench_scale.py")
bench_scale = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_scale)


def test_the_progress_bar_shows_images_per_second_and_the_time_left(tmp_path, capsys):
    src = tmp_path / "src"
    make_image_folder(src, classes=[f"c{i}" for i in range(4)], per_class=10, size=(48, 40))
    convert(src, tmp_path / "out", Options("dali", shard_size=5), workers=1, log=lambda *_: None)
    err = capsys.readouterr().err
    assert bench_scale.PROGRESS_WITH_RATE_AND_ETA.search(err), err[-500:]
    assert "40/40" in err


def test_updates_with_eta_counts_only_bars_with_time_left():
    bars = ("convert:  10%|#  | 10/100 [00:01<00:09, 9.50img/s]\r"
            "convert: 100%|###| 100/100 [00:10<00:00, 9.90img/s]\n")
    assert bench_scale._updates_with_eta(bars) == 1
    assert bench_scale._updates_with_eta("convert: 0%| | 0/100 [00:00<?, ?img/s]") == 0


@pytest.mark.slow  # three convert processes (~20 s of CPU)
def test_bench_scale_kills_the_tree_at_half_and_resumes(tmp_path):
    src = tmp_path / "src"
    make_image_folder(src, classes=[f"c{i}" for i in range(6)], per_class=30, size=(160, 120), natural=True)
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_scale.py"), str(src), str(tmp_path / "out"),
                           "--format", "dali", "--workers", "2", "--shard-size", "10", "--kill-at", "0.5",
                           "--json", str(tmp_path / "r.json")], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    r = json.loads((tmp_path / "r.json").read_text())
    killed, resumed = r["runs"]
    assert killed["killed"] and 9 <= killed["shards_journaled"] < 18 and not resumed["killed"]
    assert "resumed" in resumed["summary"] and r["n"] == 180 and r["interrupted"]
    assert r["cpu_s"] == pytest.approx(killed["cpu_s"] + resumed["cpu_s"], abs=0.02) and killed["cpu_s"] > 0
    assert r["peak_rss_mb"] >= r["peak_pss_mb"] > 10 and r["bytes_per_image"] > 1000
    assert "| 180 | dali (killed at half + resumed) |" in done.stdout
    assert not (tmp_path / "out").exists()  # measured, then removed (no --keep)
    assert not [p for p in Path("/proc").iterdir() if p.name.isdigit() and _is_orphan_of(p, tmp_path)]


def _is_orphan_of(proc: Path, tmp_path: Path) -> bool:
    """A process still running on this test's folder (a convert worker the kill missed)."""
    try:
        return str(tmp_path) in (proc / "cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


@pytest.mark.slow  # one `fastbt eval knn` process (~15 s of CPU)
def test_bench_eval_scale_measures_the_knn_command(tmp_path):
    src = tmp_path / "src"
    make_image_folder(src, classes=[f"c{i}" for i in range(3)], per_class=20, size=(48, 40))
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_eval_scale.py"), "--train", str(src),
                           "--val", str(src), "--size", "32", "--only", "knn", "--json", str(tmp_path / "r.json")],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (knn,) = json.loads((tmp_path / "r.json").read_text())["runs"]
    assert knn["kind"] == "knn" and knn["num_train"] == knn["num_val"] == 60
    assert knn["bank_mb"] == round(60 * 512 * 4 / 2**20, 1)  # resnet18's 512 features, fp32
    assert knn["peak_rss_mb"] >= knn["peak_pss_mb"] > 50 and knn["peak_rss_mb"] > knn["peak_anon_mb"] > 20
    assert knn["cpu_s"] > 0 and knn["extract_images_per_s"] > 0
