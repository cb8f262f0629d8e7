"""Reading a config: bounded YAML, dotted overrides, unknown keys named with the closest valid one.

Generic over the schema: `read(defaults, path, overrides)` merges a YAML file and `key.sub=value`
overrides into the defaults' tree (a nested dict), refusing any key the tree does not have. The
YAML is read with bounds, so hostile input (an alias bomb, 100k nested brackets, /dev/zero, a
duplicate key) is a one-line ConfigError, fast. Types are checked by `fastbt.config.values`.
"""

from __future__ import annotations

import difflib
import reprlib
import typing
from pathlib import Path
from typing import Any

import yaml

from fastbt.errors import ConfigError

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


def read_yaml(path: Path) -> dict[str, Any]:
    """A config file as nested dicts, read with the bounds above; any problem is one ConfigError."""
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



def read(tree: dict[str, Any], path: str | Path | None, overrides: typing.Iterable[str]) -> dict[str, Any]:
    """`tree` (the defaults, as nested dicts) <- the YAML file at `path` <- `key.sub=value` overrides."""
    if path is not None:
        _merge(tree, read_yaml(Path(path)), source=str(path))
    for item in overrides:
        key, sep, text = item.partition("=")
        source = f"override {shown(item)}"
        if not sep or not key:
            raise ConfigError(f"{source} must look like key.sub=value")
        _merge(tree, _nest(key.strip(), _parse_yaml(text, source) if text.strip() else ""), source=source)
    return tree
