"""Structure figures of the product code (issue #18): long modules, function-level imports, import cycles,
copy-pasted blocks. Reads the source as text/AST; imports nothing from adrt.

Product code is every .py file under the folders that make up the `adrt` import package (adrt/, train/,
export/, runtime/, and adrt/bench, adrt/cli once they exist). A function-level import is an import
statement inside a def. Import cycles are the strongly connected components (more than one module) of
the graph of module-level `adrt.*` imports (a package's __init__ counts as a module of its own), and
again with the function-level imports added (the cycles that deferred imports only hide).

    python benchmarks/architecture.py [--label before] [--out benchmarks/results/architecture_before]
"""
from __future__ import annotations

import argparse
import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import write_report  # noqa: E402

FOLDERS = {"adrt": "adrt", "train": "adrt.train", "export": "adrt.export", "runtime": "adrt.runtime"}
LONG = 400


def product_modules() -> dict[str, Path]:
    """Module name -> file, for every product .py file."""
    out = {}
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            name = ".".join([package, *parts]) if parts else package
            out[name] = path
    return out


def _resolve(module: str, node: ast.ImportFrom, is_pkg: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_pkg else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports(module: str, path: Path, known: set[str]) -> tuple[set[str], set[str], int]:
    """(adrt modules imported at module level, those imported inside functions, the number of import
    statements inside functions)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    top: set[str] = set()
    inner: set[str] = set()
    nested = 0
    is_pkg = path.name == "__init__.py"

    def targets(node) -> set[str]:
        names = set()
        if isinstance(node, ast.Import):
            names = {a.name for a in node.names}
        else:
            base = _resolve(module, node, is_pkg)
            names = {f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names}
        found = set()
        for n in names:
            while n and n not in known:
                n = n.rpartition(".")[0]
            if n:
                found.add(n)
        return found

    def walk(node, in_func: bool):
        nonlocal nested
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                if in_func:
                    nested += 1
                    inner.update(targets(child))
                else:
                    # `if TYPE_CHECKING:` imports do not run; they still count as a dependency here.
                    top.update(targets(child))
            walk(child, in_func or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    walk(tree, False)
    top.discard(module)
    inner.discard(module)
    return top, inner - top, nested


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def duplicate_pairs() -> list[str]:
    """`duplicates` rows whose both sides are product code."""
    text = subprocess.run(["duplicates", "--most", "200", "--seconds", "120", "--repo", str(ROOT)],
                          capture_output=True, text=True, check=True).stdout
    rows = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[2] == "~":
            sides = [parts[1].split(":")[0], parts[3].split(":")[0]]
            if all(s.split("/")[0] in FOLDERS and s.endswith(".py") for s in sides):
                rows.append(line)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--label", default="now")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    mods = product_modules()
    known = set(mods)
    graph, late, nested = {}, {}, {}
    for name, path in mods.items():
        graph[name], late[name], nested[name] = imports(name, path, known)
    full = {n: graph[n] | late[n] for n in graph}
    cyc_all = cycles(full)
    lines = {name: len(path.read_text().splitlines()) for name, path in mods.items()}
    long = sorted(((n, c) for n, c in lines.items() if c > LONG), key=lambda x: -x[1])
    cyc = cycles(graph)
    dups = duplicate_pairs()
    report = {"label": args.label, "modules": len(mods), "lines": sum(lines.values()),
              "over_400": [[str(mods[n].relative_to(ROOT)), c] for n, c in long],
              "function_level_imports": sum(nested.values()), "import_cycles": cyc,
              "import_cycles_with_function_level": cyc_all,
              "duplicate_pairs": len(dups)}
    md = [f"## Structure figures ({args.label})", "",
          f"- product modules: {len(mods)}, {sum(lines.values())} lines",
          f"- modules over {LONG} lines: {len(long)}: " + ", ".join(f"`{mods[n].relative_to(ROOT)}` {c}" for n, c in long),
          f"- function-level imports: {sum(nested.values())}",
          f"- import cycles (module-level): {len(cyc)}" + "".join(f"\n  - {' <-> '.join(c)}" for c in cyc),
          f"- import cycles counting function-level imports too: {len(cyc_all)}"
          + "".join(f"\n  - {' <-> '.join(c)}" for c in cyc_all),
          f"- `duplicates` pairs within product code: {len(dups)}" + "".join(f"\n  - {d}" for d in dups), ""]
    text = "\n".join(md)
    if args.out:
        write_report(args.out, report, text)
    else:
        print(text)


if __name__ == "__main__":
    main()
