"""List import cycles among the lego_studio modules, from their source (nothing is imported).

    python scripts/import_cycles.py            # module-level cycles, then cycles through imports inside functions

Imports under ``if TYPE_CHECKING:`` do not count; a package's import of its own modules does not
either. Exit status 1 when there is a cycle (tests/test_layout.py runs it too).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def modules(root: Path = ROOT) -> dict[str, Path]:
    found = {}
    for path in (root / "lego_studio").rglob("*.py"):
        name = ".".join(path.relative_to(root).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def _targets(mods: dict[str, Path], current: str, node) -> list[str]:
    """The lego_studio modules an import statement in ``current`` names."""
    names = []
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            parts = current.split(".")
            parts = parts if mods[current].name == "__init__.py" else parts[:-1]
            parts = parts[: len(parts) - (node.level - 1)]
            base = ".".join(parts + ([base] if base else []))
        names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in mods else base for alias in node.names]
    found = []
    for name in names:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        if name and name != current and not current.startswith(name + "."):
            found.append(name)
    return found


def import_graph(root: Path = ROOT) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(module-level imports, imports inside functions): module -> the lego_studio modules it imports."""
    mods = modules(root)
    top: dict[str, set[str]] = {m: set() for m in mods}
    lazy: dict[str, set[str]] = {m: set() for m in mods}

    def walk(module: str, node, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                (lazy if in_function else top)[module].update(_targets(mods, module, child))
            walk(module, child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    for module, path in mods.items():
        walk(module, ast.parse(path.read_text(encoding="utf-8")), False)
    return top, lazy


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10000))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def main() -> int:
    top, lazy = import_graph()
    both = {m: top[m] | lazy[m] for m in top}
    module_level, with_lazy = cycles(top), cycles(both)
    print("module-level import cycles:", "none" if not module_level else "")
    for cycle in module_level:
        print("  " + " <-> ".join(cycle))
    print("cycles counting imports inside functions:", "none" if not with_lazy else "")
    for cycle in with_lazy:
        print("  " + " <-> ".join(cycle))
    return 1 if with_lazy else 0


if __name__ == "__main__":
    raise SystemExit(main())
