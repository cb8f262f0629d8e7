"""The `fastbt` command line: parse the arguments, then make one call into the package.

Each subcommand is declared by one `_add_<name>` function that sets `func`; heavy imports (torch,
ffcv, DALI) happen inside the handlers so `fastbt --help` stays fast. Errors meant for the user
(bad config, bad data) print as one line and exit with status 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import sys

from fastbt import __version__
from fastbt.errors import ConfigError
from pipelines.errors import DataError

USER_ERRORS = (ConfigError, DataError)


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML config file (overrides of configs/base.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value",
                        help="override one config value, e.g. optim.epochs=100")


def _show_config(args: argparse.Namespace) -> None:
    from fastbt import config

    cfg = config.load(args.config, args.overrides)
    sys.stdout.write(config.to_yaml(cfg))


def _add_config(sub) -> None:
    p = sub.add_parser("config", help="print the resolved config (defaults <- file <- overrides)")
    _add_config_args(p)
    p.set_defaults(func=_show_config)


# Subcommands, in the order `--help` lists them.
SUBCOMMANDS = [_add_config]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastbt", description="Fast Barlow Twins self-supervised pretraining.")
    parser.add_argument("--version", action="version", version=f"fastbt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except USER_ERRORS as err:
        print(f"fastbt {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
