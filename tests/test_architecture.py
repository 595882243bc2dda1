"""The package's shape: imports point one way (no cycles, counting imports inside functions and under
TYPE_CHECKING), and ``import vaekit`` stays light."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import vaekit

PACKAGE = Path(vaekit.__file__).parent


def module_files() -> dict[str, Path]:
    mods = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


def import_graph() -> dict[str, set[str]]:
    """module -> the vaekit modules it imports anywhere in its body. ``from pkg import name`` points at
    pkg.name when that is a module, else at pkg; a package's implicit import by its submodules is
    Python's mechanism, not an edge."""
    mods = module_files()

    def resolve(name: str) -> str:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name

    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [resolve(a.name) for a in node.names if a.name.split(".")[0] == "vaekit"]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package
                    for _ in range(node.level - 1):
                        anchor = anchor.rpartition(".")[0]
                    base = f"{anchor}.{base}" if base else anchor
                if base.split(".")[0] == "vaekit":
                    targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else resolve(base) for a in node.names]
            graph[mod].update(t for t in targets if t and t != mod)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_walker_sees_local_and_type_checking_imports():
    graph = import_graph()
    assert "vaekit.protocol" in graph["vaekit.objectives.iwae"]  # under TYPE_CHECKING
    assert "vaekit.cli.commands" in graph["vaekit.cli.main"]  # inside build_parser()
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles():
    found = cycles(import_graph())
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_objectives_depend_on_the_step_protocol_not_the_trainer():
    graph = import_graph()
    for mod, targets in graph.items():
        if mod.startswith("vaekit.objectives"):
            assert not {t for t in targets if t.startswith("vaekit.training.trainer")}, mod
    assert "vaekit.protocol" in graph["vaekit.training.trainer"]
    for mod in ("vaekit.evaluation.likelihood", "vaekit.training.trainer"):
        assert not {t for t in graph[mod] if t.startswith("vaekit.objectives")}, mod


def test_import_vaekit_and_building_the_cli_parser_stay_light():  # `vaekit --help` is instant
    code = "import sys, vaekit.cli.main as m; m.build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
