import subprocess
from pathlib import Path

from fastbt.cli import main

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


SUBCOMMANDS = ["demo", "config", "pretrain", "plot", "export", "convert", "inspect", "eval", "profile"]


def test_console_script_help_lists_the_subcommands(console_script):
    out = subprocess.run([console_script, "--help"], capture_output=True, text=True, check=True).stdout
    assert out.startswith("usage: fastbt")
    listed = [line.split()[0] for line in out[out.index("COMMAND\n"):].splitlines()[1:]
              if line.startswith("    ") and not line.startswith("     ")]
    assert listed == SUBCOMMANDS  # every one, in order, each with its help line
    for name in SUBCOMMANDS:
        assert any(line.split()[:1] == [name] and len(line.split()) > 1 for line in out.splitlines()), name


def test_the_parser_has_exactly_the_documented_subcommands():
    from fastbt.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert list(sub.choices) == SUBCOMMANDS


def test_config_prints_the_resolved_yaml(capsys):
    assert main(["config", str(CONFIGS / "tiny_cpu.yaml"), "train.epochs=7"]) == 0
    out = capsys.readouterr().out
    assert "epochs: 7" in out and "arch: resnet18" in out


def test_a_config_error_is_one_line_and_status_2(capsys):
    assert main(["config", str(CONFIGS / "base.yaml"), "optim.lr_weight=1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("fastbt config: error: unknown config key 'optim.lr_weight'")


def one_line_refusal(capsys, argv, words):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and words in err, err


def test_profile_compare_of_a_json_that_is_no_report_is_one_line(tmp_path, capsys):
    for n, content in enumerate(['{"a": 1}', "[1, 2]", '{"verdict": {}, "setup": {}}']):
        path = tmp_path / f"{n}.json"
        path.write_text(content)
        one_line_refusal(capsys, ["profile", "--compare", str(path), str(path)], "report")


def test_profile_out_naming_a_file_is_refused_before_profiling(tmp_path, capsys):
    (tmp_path / "report.md").write_text("mine")
    one_line_refusal(capsys, ["profile", str(CONFIGS / "tiny_cpu.yaml"), "--out", str(tmp_path / "report.md")],
                     "is a file")
    assert (tmp_path / "report.md").read_text() == "mine"


def test_export_to_a_folder_or_onto_its_own_checkpoint_is_refused(tmp_path, capsys):
    import torch

    ckpt = tmp_path / "ckpt_000000001.pt"
    torch.save({"model": {"backbone.conv1.weight": torch.ones(2)}, "step": 1}, ckpt)
    before = ckpt.read_bytes()
    one_line_refusal(capsys, ["export", str(ckpt), str(tmp_path)], "is a folder")
    one_line_refusal(capsys, ["export", str(ckpt), str(ckpt)], "is the checkpoint being exported")
    assert ckpt.read_bytes() == before


def test_export_into_a_missing_folder_names_that_folder(tmp_path, capsys):
    import torch

    ckpt = tmp_path / "ckpt_000000001.pt"
    torch.save({"model": {"backbone.conv1.weight": torch.ones(2)}, "step": 1}, ckpt)
    one_line_refusal(capsys, ["export", str(ckpt), str(tmp_path / "missing" / "r50.pth")],
                     f"its folder {tmp_path / 'missing'} does not exist")


def test_eval_knn_out_in_a_missing_folder_is_refused_before_evaluating(tmp_path, capsys):
    one_line_refusal(capsys, ["eval", "knn", "--weights", str(tmp_path / "w.pth"), "--out",
                              str(tmp_path / "missing" / "knn.json")], "does not exist")


def test_inspect_a_negative_sample_is_one_line(tmp_path, capsys):
    one_line_refusal(capsys, ["inspect", str(tmp_path), "--sample", "-5"], "--sample -5")
