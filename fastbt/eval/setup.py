"""The config of `fastbt eval knn|linear`: weights from a run directory are judged as they were trained.

Weights saved in a run directory (backbone.pth or ckpt_*.pt beside its config.yaml) bring their
run's config: its architecture, normalization and eval sets, and above all its resolution. A
backbone pretrained on 32 px crops and scored on 224 px center crops is measured on images it never
saw (the same random init can score twice as high at 224 px as at 32 px), so the center crops
default to the run's `aug.size`, resized first in the usual proportion 256 : 224. `eval.size` or
`eval.resize` given on the command line, or in a --config file other than the run's, still win.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import yaml

from fastbt import config
from fastbt.config import Config

RESIZE_RATIO = 256 / 224  # the short side before the center crop, as ImageNet evaluation does
RESOLUTION_KEYS = ("eval.size", "eval.resize")


@dataclass(frozen=True)
class EvalSetup:
    cfg: Config
    resolution_from: str  # where eval.size / eval.resize came from, for the user to read

    def describe(self) -> str:
        ev = self.cfg.eval
        return f"center crops of {ev.size} px (short side resized to {ev.resize}; {self.resolution_from})"


def run_config_path(weights: str | Path) -> Path | None:
    """The config.yaml of the run directory holding `weights`, if there is one."""
    path = Path(weights).parent / "config.yaml"
    return path if path.is_file() else None


def proportional_resize(size: int) -> int:
    return round(size * RESIZE_RATIO)


def eval_setup(weights: str | Path, config_file: str | None, overrides: list[str],
               flags: dict[str, str | None]) -> EvalSetup:
    """defaults <- (--config, else the run's config.yaml) <- overrides <- flags (dotted key ->
    value; None: not given); then the resolution rule of this module."""
    run_config = run_config_path(weights)
    tree = config.to_dict(config.load(config_file or run_config, overrides))
    for key, value in flags.items():
        if value is not None:
            section, name = key.split(".")
            tree[section][name] = value
    cfg = config.from_dict(tree)

    explicit = _explicit_keys(overrides, config_file if _differs(config_file, run_config) else None)
    if explicit:
        return EvalSetup(cfg, f"set by {explicit}")
    if run_config is None:
        return EvalSetup(cfg, "eval.size / eval.resize of the config")
    size = config.load(run_config).aug.size
    cfg = replace(cfg, eval=replace(cfg.eval, size=size, resize=proportional_resize(size)))
    return EvalSetup(cfg, f"the run's aug.size in {run_config}")


def _differs(config_file: str | None, run_config: Path | None) -> bool:
    if config_file is None:
        return False
    return run_config is None or Path(config_file).resolve() != run_config.resolve()


def _explicit_keys(overrides: list[str], config_file: str | None) -> str:
    """Which of eval.size / eval.resize the user set: on the command line, or in their own file."""
    given = [item.partition("=")[0].strip() for item in overrides]
    if any(key in RESOLUTION_KEYS for key in given):
        return "the command line"
    if config_file is not None:
        tree = yaml.safe_load(Path(config_file).read_text()) or {}
        section = tree.get("eval") if isinstance(tree, dict) else None
        if isinstance(section, dict) and any(k in section for k in ("size", "resize")):
            return config_file
    return ""
