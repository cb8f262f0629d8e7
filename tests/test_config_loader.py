"""Hostile config input: bounded work, one-line errors naming the file, key or value, exit 2."""

import builtins
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fastbt import config
from fastbt.cli import main
from fastbt.config import ConfigError

REPO = Path(__file__).resolve().parents[1]


def laughs(levels=9, width=9):
    """A YAML 'billion laughs' value: `width`**`levels` strings from a few hundred bytes."""
    nodes = ["&a0 [" + ",".join(['"lol"'] * width) + "]"]
    nodes += [f"&a{i} [" + ",".join([f"*a{i - 1}"] * width) + "]" for i in range(1, levels + 1)]
    return "[" + ", ".join(nodes) + "]"


def one_line_error(capsys, argv, *names):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for name in names:
        assert name in err, err
    return err


BOMB_SCRIPT = textwrap.dedent("""
    import resource, sys
    from fastbt import config
    from fastbt.errors import ConfigError
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    messages = []
    for path in sys.argv[2:]:
        try:
            config.load(path)
        except ConfigError as err:
            messages.append(str(err))
    try:
        config.load(None, ["model.projector=" + open(sys.argv[1]).read()])
    except ConfigError as err:
        messages.append(str(err))
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    print(grown // 1024)
    print("\\n".join(messages))
""")


def test_yaml_alias_bombs_are_refused_in_bounded_time_and_memory(tmp_path):
    bomb = laughs()
    files = []
    for name, text in (("path", f"data:\n  path: {bomb}\n"), ("model", f"model: {bomb}\n"),
                       ("projector", f"model:\n  projector: {bomb}\n"),
                       ("cycle", "model:\n  projector: &a [*a, *a]\n")):
        files.append(tmp_path / f"{name}.yaml")
        files[-1].write_text(text)
    (tmp_path / "override.txt").write_text(bomb)
    out = subprocess.run([sys.executable, "-c", BOMB_SCRIPT, str(tmp_path / "override.txt"), *map(str, files)],
                         capture_output=True, text=True, timeout=120, cwd=REPO,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr[-2000:]
    grown_mb, *messages = out.stdout.splitlines()
    assert int(grown_mb) < 100  # was > 3 GB
    assert len(messages) == 5
    for path, message in zip(files, messages):
        assert message.startswith(f"config file '{path}' is refused at line ")
        assert "YAML aliases" in message
    assert messages[-1].startswith("override 'model.projector=[&a0")
    assert "expands to more than 10000 values" in messages[-1]
    assert all(len(m) < 400 for m in messages)  # was 126 MB


def test_values_in_errors_are_cut_to_about_200_characters():
    with pytest.raises(ConfigError) as err:
        config.load(None, ["data.workers=" + "x" * 100_000])
    assert len(str(err.value)) < 300 and str(err.value).startswith("config key 'data.workers' expects int")
    with pytest.raises(ConfigError) as err:
        config.load(None, ["model=" + "[" + ",".join(["1"] * 5000) + "]"])
    assert len(str(err.value)) < 400 and "config key 'model' is a section" in str(err.value)


@pytest.mark.parametrize("name, content, message", [
    ("binary.yaml", bytes(range(256)) * 4, r"is not UTF-8 text \(byte 128\); is it a binary file\?"),
    ("control.yaml", b"train:\n  epochs: \x00\n", "is not valid YAML: special characters are not allowed"),
    ("nested.yaml", b"train:\n  epochs: " + b"[" * 100_000 + b"\n", r"is refused at line 2: nested deeper "
                                                                      r"than 20 levels"),
    ("duplicate.yaml", b"train:\n  epochs: 3\n  epochs: 4\n", r"is refused at line 3: duplicate key "
                                                             r"'epochs' \(first at line 2\)"),
    ("huge.yaml", b"# " + b"x" * (2 << 20), "is larger than 1 MB"),
    ("digits.yaml", b"train:\n  epochs: " + b"9" * 6000 + b"\n", "has a value YAML cannot read"),
])
def test_malformed_config_files_are_refused_by_name(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=f"^config file '{path}' {message}"):
        config.load(path)


@pytest.mark.parametrize("override, message", [
    ("optim.lr_weights=.inf", "config key 'optim.lr_weights' expects a finite number, got inf"),
    ("optim.lr_weights=-.inf", "config key 'optim.lr_weights' expects a finite number, got -inf"),
    ("loss.lambd=.nan", "config key 'loss.lambd' expects a finite number, got nan"),
    ("loss.scale=1e999", "config key 'loss.scale' expects a finite number, got '1e999'"),
    ("train.epochs=[1", "override 'train.epochs=[1' is not valid YAML at line 1: expected ',' or ']'"),
    ("data.path={a: 1, a: 2}", "override 'data.path={a: 1, a: 2}' is refused at line 1: duplicate key 'a'"),
])
def test_malformed_overrides_and_non_finite_values_are_refused_by_name(override, message):
    with pytest.raises(ConfigError) as err:
        config.load(None, [override])
    assert str(err.value).startswith(message)


def test_a_directory_or_an_unreadable_file_is_named(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match=f"^config file '{tmp_path}' is a directory, not a YAML file$"):
        config.load(tmp_path)
    locked = tmp_path / "locked.yaml"
    locked.write_text("train: {epochs: 1}\n")

    def refuse(path, *args, **kwargs):  # chmod 000 does not stop root: simulate the refusal
        if Path(path) == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return builtins.open(path, *args, **kwargs)

    monkeypatch.setattr(config.loader, "open", refuse, raising=False)  # where the file is read
    with pytest.raises(ConfigError, match=f"^config file '{locked}' cannot be read: Permission denied$"):
        config.load(locked)


def test_aliases_within_the_bounds_still_work(tmp_path):
    path = tmp_path / "aliases.yaml"
    path.write_text("aug:\n  view1: {crop_scale: &scale [0.25, 1.0]}\n  view2: {crop_scale: *scale}\n")
    cfg = config.load(path)
    assert cfg.aug.view1.crop_scale == cfg.aug.view2.crop_scale == (0.25, 1.0)


def test_cli_refuses_each_case_in_one_line_with_status_2(tmp_path, capsys):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(f"model:\n  projector: {laughs()}\n")
    one_line_error(capsys, ["config", str(bomb)], str(bomb), "YAML aliases")
    one_line_error(capsys, ["config", str(REPO / "configs" / "base.yaml"), "train.epochs=[1"],
                   "train.epochs=[1")
    one_line_error(capsys, ["pretrain", str(tmp_path)], str(tmp_path), "is a directory")


def test_pretraining_without_data_path_says_so_in_one_line(tmp_path, console_script):
    out = subprocess.run([console_script, "pretrain", REPO / "configs" / "tiny_cpu.yaml",
                          f"train.out_dir={tmp_path / 'run'}"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr == "fastbt pretrain: error: data.path is not set: give the dataset, e.g. " \
                         "data.path=/data/in1k_ffcv\n"
