"""`fastbt profile --sweep`: how the swept keys are read."""

import pytest

from fastbt.cli import main
from fastbt.errors import ConfigError
from fastbt.profiling import sweep


def test_a_key_swept_twice_is_refused_naming_the_merged_spec():
    with pytest.raises(ConfigError, match=r"train.batch_size is swept twice; .*--sweep train.batch_size=8,16"):
        sweep.parse(["train.batch_size=8", "data.workers=0,1", "train.batch_size=16"])


def test_a_key_swept_twice_is_one_line_from_the_cli(tmp_path, capsys):
    from pathlib import Path

    config = Path(__file__).resolve().parents[1] / "configs" / "tiny_cpu.yaml"
    assert main(["profile", str(config), "--out", str(tmp_path / "s"), "--sweep", "train.batch_size=8",
                 "--sweep", "train.batch_size=16"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "swept twice" in err
    assert not (tmp_path / "s").exists()
