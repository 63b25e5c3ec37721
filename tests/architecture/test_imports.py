"""The package structure holds: no import cycles (function-level imports included), and only the CLI imports the runner.

Imports are read with ``ast`` from every module of the four packages; an
import inside ``if TYPE_CHECKING:`` does not run, so it does not count.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("orchestrator", "nodes", "analysis", "firmware_bridge")


def _modules() -> dict[str, Path]:
    out = {}
    for top in PACKAGES:
        for p in (REPO / top).rglob("*.py"):
            rel = p.relative_to(REPO).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out["hilbed." + ".".join(parts)] = p
    return out


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or \
        (isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _imports(path: Path, module: str, is_pkg: bool) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = module.split(".") if is_pkg else module.split(".")[:-1]
                pkg = pkg[:len(pkg) - (node.level - 1)]
                base = ".".join(pkg + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def import_graph() -> dict[str, set[str]]:
    mods = _modules()
    graph = {}
    for name, path in mods.items():
        targets = {t for t in _imports(path, name, path.name == "__init__.py") if t in mods}
        # `from pkg import submodule` names both; keep the submodule only (the package itself runs either way)
        graph[name] = {t for t in targets if not any(o.startswith(t + ".") for o in targets)} - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
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
    return out


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    found = cycles(import_graph())
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_only_the_front_ends_import_the_runner():
    """The CLI (scheduled runs included), the pytest plugin and the several-bench coordinator (which runs one
    runner per bench) start runs; nothing below them knows the runner."""
    graph = import_graph()
    importers = sorted(m for m, deps in graph.items() if "hilbed.orchestrator.run.runner" in deps)
    fronts = ("hilbed.orchestrator.pytest_plugin", "hilbed.orchestrator.run.benches")
    assert importers and all(m.startswith("hilbed.orchestrator.cli") or m in fronts for m in importers), importers


def test_nodes_never_import_the_controller_side():
    """Agents run on Raspberry Pis with the base install: nothing in nodes/ or firmware_bridge/ may need the controller."""
    graph = import_graph()
    bad = sorted((m, d) for m, deps in graph.items() if m.startswith(("hilbed.nodes", "hilbed.firmware_bridge"))
                 for d in deps if d.startswith(("hilbed.orchestrator", "hilbed.analysis")))
    assert not bad, bad
