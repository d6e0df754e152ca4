"""The shape of cluster/: no import circle and no source file over 600 lines.

Every import counts, wherever it stands: at the top, under ``if TYPE_CHECKING:``,
or inside a function (imported late to save start-up time is still a
dependency).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster"
PACKAGE = "raftmq.cluster"
MAX_LINES = 600


def module_name(path: Path) -> str:
    parts = path.relative_to(CLUSTER).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join((PACKAGE, *parts))


def imports(path: Path, modules: set[str]) -> set[str]:
    """The modules of ``modules`` that ``path`` imports, anywhere in it."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        else:
            continue
        found.update(t for t in targets if t in modules and t != name)
    return found


def graph() -> dict[str, set[str]]:
    paths = sorted(CLUSTER.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    return {module_name(p): imports(p, modules) for p in paths}


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One circle through each module that is on one (depth-first search)."""
    found: list[list[str]] = []
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            found.append([*path[path.index(module) :], module])
            return
        if module in done:
            return
        for target in sorted(edges[module]):
            visit(target, [*path, module])
        done.add(module)

    for module in sorted(edges):
        visit(module, [])
    return found


def test_the_import_graph_sees_relative_lazy_and_type_checking_imports() -> None:
    edges = graph()
    assert "raftmq.cluster.forwarding.frames" in edges["raftmq.cluster.forwarding.link"]
    assert "raftmq.cluster.assemble" in edges["raftmq.cluster.cli.node"], "a lazy import"
    type_only = edges["raftmq.cluster.replication.replicated"]
    assert "raftmq.cluster.forwarding.transport" in type_only, "under TYPE_CHECKING"
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]


def test_no_import_circle_in_cluster() -> None:
    assert circles(graph()) == []


def test_no_source_file_in_cluster_is_over_600_lines() -> None:
    long = {
        str(path.relative_to(ROOT)): lines
        for path in CLUSTER.rglob("*.py")
        if (lines := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}
