"""`Registry`: a table of named functions (backbones, losses) that refuses to replace an entry.

A name registered twice is a mistake (two plugins, a copy-pasted entry), never an override: the
second registration raises. Entries are functions (callables), not "module:function" strings, so
readers and tools see the calls. Removing an entry (`del`) stays possible, for tests.
"""

from __future__ import annotations

from typing import Callable, Iterable, TypeVar

F = TypeVar("F", bound=Callable)


class Registry(dict):
    def __init__(self, what: str, entries: Iterable[tuple[str, Callable]] = ()):
        super().__init__()
        self.what = what  # "backbone", "loss": named in errors
        self.update(entries)

    def __setitem__(self, name: str, entry: Callable) -> None:
        if name in self:
            raise ValueError(f"{self.what} {name!r} is already registered")
        if not callable(entry):
            raise TypeError(f"a {self.what} registry holds a function for each name, got {entry!r} "
                            f"for {name!r}")
        super().__setitem__(name, entry)

    def update(self, entries=(), **more) -> None:
        for name, entry in [*dict(entries).items(), *more.items()]:
            self[name] = entry

    def setdefault(self, name, entry=None):
        raise TypeError(f"register a {self.what} with registry[name] = function or @register(name)")

    def register(self, name: str) -> Callable[[F], F]:
        """Decorator: `@LOSSES.register("name")` above the builder."""
        def add(entry: F) -> F:
            self[name] = entry
            return entry
        return add
