"""The layout's rules, read from the source with `ast` (nothing imported but the registries):

- no module (nor package) is named after a standard-library module (`sys.stdlib_module_names`):
  with its folder on `sys.path` it would shadow it (fastbt/profile.py once broke `import cProfile`);
- every package holds at most MAX_MODULES modules (its `__init__.py` not counted);
- no function runs past MAX_LINES lines or cyclomatic complexity MAX_COMPLEXITY, counted as below;
- the registries (backbones, losses) refuse a duplicate name and hold functions, not strings.

(`tests/test_import_cycles.py`: no import cycle, `pipelines/` never imports `fastbt`.)

Cyclomatic complexity, as McCabe's "decisions + 1" on the function's own body (a nested function
or class is counted on its own): +1 for each `if`, `elif`, conditional expression, `for`, `while`,
`except` handler, `case` and comprehension `if`; +(n - 1) for a boolean operation of n operands
(`a and b or c`: 2). Not counted: `try`, `with`, `else`, comprehension `for`s, `assert`.
"""

import ast
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("fastbt", "pipelines")
CHECKED = (*PACKAGES, "scripts", "tests")  # folders whose modules must not shadow the stdlib
MAX_MODULES, MAX_LINES, MAX_COMPLEXITY = 12, 60, 15
DECISIONS = (ast.If, ast.IfExp, ast.For, ast.AsyncFor, ast.While, ast.ExceptHandler, ast.match_case)
SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)


def complexity(function: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    count, todo = 1, list(ast.iter_child_nodes(function))
    while todo:
        node = todo.pop()
        if isinstance(node, SCOPES):
            continue  # its own function, counted on its own
        if isinstance(node, DECISIONS):
            count += 1
        elif isinstance(node, ast.BoolOp):
            count += len(node.values) - 1
        elif isinstance(node, ast.comprehension):
            count += len(node.ifs)
        todo.extend(ast.iter_child_nodes(node))
    return count


def functions(packages=PACKAGES):
    """(where, name, lines, complexity) of every function and method in `packages`."""
    for path in sorted(p for pkg in packages for p in (REPO / pkg).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                where = f"{path.relative_to(REPO)}:{node.lineno}"
                yield where, node.name, node.end_lineno - node.lineno + 1, complexity(node)


def parse_function(source: str) -> ast.FunctionDef:
    return ast.parse(source).body[0]


def test_complexity_counts_decisions_and_leaves_nested_functions_out():
    assert complexity(parse_function("def f(x):\n    return x\n")) == 1
    source = """
def f(xs, a, b, c):
    for x in xs:                          # 1
        if x and a or b:                  # 1 + 2
            y = 1 if c else 2             # 1
        elif x:                           # 1
            try:
                pass
            except ValueError:            # 1
                pass
    while a:                              # 1
        pass
    def inner(z):                         # its own: not counted here
        return z if z else 0
    return [x for x in xs if x if a]      # 2
"""
    assert complexity(parse_function(source)) == 1 + 1 + 3 + 1 + 1 + 1 + 1 + 2


def test_no_module_or_package_is_named_after_a_standard_library_module():
    named = [p for folder in CHECKED for p in (REPO / folder).rglob("*")
             if (p.suffix == ".py" or (p.is_dir() and (p / "__init__.py").exists()))
             and "__pycache__" not in p.parts]
    shadows = sorted(str(p.relative_to(REPO)) for p in named
                     if (p.stem if p.suffix == ".py" else p.name) in sys.stdlib_module_names)
    assert shadows == []
    assert "profile" in sys.stdlib_module_names  # what fastbt/profile.py once shadowed


def test_every_package_holds_at_most_twelve_modules():
    packages = [p.parent for pkg in PACKAGES for p in (REPO / pkg).rglob("__init__.py")]
    sizes = {str(p.relative_to(REPO)): len([m for m in p.glob("*.py") if m.name != "__init__.py"])
             for p in packages}
    assert {"fastbt", "fastbt/train", "fastbt/train/ops", "pipelines", "pipelines/convert"} <= set(sizes)
    assert {p: n for p, n in sizes.items() if n > MAX_MODULES} == {}


def test_no_function_is_longer_than_60_lines_or_more_complex_than_15():
    found = list(functions())
    assert len(found) > 300  # it reads them all
    too_big = [f"{where} {name}: {lines} lines, complexity {cc}" for where, name, lines, cc in found
               if lines > MAX_LINES or cc > MAX_COMPLEXITY]
    assert too_big == []


@pytest.mark.parametrize("registry", ["fastbt.train.model:ARCHS", "fastbt.train.losses:LOSSES"])
def test_a_registry_refuses_a_duplicate_name_and_holds_functions(registry):
    import importlib

    module, _, name = registry.partition(":")
    table = getattr(importlib.import_module(module), name)
    assert table and all(callable(entry) for entry in table.values())
    first = next(iter(table))
    with pytest.raises(ValueError, match=f"{first!r} is already registered"):
        table[first] = table[first]
    with pytest.raises(TypeError, match="a function"):
        table["new_entry"] = "some.module:function"
    assert "new_entry" not in table


def test_the_data_backend_registry_refuses_a_duplicate_name_and_holds_functions():
    import pipelines  # noqa: F401 - importing the package registers its backends
    from pipelines import backends

    assert {"ffcv", "dali", "torchvision"} <= set(backends.BACKENDS)
    for entry in backends.BACKENDS.values():
        assert callable(entry.crops) and callable(entry.eval_crops)
    name, entry = next(iter(backends.BACKENDS.items()))
    with pytest.raises(ValueError, match="already registered"):
        backends.register(name, entry)
    assert backends.BACKENDS[name] is entry
