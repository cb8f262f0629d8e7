"""The run configuration: typed, frozen, declared once.

A config is built in three layers, each overriding the one before:

    dataclass defaults (mirrored by configs/base.yaml)  <-  a YAML file  <-  `key.sub=value` overrides

Every key is checked against the dataclasses below: an unknown key is an error that names it and
suggests the closest valid one; a value of the wrong type is an error naming the key, the expected
type and the value given. Values derived from the config and the run's world (per-GPU batch, steps
per epoch, base LR) are computed once, in `derive`.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib
import math
import reprlib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import yaml

from fastbt.errors import ConfigError
from pipelines.augment import AugSpec

# --------------------------------------------------------------------------------------------
# The sections. Defaults are the paper recipe (facebookresearch/barlowtwins, main.py).


@dataclass(frozen=True)
class OneOf:
    """Marks a str key whose valid values are the names in a registry, "module:NAME" (a dict or a
    tuple), read when a config is checked: a name registered at run time is accepted too, and
    checking a config imports no heavy module until it has such a key to check."""

    registry: str

    def names(self) -> tuple[str, ...]:
        module, _, attr = self.registry.partition(":")
        return tuple(getattr(importlib.import_module(module), attr))


@dataclass(frozen=True)
class DataConfig:
    backend: Annotated[str, OneOf("pipelines.backends:BACKENDS")] = "ffcv"  # ffcv, dali, torchvision, ...
    path: str = ""  # a .beton, a folder of DALI shards, or an image folder (torchvision backend)
    workers: int = 8  # decode processes/threads per training process (torchvision: 0 = in-process)


@dataclass(frozen=True)
class ModelConfig:
    arch: Annotated[str, OneOf("fastbt.model:ARCHS")] = "resnet50"  # any torchvision classifier
    projector: tuple[int, ...] = (8192, 8192, 8192)  # hidden and output sizes after the backbone


@dataclass(frozen=True)
class LossConfig:
    name: Annotated[str, OneOf("fastbt.losses:LOSSES")] = "barlow_twins"
    lambd: float = 0.0051  # weight of the off-diagonal (redundancy reduction) term
    scale: float = 1.0  # multiplies the loss; 1/world_size reproduces the official gradients
    mode: Literal["auto", "gram", "direct"] = "auto"  # how the fused op computes it (fastbt.ops)


@dataclass(frozen=True)
class OptimConfig:
    lr_weights: float = 0.2  # multiplies the base LR (batch/256) for weights
    lr_biases: float = 0.0048  # ... and for biases and BN parameters (p.ndim == 1)
    weight_decay: float = 1e-6
    momentum: float = 0.9
    eta: float = 0.001  # LARS trust coefficient
    warmup_epochs: float = 10.0
    final_lr_ratio: float = 0.001  # the cosine ends at base LR x this


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 1000
    batch_size: int = 2048  # global, over all processes
    seed: int = 0
    out_dir: str = "runs/default"
    checkpoint_every_steps: int = 0  # 0: only by time and at the end
    checkpoint_every_minutes: float = 30.0
    # with checkpoints in out_dir: auto = resume if the config matches (fastbt/rundir.py lists the
    # keys that may differ), force = resume with the new values, restart = set the old files aside
    resume: Literal["auto", "force", "restart"] = "auto"


@dataclass(frozen=True)
class RuntimeConfig:
    """Compile and precision: how the step runs, not what it computes."""

    device: Literal["auto", "cuda", "cpu"] = "auto"
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    channels_last: Optional[bool] = None  # None (null): on for CUDA, off for CPU (7x slower there)
    compile: bool = True
    compile_mode: Literal["default", "reduce-overhead", "max-autotune",
                          "max-autotune-no-cudagraphs"] = "default"
    dist_timeout_s: int = 600  # a collective waiting this long for a lost process fails the run


@dataclass(frozen=True)
class LoggingConfig:
    every_steps: int = 50  # host syncs for metrics happen only this often
    progress_bar: bool = True
    tensorboard: bool = False  # also write log.jsonl's scalars to RUN_DIR/tb (needs fastbt[tensorboard])


@dataclass(frozen=True)
class ProfileConfig:
    steps: int = 10  # measured steps per window (and in the per-phase breakdown)
    repeats: int = 5  # windows of each kind (loader, step, end to end), interleaved; median + spread
    warmup_steps: int = 10  # excluded from rates, reported apart
    trace: bool = False  # also write a torch.profiler trace of a few steps
    trace_steps: int = 5


@dataclass(frozen=True)
class KnnConfig:
    k: int = 20  # weighted kNN on cosine similarity, as the common SSL protocol
    temperature: float = 0.07  # neighbour weight exp(similarity / temperature)
    every_epochs: int = 0  # online monitor during pretraining on eval.train / eval.val; 0: off


@dataclass(frozen=True)
class LinearConfig:
    """The official linear probe (facebookresearch/barlowtwins evaluate.py, frozen backbone)."""

    epochs: int = 100
    batch_size: int = 256
    lr: float = 0.3  # cosine to 0 over the epochs, stepped once per epoch
    momentum: float = 0.9
    weight_decay: float = 1e-6
    init_std: float = 0.01  # head weights ~ N(0, init_std), bias 0
    crop_scale: tuple[float, float] = (0.08, 1.0)  # training crops: random-resized-crop + flip
    interpolation: Literal["bilinear", "bicubic"] = "bilinear"  # torchvision's RRC default
    seed: int = 0


@dataclass(frozen=True)
class EvalConfig:
    """Frozen-backbone evaluation: `fastbt eval knn|linear` and the online kNN monitor."""

    train: str = ""  # labeled sets: an image folder, or a converted dataset folder (manifest.json)
    val: str = ""
    resize: int = 256  # center crops: resize the short side to this, then crop `size`
    size: int = 224
    batch_size: int = 256  # images per forward pass when extracting features
    knn: KnnConfig = field(default_factory=KnnConfig)
    linear: LinearConfig = field(default_factory=LinearConfig)


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    aug: AugSpec = field(default_factory=AugSpec)  # the two-view recipe (pipelines/augment.py)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    profile: ProfileConfig = field(default_factory=ProfileConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# --------------------------------------------------------------------------------------------
# Derived values: computed once, here.


@dataclass(frozen=True)
class Derived:
    world_size: int
    per_device_batch: int
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    base_lr: float  # batch/256, as in the paper


def per_device_batch(cfg: Config, world_size: int) -> int:
    batch = cfg.train.batch_size
    if batch % world_size:
        raise ConfigError(f"train.batch_size={batch} is not divisible by the world size {world_size}")
    return batch // world_size


def derive(cfg: Config, world_size: int, dataset_size: int) -> Derived:
    """The numbers that follow from the config, the number of processes and the dataset size."""
    batch = cfg.train.batch_size
    per_device = per_device_batch(cfg, world_size)
    steps_per_epoch = dataset_size // batch  # drop_last, as every loader does
    if steps_per_epoch == 0:
        raise ConfigError(f"train.batch_size={batch} is larger than the dataset ({dataset_size} images)")
    return Derived(
        world_size=world_size,
        per_device_batch=per_device,
        steps_per_epoch=steps_per_epoch,
        total_steps=cfg.train.epochs * steps_per_epoch,
        warmup_steps=round(cfg.optim.warmup_epochs * steps_per_epoch),
        base_lr=batch / 256,
    )


# --------------------------------------------------------------------------------------------
# Loading, checking, writing.


def load(path: str | Path | None = None, overrides: typing.Iterable[str] = ()) -> Config:
    """Defaults <- YAML file at `path` <- `key.sub=value` overrides, type-checked."""
    tree = to_dict(Config())
    if path is not None:
        _merge(tree, _read_yaml(Path(path)), source=str(path))
    for item in overrides:
        key, sep, text = item.partition("=")
        source = f"override {shown(item)}"
        if not sep or not key:
            raise ConfigError(f"{source} must look like key.sub=value")
        _merge(tree, _nest(key.strip(), _parse_yaml(text, source) if text.strip() else ""), source=source)
    return from_dict(tree)


def from_dict(tree: dict[str, Any]) -> Config:
    """Build a Config from a complete nested dict, converting and checking every value."""
    cfg = _build(Config, tree, prefix="")
    _check_ranges(cfg)
    return cfg


# Range rules, checked after types: (keys, test, what the value must be).
_RANGES = [
    (("train.epochs", "train.batch_size", "logging.every_steps", "profile.steps",
      "profile.trace_steps", "eval.resize", "eval.size", "eval.batch_size", "eval.knn.k",
      "eval.knn.temperature", "eval.linear.epochs", "eval.linear.batch_size", "eval.linear.init_std"),
     lambda v: v > 0, "> 0"),
    (("profile.repeats", "runtime.dist_timeout_s"), lambda v: v > 0, "> 0"),
    (("loss.lambd", "loss.scale", "optim.lr_weights", "optim.lr_biases", "optim.weight_decay",
      "optim.momentum", "optim.eta", "optim.warmup_epochs", "optim.final_lr_ratio",
      "train.checkpoint_every_steps", "train.checkpoint_every_minutes", "profile.warmup_steps",
      "data.workers", "eval.knn.every_epochs", "eval.linear.lr", "eval.linear.momentum",
      "eval.linear.weight_decay"),
     lambda v: v >= 0, ">= 0"),
    (("eval.linear.crop_scale",), lambda v: 0 < v[0] <= v[1] <= 1, "0 < lo <= hi <= 1"),
    (("model.projector",), lambda v: len(v) > 0 and min(v) > 0, "a non-empty list of positive sizes"),
]


def _check_ranges(cfg: Config) -> None:
    for keys, ok, what in _RANGES:
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


# What a config may hold. A config is a few KB and ~200 values a few levels deep; the bounds keep
# hostile input (a YAML alias bomb, 100k nested brackets, /dev/zero) to a one-line error, fast.
MAX_CONFIG_BYTES = 1 << 20
MAX_VALUES = 10_000  # YAML nodes after expanding aliases
MAX_DEPTH = 20
SHOWN_CHARS = 200  # values quoted in error messages are cut to this


class _Refused(yaml.YAMLError):
    def __init__(self, problem: str, mark):
        super().__init__(problem)
        self.problem, self.problem_mark = problem, mark


class _BoundedLoader(yaml.SafeLoader):
    """yaml.SafeLoader that bounds nesting and the expanded size, and refuses duplicate keys."""

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _Refused(f"nested deeper than {MAX_DEPTH} levels", self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def compose_document(self):
        # Aliases make a small text a huge (or cyclic) tree: count the expanded nodes, stop early.
        root = super().compose_document()
        todo, count = [(root, 1)], 0
        while todo:
            node, depth = todo.pop()
            count += 1
            if count > MAX_VALUES:
                raise _Refused(f"expands to more than {MAX_VALUES} values (YAML aliases?)", node.start_mark)
            if depth > MAX_DEPTH:
                raise _Refused(f"nests deeper than {MAX_DEPTH} levels through YAML aliases",
                               node.start_mark)
            if isinstance(node, yaml.SequenceNode):
                todo.extend((child, depth + 1) for child in node.value)
            elif isinstance(node, yaml.MappingNode):
                todo.extend((child, depth + 1) for pair in node.value for child in pair)
        return root

    def construct_mapping(self, node, deep=False):
        first_line = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node)
            if key in first_line:
                raise _Refused(f"duplicate key {shown(key)} (first at line {first_line[key] + 1})",
                               key_node.start_mark)
            first_line[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


def _parse_yaml(text: str, source: str) -> Any:
    """YAML text -> plain values with _BoundedLoader; any problem is one ConfigError naming `source`."""
    try:
        return yaml.load(text, Loader=_BoundedLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(err, "problem", None) or getattr(err, "reason", None) or str(err)
        verdict = "is refused" if isinstance(err, _Refused) else "is not valid YAML"
        raise ConfigError(f"{source} {verdict}{at}: {_cut(' '.join(str(problem).split()))}") from None
    except (ValueError, OverflowError) as err:  # a scalar YAML cannot build: 2024-13-45, 5000 digits
        raise ConfigError(f"{source} has a value YAML cannot read: {_cut(str(err))}") from None


def _read_yaml(path: Path) -> dict[str, Any]:
    source = f"config file {shown(str(path))}"
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"{source} not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{source} is a directory, not a YAML file") from None
    except OSError as err:
        raise ConfigError(f"{source} cannot be read: {err.strerror or err}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{source} is larger than {MAX_CONFIG_BYTES >> 20} MB; a config is a few KB")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{source} is not UTF-8 text (byte {err.start}); is it a binary file?") from None
    data = _parse_yaml(text, source)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source} must hold a mapping of sections, got {type(data).__name__}")
    return data


_REPR = reprlib.Repr()  # reprlib stops at these sizes: never walks all of a huge value
_REPR.maxlevel, _REPR.maxlist, _REPR.maxtuple, _REPR.maxdict = 3, 8, 8, 8
_REPR.maxstring = _REPR.maxother = SHOWN_CHARS


def shown(value: Any) -> str:
    """repr(value) for an error message: bounded work and at most ~SHOWN_CHARS characters."""
    return _cut(_REPR.repr(value))


def _cut(text: str) -> str:
    return text if len(text) <= SHOWN_CHARS else f"{text[:SHOWN_CHARS]}..."


def _nest(dotted: str, value: Any) -> dict[str, Any]:
    for part in reversed(dotted.split(".")):
        value = {part: value}
    return value


def _merge(tree: dict[str, Any], update: dict[str, Any], source: str, prefix: str = "") -> None:
    """Merge `update` into `tree` in place, refusing keys `tree` does not have."""
    for key, value in update.items():
        name = f"{prefix}{key}"
        if key not in tree:
            raise ConfigError(f"unknown config key '{_cut(name)}' in {source}"
                              f"{_suggest(str(key), tree, prefix)}")
        if isinstance(tree[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"config key '{name}' is a section: expected a mapping of its "
                                  f"keys, got {shown(value)} in {source}")
            _merge(tree[key], value, source, prefix=f"{name}.")
        else:
            tree[key] = value


def _suggest(key: str, tree: dict[str, Any], prefix: str) -> str:
    close = difflib.get_close_matches(key, list(tree), n=1, cutoff=0.5)
    if close:
        return f"; did you mean '{prefix}{close[0]}'?"
    return f"; valid keys here: {', '.join(prefix + k for k in tree)}"


def _build(cls: type, tree: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls, include_extras=True)
    kwargs = {}
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        hint = hints[f.name]
        value = tree[f.name]
        if dataclasses.is_dataclass(hint):
            kwargs[f.name] = _build(hint, value, prefix=f"{key}.")
        else:
            kwargs[f.name] = _convert(value, hint, key)
    try:
        return cls(**kwargs)
    except ValueError as err:  # a section's own consistency checks
        raise ConfigError(f"config section '{prefix.rstrip('.')}': {err}") from None


def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin is Annotated:  # a registry's names: all of them when they are few
        registry = _one_of(hint)
        names = registry.names()
        if len(names) <= 10:
            return "one of " + ", ".join(repr(a) for a in names)
        return f"a name in {registry.registry.replace(':', '.')} (e.g. {', '.join(names[:3])}, ...)"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    if origin is tuple:
        args = typing.get_args(hint)
        inner = f"{args[0].__name__}s" if args[-1] is Ellipsis else f"{len(args)} {args[0].__name__}s"
        return f"a list of {inner}"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(hint))
    return getattr(hint, "__name__", str(hint))


def _one_of(hint: Any) -> OneOf:
    return next(m for m in typing.get_args(hint)[1:] if isinstance(m, OneOf))


def _convert(value: Any, hint: Any, key: str) -> Any:
    """Check `value` against the annotation `hint`, converting where it is lossless."""
    def wrong() -> ConfigError:
        return ConfigError(f"config key '{key}' expects {_type_name(hint)}, "
                           f"got {shown(value)} ({type(value).__name__})")

    origin = typing.get_origin(hint)
    if origin is Annotated:  # a registry's name
        value = _convert(value, typing.get_args(hint)[0], key)
        if value not in _one_of(hint).names():
            close = difflib.get_close_matches(value, _one_of(hint).names(), n=1, cutoff=0.6)
            raise ConfigError(str(wrong()) + (f"; did you mean {close[0]!r}?" if close else ""))
        return value
    if origin in (typing.Union, types.UnionType):  # Optional[X]
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(value, inner, key)
    if origin is Literal:
        if value not in typing.get_args(hint):
            raise wrong()
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise wrong()
        args = typing.get_args(hint)
        if args[-1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise wrong()
        return tuple(_convert(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if hint is bool:
        if not isinstance(value, bool):
            raise wrong()
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong()
        return value
    if hint is float:
        if isinstance(value, bool):
            raise wrong()
        if not isinstance(value, (int, float, str)):  # str: YAML 1.1 reads "1e-6" (no dot) as one
            raise wrong()
        try:
            number = float(value)
        except (ValueError, OverflowError):
            raise wrong() from None
        if not math.isfinite(number):  # .inf, .nan: no tunable means them
            raise ConfigError(f"config key '{key}' expects a finite number, got {shown(value)}")
        return number
    if hint is str:
        if not isinstance(value, str):
            raise wrong()
        return value
    raise TypeError(f"config.py declares an unsupported type {hint!r} for '{key}'")
