"""cxr-tune: one command (`cxr-tune`, see `cxr_tune.cli`) over the project's modules.

This package imports nothing from the project at import time, so `search/`, `analysis/` and
`trainables/` keep their one-way flow; it only dispatches to their `main(argv)` functions.
"""

from __future__ import annotations

import gc
import shlex
import subprocess
import sys
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
"""The folder the project's packages (`cxr_tune`, `search`, `trainables`, `analysis`) are
imported from: the checkout, or site-packages when installed. Subprocesses and Ray's trial
workers import them from here, whatever the user's working folder holds."""
PACKAGE = "cxr-tune"

try:
    __version__ = metadata.version(PACKAGE)
except metadata.PackageNotFoundError:  # run from a checkout that was never installed
    __version__ = "0+unknown"


def code_version() -> dict[str, str | None]:
    """What made a result: the package, its version, and the git commit (with '-dirty' when
    tracked files changed) only when the code runs from the project's own checkout, i.e. `REPO`
    is the top of a git work tree. An installed copy inside someone else's repository (a venv
    in the user's project) has no commit of its own: None there."""
    return {"package": PACKAGE, "version": __version__, "git_commit": _checkout_commit()}


def version_label(version: dict[str, str | None]) -> str:
    """`code_version()` in one word, as the experiment record and W&B carry it:
    `0.1.0+g048edb3.dirty` from a checkout, `0.1.0` installed."""
    commit = version.get("git_commit")
    if not commit:
        return str(version.get("version"))
    sha, dirty = commit.removesuffix("-dirty"), commit.endswith("-dirty")
    return f"{version.get('version')}+g{sha[:7]}{'.dirty' if dirty else ''}"


def _checkout_commit() -> str | None:
    try:
        top = _git("rev-parse", "--show-toplevel")
        if Path(top).resolve() != REPO:  # a repository around an installed copy is not ours
            return None
        commit = _git("rev-parse", "HEAD")
        dirty = _git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}-dirty" if dirty else commit


def _git(*args: str) -> str:
    proc = subprocess.run(
        ["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=5, check=True
    )
    return proc.stdout.strip()


COMMAND_PREFIX = "cxr-tune "  # `cxr_tune.cli` sets sys.argv[0] to "cxr-tune COMMAND"


def prog(module: str) -> str:
    """The program name a module's parser shows in usage and errors: the `cxr-tune COMMAND`
    that runs it, else `python -m MODULE`."""
    return sys.argv[0] if sys.argv[0].startswith(COMMAND_PREFIX) else f"python -m {module}"


def typed_command() -> str:
    """This process's command line as the user typed it, shell-quoted: `cxr-tune sweep ...`
    (`cxr_tune.cli` sets sys.argv so), else `python -m MODULE ...` or the script's name."""
    if sys.argv[0].startswith(COMMAND_PREFIX):
        return " ".join([sys.argv[0], *map(shlex.quote, sys.argv[1:])])
    typed = list(getattr(sys, "orig_argv", []) or [sys.executable, *sys.argv])
    typed[0] = Path(typed[0]).name  # python, not the interpreter's full path
    return shlex.join(typed)


def exit_status(main: Callable[[], int | None]) -> int:
    """`sys.exit(exit_status(main))`: a command's status, and an exit that skips the last
    garbage collection of everything torch, Ray and pandas loaded (1-2 s of a sweep's driver).

    `gc.freeze` moves the live objects out of the collector's reach, also when `main` refuses
    with SystemExit, so the interpreter's shutdown frees them by reference count only. Files,
    runs and Ray are closed by then (each command closes what it opened), and atexit handlers
    still run."""
    try:
        return int(main() or 0)
    finally:
        gc.freeze()
