"""No module of `fastbt/` or `pipelines/` imports a module that imports it back, directly or through
others, and `pipelines/` never imports `fastbt`.

Read with plain `ast`, nothing imported: every `import` / `from ... import` statement counts,
including those inside functions (a lazy import is still a dependency). `from pkg import x` is an
edge to `pkg.x` when that is a module, else to the package (`pkg/__init__.py`). Importing `a.b.c`
also runs the packages' `__init__`s; that implicit edge is not counted (a registry in `__init__`
importing its backends lazily is the package's entry point, not a cycle).
"""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("fastbt", "pipelines")


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_of(path: Path) -> str:
    """The package a relative import in `path` starts from."""
    name = module_name(path)
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def imported(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names) of every import statement anywhere in `path`, relative imports resolved:
    `import a.b` is ("a.b", []), `from a import x, y` is ("a", ["x", "y"])."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.extend((alias.name, []) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:  # relative: resolve against the package
                base = package_of(path).split(".")
                module = ".".join([*base[:len(base) - node.level + 1], *([module] if module else [])])
            found.append((module, [alias.name for alias in node.names]))
    return found


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The modules of `modules` that `path` imports (`from m import x`: m.x if a module, else m)."""
    found = set()
    for module, names in imported(path):
        if not names:  # `import a.b`
            found.add(module)
        found.update(f"{module}.{n}" if f"{module}.{n}" in modules else module for n in names)
    return (found & modules) - {module_name(path)}


def python_files(packages=PACKAGES) -> list[Path]:
    return sorted(p for pkg in packages for p in (REPO / pkg).rglob("*.py"))


def import_graph(packages=PACKAGES) -> dict[str, set[str]]:
    files = python_files(packages)
    modules = {module_name(f) for f in files}
    return {module_name(f): imports_of(f, modules) for f in files}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One path a -> ... -> a for each module a that can reach itself."""
    found = []
    for start in sorted(graph):
        stack, seen = [[start]], set()
        while stack:
            path = stack.pop()
            if start in graph[path[-1]]:
                found.append(path + [start])
                break
            for nxt in sorted(graph[path[-1]] - seen):
                seen.add(nxt)
                stack.append(path + [nxt])
    return found


def test_the_cycle_finder_finds_a_cycle_and_passes_a_tree():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}})[0] == ["a", "b", "c", "a"]
    assert cycles({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []


def test_the_graph_sees_lazy_and_from_imports():
    graph = import_graph()
    assert "fastbt.train.loop" in graph["fastbt.cli"]  # imported inside a function
    assert "fastbt.train.checkpoint" in graph["fastbt.train.loop"]  # `from fastbt.train import checkpoint`
    assert "fastbt.config" in graph["fastbt.train.run"]  # `from fastbt import config`: a package
    assert "fastbt.train.ops.xcorr" in graph["fastbt.train.ops"]
    assert "pipelines.dali_backend.ops" in graph["pipelines.dali_backend.reader"]  # inside a method
    assert "pipelines.convert.manifest" in graph["pipelines.convert.driver"]  # `from pipelines.convert import manifest`
    assert "pipelines.backends" in graph["pipelines.ffcv_backend"]  # a package's __init__ is a node


def test_no_module_imports_a_module_that_imports_it_back():
    assert cycles(import_graph()) == []


def test_pipelines_never_imports_fastbt():
    offenders = {f"{module_name(f)} imports {module}" for f in python_files(("pipelines",))
                 for module, _ in imported(f) if module.split(".")[0] == "fastbt"}
    assert offenders == set()
