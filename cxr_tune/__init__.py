"""cxr-tune: one command (`cxr-tune`, see `cxr_tune.cli`) over the project's modules.

This package imports nothing from the project at import time, so `search/`, `analysis/` and
`trainables/` keep their one-way flow; it only dispatches to their `main(argv)` functions.
"""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

try:
    __version__ = metadata.version("cxr-tune")
except metadata.PackageNotFoundError:  # run from a checkout that was never installed
    __version__ = "0+unknown"


def code_version() -> str:
    """The package version plus, in a git checkout, the commit and whether the tree was dirty
    (`0.1.0+g048edb3.dirty`): what the experiment record and W&B config carry."""
    try:
        sha = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return __version__
    return f"{__version__}+g{sha}{'.dirty' if dirty else ''}" if sha else __version__


COMMAND_PREFIX = "cxr-tune "  # `cxr_tune.cli` sets sys.argv[0] to "cxr-tune COMMAND"


def prog(module: str) -> str:
    """The program name a module's parser shows in usage and errors: the `cxr-tune COMMAND`
    that runs it, else `python -m MODULE`."""
    return sys.argv[0] if sys.argv[0].startswith(COMMAND_PREFIX) else f"python -m {module}"
