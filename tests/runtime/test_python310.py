"""The runtime must run on JetPack 6's Python 3.10; CI runs a newer Python, so check the source itself.

Every adrt module that importing the runtime (and its optional backends) pulls in must parse as Python 3.10
and must not use standard-library names added in 3.11+. The module list is taken from a real import, so a
module that a refactor adds to the runtime's import closure is checked without editing this test.
"""
import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

# Imported for their import closure: every module under runtime/ (found on disk, so a new one is checked
# without editing this test); the TensorRT modules import tensorrt/pycuda lazily, so they load here.
_RUNTIME = Path(__file__).resolve().parents[2] / "runtime"
RUNTIME_ENTRY = sorted("adrt.runtime" + "".join("." + p for p in f.relative_to(_RUNTIME).with_suffix("").parts
                                                  if p != "__init__")
                       for f in _RUNTIME.rglob("*.py"))

# Standard-library names that appeared in 3.11 or later (a small list of the ones a runtime would reach for).
NEWER_NAMES = {
    ("tomllib", None), ("datetime", "UTC"), ("typing", "Self"), ("typing", "LiteralString"),
    ("typing", "Never"), ("typing", "assert_never"), ("typing", "reveal_type"), ("typing", "override"),
    ("enum", "StrEnum"), ("enum", "verify"), ("hashlib", "file_digest"), ("asyncio", "TaskGroup"),
    ("contextlib", "chdir"), ("operator", "call"), ("itertools", "batched"), ("builtins", "ExceptionGroup"),
}


def runtime_sources():
    code = ("import importlib, json, sys\n"
            f"for m in {RUNTIME_ENTRY!r}:\n"
            "    try:\n        importlib.import_module(m)\n    except ModuleNotFoundError as e:\n"
            "        if not e.name.startswith('adrt'): raise\n"
            "print(json.dumps(sorted(getattr(m, '__file__', None) or '' for n, m in sys.modules.items()"
            " if n == 'adrt' or n.startswith('adrt.'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return [Path(p) for p in json.loads(out) if p.endswith(".py")]


def newer_uses(tree):
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if (a.name, None) in NEWER_NAMES]
        elif isinstance(node, ast.ImportFrom) and node.module:
            found += [f"{node.module}.{a.name}" for a in node.names if (node.module, a.name) in NEWER_NAMES]
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if (node.value.id, node.attr) in NEWER_NAMES:
                found.append(f"{node.value.id}.{node.attr}")
        elif isinstance(node, ast.Name) and ("builtins", node.id) in NEWER_NAMES:
            found.append(node.id)
    return found


def test_runtime_closure_is_found():
    names = {p.name for p in runtime_sources()}
    assert {"session.py", "bundle.py", "contract.py", "errors.py"} <= names


@pytest.mark.parametrize("path", runtime_sources(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_runtime_module_is_python310(path):
    source = path.read_text()
    tree = ast.parse(source, filename=str(path), feature_version=(3, 10))  # SyntaxError names the line
    assert newer_uses(tree) == [], f"{path}: uses names added after Python 3.10"


def test_checker_catches_newer_python():
    # The check itself must be able to fail: 3.11 syntax and a 3.11 name are both caught.
    with pytest.raises(SyntaxError):
        ast.parse("try:\n    pass\nexcept* ValueError:\n    pass\n", feature_version=(3, 10))
    assert newer_uses(ast.parse("import tomllib\nfrom enum import StrEnum\nx = datetime.UTC")) == [
        "tomllib", "enum.StrEnum", "datetime.UTC"]
