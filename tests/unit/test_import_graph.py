"""The shape of node/ and cluster/: no import circle, counting every import,
and no source file over 600 lines.

The modules are parsed, not imported. An import counts wherever it stands:
at the top of the module, under ``if TYPE_CHECKING:``, or inside a function.
A circle is a strongly connected component of the import graph; the failure
names every component with one concrete cycle through it, each step with the
file and line of its import.

That nothing under node/ imports raftmq.cluster is checked in
test_cluster_boundary.py.
"""

from __future__ import annotations

import ast
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {"raftmq.node": ROOT / "node", "raftmq.cluster": ROOT / "cluster"}
"""Import name of each top folder; sub-folders are sub-packages of it."""
MAX_LINES = 600


@dataclass(frozen=True)
class Module:
    name: str
    path: Path
    is_package: bool
    """An ``__init__.py``: relative imports start from the module itself."""


def find_modules(packages: Mapping[str, Path]) -> dict[str, Module]:
    """Every .py file under the folders, by import name: ``cluster/a/b.py`` is ``prefix.a.b``."""
    modules: dict[str, Module] = {}
    for prefix, folder in packages.items():
        for path in sorted(folder.rglob("*.py")):
            parts = path.relative_to(folder).with_suffix("").parts
            is_package = parts[-1] == "__init__"
            if is_package:
                parts = parts[:-1]
            name = ".".join((prefix, *parts))
            modules[name] = Module(name, path, is_package)
    return modules


def _known(dotted: str, modules: Mapping[str, Module]) -> str | None:
    """The longest prefix of ``dotted`` that is one of ``modules``, if any."""
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


def imports_of(module: Module, modules: Mapping[str, Module]) -> Iterator[tuple[str, int]]:
    """(imported module, line) for every import in ``module`` of one of ``modules``.

    ``from X import y`` imports the module ``X.y`` if there is one, else ``X``.
    """
    tree = ast.parse(module.path.read_text(), str(module.path))
    for item in ast.walk(tree):
        if isinstance(item, ast.Import):
            for alias in item.names:
                target = _known(alias.name, modules)
                if target is not None:
                    yield target, item.lineno
        elif isinstance(item, ast.ImportFrom):
            if item.level:
                package = module.name if module.is_package else module.name.rpartition(".")[0]
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - (item.level - 1)])
                source = f"{base}.{item.module}" if item.module else base
            else:
                source = item.module or ""
            for alias in item.names:
                target = _known(f"{source}.{alias.name}", modules)
                if target is not None:
                    yield target, item.lineno


def import_graph(modules: Mapping[str, Module]) -> dict[str, dict[str, int]]:
    """Module -> {module it imports: line of the first such import}; self-imports left out."""
    graph: dict[str, dict[str, int]] = {}
    for name, module in modules.items():
        edges = graph[name] = {}
        for target, line in imports_of(module, modules):
            if target != name:
                edges.setdefault(target, line)
    return graph


