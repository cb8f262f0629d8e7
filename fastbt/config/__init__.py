"""The run configuration: typed, frozen, declared once.

A config is built in three layers, each overriding the one before:

    dataclass defaults (mirrored by configs/base.yaml)  <-  a YAML file  <-  `key.sub=value` overrides

Every key is checked against the dataclasses of `fastbt.config.schema`: an unknown key is an error
that names it and suggests the closest valid one (`fastbt.config.loader`); a value of the wrong
type is an error naming the key, the expected type and the value given (`fastbt.config.values`).
Values derived from the config and the run's world (per-GPU batch, steps per epoch, base LR) are
computed once, in `derive`.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from pathlib import Path
from typing import Any

import yaml

from fastbt.config.loader import MAX_CONFIG_BYTES, MAX_DEPTH, MAX_VALUES, read, read_yaml, shown  # noqa: F401
from fastbt.config.schema import (RANGES, Config, ConvertConfig, DataConfig, Derived,  # noqa: F401
                                  EvalConfig, FinetuneConfig, KnnConfig, LinearConfig, LoggingConfig,
                                  LossConfig, ModelConfig, OptimConfig, ProfileConfig, RuntimeConfig,
                                  TrainConfig,
                                  derive, per_device_batch)
from fastbt.config.values import build
from fastbt.errors import ConfigError  # noqa: F401 - raised by every function here


def load(path: str | Path | None = None, overrides: typing.Iterable[str] = ()) -> Config:
    """Defaults <- YAML file at `path` <- `key.sub=value` overrides, type-checked."""
    return from_dict(read(to_dict(Config()), path, overrides))


def load_convert(path: str | Path | None = None, overrides: typing.Iterable[str] = ()) -> ConvertConfig:
    """The convert.* section alone, for `fastbt convert`. Building the whole Config would check the
    model and loss names against their registries, which import torch; the conversion's shard
    writers fork from this process, and each would inherit torch's ~380 MB (docs/scale.md)."""
    return build(ConvertConfig, read(to_dict(Config()), path, overrides)["convert"], prefix="convert.")


def from_dict(tree: dict[str, Any]) -> Config:
    """Build a Config from a complete nested dict, converting and checking every value."""
    cfg = build(Config, tree, prefix="")
    _check_ranges(cfg)
    return cfg


def _check_ranges(cfg: Config) -> None:
    for keys, ok, what in RANGES:
        for key in keys:
            value = functools.reduce(getattr, key.split("."), cfg)
            if not ok(value):
                raise ConfigError(f"config key '{key}' must be {what}, got {shown(value)}")
    ramp = cfg.aug.resolution
    if ramp.on and ramp.ramp_end_epoch >= cfg.train.epochs:  # refused: the size evaluated is never trained
        raise ConfigError(f"config key 'aug.resolution.ramp_end_epoch' is {ramp.ramp_end_epoch}, but the run "
                          f"has {cfg.train.epochs} epochs (train.epochs): it would never train at aug.size "
                          f"({cfg.aug.size} px), the size it is evaluated at; end the ramp by epoch "
                          f"{cfg.train.epochs - 1}, or set aug.resolution.start=0 (off)")


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict (tuples as lists) for YAML."""
    def plain(v):
        if isinstance(v, (tuple, list)):
            return [plain(x) for x in v]
        return v
    return {k: (to_dict(v) if dataclasses.is_dataclass(v) else plain(v))
            for k, v in ((f.name, getattr(cfg, f.name)) for f in dataclasses.fields(cfg))}


def to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=None)


def save(cfg: Config, path: str | Path) -> None:
    """Write the resolved config; `load(path)` reads back an equal Config."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(to_yaml(cfg))
    tmp.replace(path)
