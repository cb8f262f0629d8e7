import subprocess
import sys
from pathlib import Path

from fastbt.cli import main

BIN = Path(sys.executable).parent
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_console_script_help_lists_the_subcommands():
    out = subprocess.run([BIN / "fastbt", "--help"], capture_output=True, text=True, check=True).stdout
    assert "config" in out and "usage: fastbt" in out


def test_config_prints_the_resolved_yaml(capsys):
    assert main(["config", str(CONFIGS / "tiny_cpu.yaml"), "train.epochs=7"]) == 0
    out = capsys.readouterr().out
    assert "epochs: 7" in out and "arch: resnet18" in out


def test_a_config_error_is_one_line_and_status_2(capsys):
    assert main(["config", str(CONFIGS / "base.yaml"), "optim.lr_weight=1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("fastbt config: error: unknown config key 'optim.lr_weight'")