def strongly_connected(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components, iteratively; each one sorted.

    Nodes that only appear as a target count as nodes without edges.
    """
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> Iterator[str]:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        return iter(sorted(graph.get(node, ())))

    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, visit(root))]
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    work.append((child, visit(child)))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component: list[str] = []
                    while not component or component[-1] != node:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                    components.append(sorted(component))
    return components


def circles(graph: Mapping[str, Iterable[str]]) -> list[tuple[list[str], list[str]]]:
    """Each circular component with one shortest cycle, ``[a, ..., a]``, through its first node."""
    found = []
    for component in strongly_connected(graph):
        start = component[0]
        if len(component) == 1 and start not in graph.get(start, ()):
            continue
        members = set(component)
        came_from: dict[str, str] = {}
        queue = deque([start])
        while queue:
            node = queue.popleft()
            children = sorted(graph.get(node, ()))
            if start in children:
                path = [start, node]
                while node != start:
                    node = came_from[node]
                    path.append(node)
                found.append((component, path[::-1]))
                break
            for child in children:
                if child in members and child not in came_from:
                    came_from[child] = node
                    queue.append(child)
    return found


def test_no_import_circle_in_node_or_cluster() -> None:
    modules = find_modules(PACKAGES)
    assert "raftmq.node.broker" in modules and "raftmq.cluster" in modules
    graph = import_graph(modules)
    assert "raftmq.node.broker" in graph["raftmq.node"], "node/__init__.py imports the broker"
    report = []
    for component, cycle in circles(graph):
        report.append(f"{len(component)} modules in a circle: {', '.join(component)}")
        report.append("  for example: " + " -> ".join(cycle))
        for source, target in pairwise(cycle):
            where = modules[source].path.relative_to(ROOT).as_posix()
            report.append(f"    {where}:{graph[source][target]} imports {target}")
    if report:
        pytest.fail(
            "import circles (TYPE_CHECKING and function-level imports count):\n" + "\n".join(report)
        )


def test_the_graph_sees_lazy_and_type_checking_imports_in_the_tree() -> None:
    graph = import_graph(find_modules(PACKAGES))
    assert "raftmq.cluster.assemble" in graph["raftmq.cluster.cli.node"], "a lazy import"
    type_only = graph["raftmq.cluster.replication.peers"]
    assert "raftmq.cluster.forwarding.inbox" in type_only, "under TYPE_CHECKING"


def test_no_source_file_over_600_lines() -> None:
    long = {
        module.path.relative_to(ROOT).as_posix(): lines
        for module in find_modules(PACKAGES).values()
        if (lines := len(module.path.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}


def test_cycle_finder_on_hand_made_graphs() -> None:
    circular = {
        "a": ["b"],
        "b": ["c", "d"],
        "c": ["a"],
        "d": ["e"],
        "e": [],
        "f": ["f"],
        "g": ["h"],
        "h": ["g", "e"],
    }
    assert strongly_connected(circular) == [["e"], ["d"], ["a", "b", "c"], ["f"], ["g", "h"]]
    assert [cycle for _, cycle in circles(circular)] == [
        ["a", "b", "c", "a"],
        ["f", "f"],
        ["g", "h", "g"],
    ]

    diamond = {"top": ["left", "right"], "left": ["bottom"], "right": ["bottom"]}
    assert sorted(strongly_connected(diamond)) == [["bottom"], ["left"], ["right"], ["top"]]
    assert circles(diamond) == []


def test_graph_resolves_every_kind_of_import(tmp_path: Path) -> None:
    files = {
        "node/__init__.py": "from .a import thing\n",
        "node/a.py": "import os\nfrom . import b\n",
        "node/b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .c import C\n",
        "node/c.py": "def later():\n    import pkg.node.a\n",
        "cluster/__init__.py": "",
        "cluster/sub/__init__.py": "from . import deep\n",
        "cluster/sub/deep.py": "from ..top import x\nfrom ...node import thing\n",
        "cluster/top.py": "from pkg.cluster.sub.deep import y\nfrom .sub import deep\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    modules = find_modules({"pkg.node": tmp_path / "node", "pkg.cluster": tmp_path / "cluster"})
    assert {name: m.is_package for name, m in modules.items()} == {
        "pkg.node": True,
        "pkg.node.a": False,
        "pkg.node.b": False,
        "pkg.node.c": False,
        "pkg.cluster": True,
        "pkg.cluster.sub": True,
        "pkg.cluster.sub.deep": False,
        "pkg.cluster.top": False,
    }
    graph = import_graph(modules)
    assert {name: sorted(edges) for name, edges in graph.items()} == {
        "pkg.node": ["pkg.node.a"],
        "pkg.node.a": ["pkg.node.b"],
        "pkg.node.b": ["pkg.node.c"],
        "pkg.node.c": ["pkg.node.a"],
        "pkg.cluster": [],
        "pkg.cluster.sub": ["pkg.cluster.sub.deep"],
        "pkg.cluster.sub.deep": ["pkg.cluster.top", "pkg.node"],
        "pkg.cluster.top": ["pkg.cluster.sub.deep"],
    }
    assert graph["pkg.node.b"] == {"pkg.node.c": 3}
    assert sorted(circles(graph)) == [
        (
            ["pkg.cluster.sub.deep", "pkg.cluster.top"],
            ["pkg.cluster.sub.deep", "pkg.cluster.top", "pkg.cluster.sub.deep"],
        ),
        (
            ["pkg.node.a", "pkg.node.b", "pkg.node.c"],
            ["pkg.node.a", "pkg.node.b", "pkg.node.c", "pkg.node.a"],
        ),
    ]
