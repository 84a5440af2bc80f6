"""Every trainables module imports on its own, in a fresh interpreter, and the package has no
import cycle (config in particular never imports models)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "trainables"
# A module or a subpackage (trainables/experiment/): a subpackage counts as one node, its
# files' imports together.
MODULES = sorted(
    [p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"]
    + [p.parent.name for p in PACKAGE.glob("*/__init__.py")]
)


def _files(module: str) -> list[Path]:
    single = PACKAGE / f"{module}.py"
    return [single] if single.is_file() else sorted((PACKAGE / module).glob("*.py"))


def _imports(module: str) -> set[str]:
    """trainables modules `module` imports anywhere in its file, lazy imports included."""
    found = set()
    nodes = (n for f in _files(module) for n in ast.walk(ast.parse(f.read_text())))
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found |= {n.split(".")[1] for n in names if n.startswith("trainables.")}
    return found & set(MODULES)


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of `graph` as a path [a, b, ..., a], or None (depth-first search)."""
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return path[path.index(nxt) :] + [nxt] if nxt in path else [node, nxt]
            if nxt not in state and (found := visit(nxt, [*path, nxt])):
                return found
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def test_the_trainables_import_graph_has_no_cycle():
    graph = {m: _imports(m) - {m} for m in MODULES}
    # The old config <-> models cycle hid behind a lazy import; lazy imports count here too.
    assert _cycle(graph) is None, _cycle(graph)
    assert "models" not in graph["config"] and graph["vocab"] == set()


def test_the_cycle_finder_finds_a_cycle():
    # Guards the test above against a finder that never reports anything.
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


# Imports every trainables module alone: a parent process preloads the third-party libraries
# (importing torch ten times over would cost about a minute of CPU on 2 cores), then forks one
# child per module, in which no trainables module has been imported yet.
_FORK_PROBE = """
import json, os, sys
import numpy, PIL.Image, safetensors.torch, sklearn.metrics, torch, torchvision
results = {}
for module in sys.argv[1:]:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            __import__("trainables." + module)
            out = {"ok": True, "modules": sorted(sys.modules)}
        except BaseException as err:
            out = {"ok": False, "error": f"{type(err).__name__}: {err}"}
        os.write(write, json.dumps(out).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as fh:
        results[module] = json.loads(fh.read())
    os.waitpid(pid, 0)
print(json.dumps(results))
"""


def _fresh_imports(modules: list[str]) -> dict[str, dict]:
    """module -> {'ok', 'modules' (sys.modules after importing it alone) or 'error'}."""
    out = subprocess.run(
        [sys.executable, "-c", _FORK_PROBE, *modules],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_each_module_imports_alone_without_search_libraries():
    results = _fresh_imports([*MODULES, "no_such_module"])
    # Guards the probe itself: a module that cannot be imported comes back as a failure.
    assert results.pop("no_such_module")["ok"] is False
    assert sorted(results) == MODULES  # every module was tried
    failed = {m: r["error"] for m, r in results.items() if not r["ok"]}
    assert not failed, failed  # e.g. a circular import shows up here as an ImportError
    search_side = {
        m: [x for x in r["modules"] if x.split(".")[0] in ("ray", "optuna", "wandb")]
        for m, r in results.items()
    }
    # trainables/ stays plain PyTorch: nothing of Ray, Optuna or W&B comes with any module.
    assert not any(search_side.values()), search_side


def test_config_imports_neither_models_nor_torch():
    code = "import json, sys, trainables.config; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    loaded = json.loads(out.stdout)
    # TrialConfig validates against trainables.vocab's names (and the class map's plain-Python
    # rules), so it needs no registry module.
    assert [m for m in loaded if m.startswith("trainables.")] == [
        "trainables.classes",
        "trainables.config",
        "trainables.vocab",
    ]
    assert "torch" not in loaded
