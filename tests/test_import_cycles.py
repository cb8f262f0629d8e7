"""No module of `pipelines/` (its subpackages included) imports a module that imports it back,
directly or through others.

Read with plain `ast`, nothing imported: every `import` / `from ... import` statement counts,
including those inside functions (a lazy import is still a dependency). `from pipelines import x`
is an edge to `pipelines.x` when that is a module (or subpackage), else to the package
(`pipelines/__init__.py`). Importing `pipelines.x` also runs the package's `__init__`; that implicit
edge is not counted (`pipelines/__init__` importing its backend folders, which register themselves,
is the package's entry point, not a cycle).
"""

import ast
from pathlib import Path

PACKAGE = "pipelines"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The package's modules that `path` imports anywhere in its body."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:  # relative: resolve against the importing module's package
                here = module_name(path).split(".")
                base = here[:len(here) - node.level + (path.name == "__init__.py")]
                module = ".".join(base + ([module] if module else []))
            for alias in node.names:  # `from pkg import submodule`, else a name in `module`
                found.add(f"{module}.{alias.name}" if f"{module}.{alias.name}" in modules else module)
    return (found & modules) - {module_name(path)}


def import_graph() -> dict[str, set[str]]:
    files = sorted(ROOT.rglob("*.py"))
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
    assert "pipelines.dali_backend.ops" in graph["pipelines.dali_backend.reader"]  # inside a method
    assert "pipelines.convert.manifest" in graph["pipelines.convert.driver"]  # `from pipelines.convert import manifest`
    assert "pipelines.backends" in graph["pipelines.ffcv_backend"]  # a package's __init__ is a node


def test_no_module_of_pipelines_imports_a_module_that_imports_it_back():
    assert cycles(import_graph()) == []
