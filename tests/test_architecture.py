"""The import rule of docs/ARCHITECTURE.md, checked over the AST of every product module (adrt/, train/,
export/, runtime/), function-level imports included:

    cli -> bench, cluster -> export -> train -> torch-free library (data, metrics, evaluate, synth, triton)
        -> runtime -> contract (contract, outputs) -> base (errors, _version, _checks, the adrt package)

A module may import modules of its own layer or of a layer to the right, never to the left. There are no
import cycles, function-level imports included (the training registry names its methods by module path and
imports them on first use; the methods never import the registry's lookup).
Every runtime-side module imports with torch made unimportable and loads no training, export, bench or CLI
code. The graph is read by benchmarks/architecture.py (the same code that measures the structure figures).
"""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("architecture", ROOT / "benchmarks" / "architecture.py")
A = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(A)

# Left to right: a module may import its own layer and the layers after it.
LAYERS = [
    ("cli", ["adrt.cli"]),
    ("bench", ["adrt.bench", "adrt.cluster"]),
    ("export", ["adrt.export"]),
    ("train", ["adrt.train"]),
    ("library", ["adrt.data", "adrt.metrics", "adrt.evaluate", "adrt.synth", "adrt.synth_pairs", "adrt.thresholds",
                 "adrt.triton"]),
    ("runtime", ["adrt.runtime"]),
    ("contract", ["adrt.contract", "adrt.outputs"]),
    ("base", ["adrt", "adrt._version", "adrt.errors", "adrt._checks"]),
]
RUNTIME_SIDE = ("runtime", "contract", "base")


def layer(module: str) -> int:
    """Index into LAYERS (0 = cli); the longest matching prefix wins."""
    best = None
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if module == p or module.startswith(p + "."):
                if best is None or len(p) > best[1]:
                    best = (i, len(p))
    if best is None:
        raise AssertionError(f"{module}: in no layer of LAYERS; add it where it belongs")
    return best[0]


def graph():
    mods = A.product_modules()
    known = set(mods)
    out = {}
    for name, path in mods.items():
        top, late, _ = A.imports(name, path, known)
        out[name] = (top, late)
    return mods, out


def violations(edges) -> list[str]:
    return [f"{a} ({LAYERS[layer(a)][0]}) imports {b} ({LAYERS[layer(b)][0]})" for a, b in edges if layer(b) < layer(a)]


def test_every_module_has_a_layer_and_imports_go_one_way():
    _, g = graph()
    edges = [(a, b) for a, (top, late) in g.items() for b in top | late]
    assert len(edges) > 100
    assert violations(edges) == []


def test_checker_catches_a_wrong_way_import():
    assert violations([("adrt.runtime.session", "adrt.train.fit"), ("adrt.train.fit", "adrt.runtime.session"),
                       ("adrt.bench.harness", "adrt.cli.bundle")]) == [
        "adrt.runtime.session (runtime) imports adrt.train.fit (train)",
        "adrt.bench.harness (bench) imports adrt.cli.bundle (cli)"]
    assert A.cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles():
    _, g = graph()
    assert A.cycles({a: top for a, (top, _) in g.items()}) == []
    assert A.cycles({a: top | late for a, (top, late) in g.items()}) == []


def runtime_side_modules() -> list[str]:
    mods, _ = graph()
    return sorted(m for m in mods if LAYERS[layer(m)][0] in RUNTIME_SIDE)


def test_runtime_side_is_found():
    names = set(runtime_side_modules())
    assert {"adrt.runtime.session", "adrt.runtime.bundle", "adrt.runtime.cuda", "adrt.runtime.tensorrt",
            "adrt.contract", "adrt.errors"} <= names
    assert not any(n.startswith(("adrt.bench", "adrt.train", "adrt.cli")) for n in names)


def test_every_runtime_module_imports_without_torch_or_training_code():
    code = ("import importlib, json, sys\n"
            "sys.modules['torch'] = None\n"        # `import torch` raises ImportError
            f"failed = {{}}\n"
            f"for m in {runtime_side_modules()!r}:\n"
            "    try:\n        importlib.import_module(m)\n"
            "    except ImportError as e:\n        failed[m] = str(e)\n"
            "heavy = sorted(n for n in sys.modules if n.startswith(('adrt.train', 'adrt.export', 'adrt.bench', "
            "'adrt.cli', 'torch')) and sys.modules[n] is not None)\n"
            "print(json.dumps({'failed': failed, 'heavy': heavy}))")
    out = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                    check=True).stdout.strip().splitlines()[-1])
    # cffi is the C API's optional dependency (adrt[capi]); nothing else may be missing.
    failed = {m: e for m, e in out["failed"].items() if "cffi" not in e}
    assert failed == {} and out["heavy"] == []


@pytest.mark.parametrize("name", [n for n, _ in LAYERS])
def test_layer_is_not_empty(name):
    mods, _ = graph()
    assert any(LAYERS[layer(m)][0] == name for m in mods)


def test_every_method_folder_has_the_same_files():
    # One shape per method: the class in __init__.py, the graph in model.py, training in fit.py, and
    # the registry names it by module path (adrt.train.registry.BUILTIN).
    from adrt.train.registry import BUILTIN

    for name, target in BUILTIN.items():
        folder = ROOT / "train" / target.split(":")[0].split(".")[-1]
        missing = [f for f in ("__init__.py", "model.py", "fit.py") if not (folder / f).is_file()]
        assert not missing, f"method {name}: {folder} lacks {missing}"
