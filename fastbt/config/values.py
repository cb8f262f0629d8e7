"""Typed values: each config value checked against its field's annotation, converted where lossless.

`build(cls, tree)` makes the dataclass `cls` from a nested dict, converting every value with
`convert(value, hint, key)`: bool, int, float (finite; "1e-6" as YAML 1.1 reads it too), str,
Literal[...], Optional[X], tuple[X, ...] / tuple[X, Y], and a registry's names (`OneOf`, with the
closest valid name suggested). Any mismatch is one ConfigError naming the key, the expected type
and the value given.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import math
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastbt.config.loader import shown
from fastbt.errors import ConfigError


@dataclass(frozen=True)
class OneOf:
    """Marks a str key whose valid values are the names in a registry, "module:NAME" (a dict, a
    tuple, or a function returning one), read when a config is checked: a name registered at run
    time is accepted too, and checking a config imports no heavy module until it has such a key."""

    registry: str

    def names(self) -> tuple[str, ...]:
        module, _, attr = self.registry.partition(":")
        names = getattr(importlib.import_module(module), attr)
        return tuple(names() if callable(names) else names)


def build(cls: type, tree: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls, include_extras=True)
    kwargs = {}
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        hint = hints[f.name]
        value = tree[f.name]
        if dataclasses.is_dataclass(hint):
            kwargs[f.name] = build(hint, value, prefix=f"{key}.")
        else:
            kwargs[f.name] = convert(value, hint, key)
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


def _wrong(value: Any, hint: Any, key: str) -> ConfigError:
    return ConfigError(f"config key '{key}' expects {_type_name(hint)}, "
                       f"got {shown(value)} ({type(value).__name__})")


def _registry_name(value: Any, hint: Any, key: str) -> str:
    value = convert(value, typing.get_args(hint)[0], key)
    names = _one_of(hint).names()
    if value not in names:
        close = difflib.get_close_matches(value, names, n=1, cutoff=0.6)
        raise ConfigError(str(_wrong(value, hint, key)) + (f"; did you mean {close[0]!r}?" if close else ""))
    return value


def _optional(value: Any, hint: Any, key: str) -> Any:  # Optional[X]
    args = typing.get_args(hint)
    if value is None and type(None) in args:
        return None
    (inner,) = [a for a in args if a is not type(None)]
    return convert(value, inner, key)


def _literal(value: Any, hint: Any, key: str) -> Any:
    if value not in typing.get_args(hint):
        raise _wrong(value, hint, key)
    return value


def _tuple(value: Any, hint: Any, key: str) -> tuple:
    if not isinstance(value, (list, tuple)):
        raise _wrong(value, hint, key)
    args = typing.get_args(hint)
    if args[-1] is Ellipsis:
        return tuple(convert(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
    if len(value) != len(args):
        raise _wrong(value, hint, key)
    return tuple(convert(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))


def _exactly(kind: type):
    """A check that the value is a `kind` as given (True is not an int here)."""
    def check(value: Any, hint: Any, key: str) -> Any:
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            raise _wrong(value, hint, key)
        return value
    return check


def _float(value: Any, hint: Any, key: str) -> float:
    # str: YAML 1.1 reads "1e-6" (no dot) as one
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise _wrong(value, hint, key)
    try:
        number = float(value)
    except (ValueError, OverflowError):
        raise _wrong(value, hint, key) from None
    if not math.isfinite(number):  # .inf, .nan: no tunable means them
        raise ConfigError(f"config key '{key}' expects a finite number, got {shown(value)}")
    return number


_BY_ORIGIN = {Annotated: _registry_name, typing.Union: _optional, types.UnionType: _optional,
              Literal: _literal, tuple: _tuple}
_BY_TYPE = {bool: _exactly(bool), int: _exactly(int), float: _float, str: _exactly(str)}


def convert(value: Any, hint: Any, key: str) -> Any:
    """Check `value` against the annotation `hint`, converting where it is lossless."""
    check = _BY_ORIGIN.get(typing.get_origin(hint)) or _BY_TYPE.get(hint)
    if check is None:
        raise TypeError(f"fastbt/config/schema.py declares an unsupported type {hint!r} for '{key}'")
    return check(value, hint, key)
