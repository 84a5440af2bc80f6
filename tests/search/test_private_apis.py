"""Third-party private attributes used in search/, listed by walking the code (AST): an attribute
with one leading underscore on anything but `self`/`cls`, the same name in getattr/setattr/
hasattr/delattr, and a private name imported from Ray, Optuna or W&B. Each one allowed is listed
below with the library version it was checked against and why no public API does; a new one
fails this test until it is added here (and its function says why)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "search"
LIBRARIES = ("ray", "optuna", "wandb")
REFLECTION = ("getattr", "setattr", "hasattr", "delattr")

RAY = "Ray 2.60.0"
# (module, name) -> (library checked, why). The version in pyproject.toml bounds each library.
DOCUMENTED: dict[tuple[str, str], tuple[str, str]] = {
    ("cli.py", "_get_help_string"): (
        "Python argparse",
        "HelpFormatter subclasses override it: argparse's documented extension point",
    ),
    ("storage.py", "_replace"): ("Python urllib", "namedtuple's public method (SplitResult)"),
    ("tuner.py", "_local_tuner"): (RAY, "no public way to replace a restored Tuner's callbacks"),
    # search/ray_checkpoints.py: the two resume repairs of a trial's checkpoints in Ray's saved
    # trial table (a checkpoint written after Ray's last save; Ray's stale-checkpoint issue).
    ("ray_checkpoints.py", "_checkpoint_results"): (RAY, "a trial's saved checkpoint list"),
    ("ray_checkpoints.py", "_latest_checkpoint_result"): (RAY, "the checkpoint a trial resumes"),
    ("ray_checkpoints.py", "_TrainingResult"): (RAY, "ray.train._internal: a checkpoint's result"),
}


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _uses(source: str) -> set[str]:
    """Private third-party names one module's source uses."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            if not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                found.add(node.attr)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            args = node.args[1:2]
            if node.func.id in REFLECTION and args and isinstance(args[0], ast.Constant):
                if isinstance(args[0].value, str) and _private(args[0].value):
                    found.add(args[0].value)
        elif isinstance(node, ast.ImportFrom) and node.module:
            parts = node.module.split(".")
            if parts[0] in LIBRARIES:
                inside = any(_private(p) for p in parts)
                found |= {a.name for a in node.names if inside or _private(a.name)}
    return found


def test_only_the_documented_private_apis_are_used():
    files = sorted(PACKAGE.rglob("*.py"))  # subpackages too (search/gpu_memory/)
    used = {(p.relative_to(PACKAGE).as_posix(), n) for p in files for n in _uses(p.read_text())}
    assert used - set(DOCUMENTED) == set(), "undocumented private API use: add it here with why"
    # A use that is gone leaves the list too, so the list stays the truth.
    assert set(DOCUMENTED) - used == set()
    assert all(version and why for version, why in DOCUMENTED.values())


def test_the_walk_finds_each_kind_of_private_use():
    # Guards the test above against a walk that finds nothing.
    source = (
        "from ray.train._internal.storage import exists\n"
        "from ray.air import _Hidden, Public\n"
        "def f(study, self):\n"
        "    self._mine, study.__dict__\n"
        "    getattr(study, '_backend', None)\n"
        "    return study._storage\n"
    )
    assert _uses(source) == {"exists", "_Hidden", "_backend", "_storage"}
