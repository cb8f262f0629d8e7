"""scripts/bench_pipelines.py at smoke size: every row runs (the end-to-end rows on the path training
takes, compiled, and eager), and the script imports nothing from tests/ nor private names."""

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "bench_pipelines.py"
SMOKE = ["--images", "16", "--image-size", "48", "40", "--size", "32", "--batch", "4", "--workers", "2",
         "--seconds", "0.2", "--repeats", "1", "--mix-classes", "4"]


def test_the_script_imports_only_public_names_of_the_tree():
    tree = ast.parse(SCRIPT.read_text())
    tests_modules = {p.stem for p in (ROOT / "tests").glob("*.py")} | {"make_images", "mixing"}  # they were there
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            assert node.module.split(".")[0] not in tests_modules, node.module
            assert not [a.name for a in node.names if a.name.startswith("_")], (node.module, node.lineno)
        elif isinstance(node, ast.Import):
            assert not {a.name.split(".")[0] for a in node.names} & tests_modules
    assert "tests" not in re.findall(r"sys\.path.*", SCRIPT.read_text())[0]


@pytest.mark.slow
def test_smoke_run_prints_every_row_with_compiled_and_eager_end_to_end(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    done = subprocess.run([sys.executable, str(SCRIPT), *SMOKE, "--data", str(tmp_path / "data")], env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ") and "x (" in line]
    names = [row.split(" | ")[0][2:] for row in rows]
    for backend in ("ffcv", "dali (CPU)", "torchvision (PIL crops)"):
        for path in ("compiled, float32: as training", "eager, float32"):
            assert f"{backend}, end to end ({path})" in names, names
    assert len(rows) == 15, done.stdout
    assert "/ torchvision baseline: official PIL transform:" in done.stdout
    assert "class mixing:" in done.stdout
