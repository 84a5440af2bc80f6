"""`cxr-tune COMMAND ...`: one console script over the modules that do the work.

Each command is a module's `main(argv)`, which keeps working as `python -m MODULE`. Nothing
heavy (torch, Ray, pandas, matplotlib) is imported before a command runs: `--help` of every
command returns in well under a second. A command whose module imports torch at the top names a
`parser`, a light function that builds the same parser, for `--help`.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from cxr_tune import COMMAND_PREFIX, __version__, exit_status


@dataclass(frozen=True)
class Command:
    module: str
    """Its `main(argv)` runs the command."""
    summary: str
    parser: str = ""
    """`module:function` building the command's parser without heavy imports, for `--help`;
    empty when `module` itself is light to import."""


COMMANDS: dict[str, Command] = {
    "sweep": Command("search.run", "run a hyperparameter sweep (Ray Tune + Optuna + ASHA)"),
    "report": Command("analysis.report", "write the results report of a finished sweep"),
    "predict": Command("analysis.predict", "classify image files with an exported bundle"),
    "export": Command("search.export", "export a sweep's best checkpoint as a bundle + ONNX"),
    "rerun": Command("search.rerun", "re-run a sweep's top configurations with new seeds"),
    "spaces": Command("search.space", "list the search spaces that ship with cxr-tune"),
    "train": Command(
        "trainables.train",
        "train one TrialConfig without Ray",
        parser="trainables.cli:train_parser",
    ),
    "phantom": Command(
        "trainables.phantom",
        "generate the synthetic chest X-ray phantom",
        parser="trainables.cli:phantom_parser",
    ),
    "cache": Command(
        "trainables.decode_cache",
        "list or prune the decode cache of this machine",
        parser="trainables.cli:cache_parser",
    ),
    "models": Command(
        "trainables.models",
        "list the model registry with parameter counts",
        parser="trainables.cli:models_parser",
    ),
}
HELP_FLAGS = ("-h", "--help")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cxr-tune",
        description="Distributed hyperparameter search for chest X-ray classification. "
        "`cxr-tune COMMAND --help` shows a command's flags.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="commands:\n"
        + "\n".join(f"  {name:<9} {c.summary}" for name, c in COMMANDS.items()),
    )
    p.add_argument("--version", action="version", version=f"cxr-tune {__version__}")
    p.add_argument("command", choices=list(COMMANDS), metavar="COMMAND", help="see below")
    p.add_argument("args", nargs=argparse.REMAINDER, help="the command's own arguments")
    return p


def _resolve(target: str):
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name or "main")


def run() -> int:
    """The console script `cxr-tune` (and `python -m cxr_tune`): `main` on the command line,
    then the exit status, by way of `exit_status`'s fast exit."""
    return exit_status(main)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv:
        parser.print_help()
        return 2
    if argv[0] not in COMMANDS:  # --help, --version or a typo: argparse answers
        parser.parse_args(argv[:1])
        return 2
    name, rest = argv[0], argv[1:]
    command = COMMANDS[name]
    # The module's parser names the command (prog), and sys.argv is the command as typed.
    sys.argv[:] = [f"{COMMAND_PREFIX}{name}", *rest]
    if command.parser and any(a in HELP_FLAGS for a in rest):
        _resolve(command.parser)().print_help()
        return 0
    code = _resolve(command.module)(rest)
    return int(code or 0)
