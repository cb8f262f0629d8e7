"""pipelines.backends: one registry entry per backend folder, holding functions (no "module:function"
strings), refusing a duplicate name; the converter reads each format's writer half from it instead
of branching on format names; importing the package and its registry imports no backend library."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import pipelines
from pipelines.backends import BACKENDS, Backend, Writer, backend, formats, register

CONVERT = Path(pipelines.__file__).parent / "convert"


def test_a_second_registration_of_a_name_raises_and_keeps_the_first():
    first = BACKENDS["torchvision"]
    with pytest.raises(ValueError, match="data backend 'torchvision' is already registered"):
        register("torchvision", Backend(crops=print, eval_crops=print))
    assert backend("torchvision") is first


def test_entries_hold_functions_and_the_converted_formats_have_a_writer():
    for name, entry in BACKENDS.items():
        assert callable(entry.crops) and callable(entry.eval_crops), name
        if entry.writer is not None:
            assert isinstance(entry.writer, Writer)
            assert all(callable(f) for f in (entry.writer.pack, entry.writer.check_files, entry.writer.verify))
    assert formats() == ("ffcv", "dali") and not backend("torchvision").converted


def test_importing_pipelines_and_its_registry_imports_no_backend_library_nor_torch():
    code = ("import sys, pipelines, pipelines.backends, pipelines.convert, pipelines.convert.options; "
            "print(sorted(m for m in ('torch', 'ffcv', 'nvidia.dali', 'cv2', 'numba') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _format_names_in_code(path: Path) -> list[str]:
    """String constants naming a format ("ffcv", "dali") outside docstrings."""
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef)) and node.body
                  and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    return [f"{path.name}:{node.lineno}: {node.value!r}" for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and node.value in ("ffcv", "dali") and id(node) not in docstrings]


def test_the_converter_never_branches_on_a_format_name():
    found = [hit for path in sorted(CONVERT.glob("*.py")) for hit in _format_names_in_code(path)]
    assert found == []
    assert _format_names_in_code(Path(pipelines.__file__).parent / "ffcv_backend" / "__init__.py")  # sees them
