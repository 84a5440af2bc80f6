"""The search package has no import cycle, lazy (function-level) imports included: shared code
lives with its one owner instead of behind an import inside a function."""

from __future__ import annotations

import ast
import graphlib
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "search"
# A module or a subpackage (search/gpu_memory/): a subpackage counts as one node, its files'
# imports together.
MODULES = sorted(
    [p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"]
    + [p.parent.name for p in PACKAGE.glob("*/__init__.py")]
)


def _files(module: str) -> list[Path]:
    single = PACKAGE / f"{module}.py"
    return [single] if single.is_file() else sorted((PACKAGE / module).glob("*.py"))


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of `graph` (the standard library's topological sort finds it), or None."""
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as err:
        return list(err.args[1])
    return None


def _imports(module: str) -> set[str]:
    """search modules `module` imports anywhere in its file, lazy imports included."""
    found = set()
    nodes = (n for f in _files(module) for n in ast.walk(ast.parse(f.read_text())))
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found |= {n.split(".")[1] for n in names if n.startswith("search.")}
    return found & set(MODULES)


def test_the_search_import_graph_has_no_cycle():
    graph = {m: _imports(m) - {m} for m in MODULES}
    assert _cycle(graph) is None, _cycle(graph)
    # The two cycles this replaced: the packing estimate and the W&B callback's factory.
    assert "resources" not in graph["gpu_memory"] and "wandb_callback" not in graph["tracking"]


def test_a_lazy_import_counts_as_an_edge(tmp_path, monkeypatch):
    # Guards the test above against an import walk that sees only the top of a file.
    (tmp_path / "a.py").write_text("def f():\n    from search.b import g\n")
    (tmp_path / "b.py").write_text("from search import a\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "MODULES", ["a", "b"])
    graph = {m: _imports(m) for m in ("a", "b")}
    assert sorted(set(_cycle(graph))) == ["a", "b"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
