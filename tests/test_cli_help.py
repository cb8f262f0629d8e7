"""The CLI's help examples are valid input (a new user copies them)."""
import re
from pathlib import Path

from fastbt import config
from fastbt.cli import build_parser

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_the_override_example_in_pretrain_help_is_a_known_key(capsys):
    parser = build_parser()
    try:
        parser.parse_args(["pretrain", "-h"])
    except SystemExit:
        pass
    help_text = " ".join(capsys.readouterr().out.split())
    example = re.search(r"e\.g\. (\S+=\S+)", help_text).group(1)
    config.load(str(CONFIGS / "base.yaml"), [example])  # raises ConfigError on an unknown key
