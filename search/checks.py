"""Checks of flags and paths that need more than argparse: done once, before any work.

Each returns a one-line message for `search.cli.refuse` (exit status 2, no traceback) or None:
resources larger than any node of the cluster, GPU flags on a machine without a GPU, storage and
export folders that cannot be created or written, and a `--resume` whose flags disagree with the
experiment it resumes.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from cxr_tune import prog
from search.storage import is_uri
from trainables.experiment import ExperimentRecord

# Flags a resumed sweep keeps from its record: (flag, argparse dest). --num-samples is handled
# apart (more trials can be added to a sweep; fewer cannot).
KEPT_ON_RESUME = (
    ("--data", "data"),
    ("--plugin", "plugin"),
    ("--class-map", "class_map"),
    ("--profile", "profile"),
    ("--seed", "seed"),
    ("--sampler", "sampler"),
    ("--grace-period", "grace_period"),
    ("--reduction-factor", "reduction_factor"),
    ("--time-budget", "time_budget"),
    ("--max-failures", "max_failures"),
    ("--max-concurrent", "max_concurrent"),
    ("--cpus-per-trial", "cpus_per_trial"),
    ("--gpus-per-trial", "gpus_per_trial"),
    ("--wandb-project", "wandb_project"),
    ("--wandb-mode", "wandb_mode"),
    ("--select-top", "select_top"),
    ("--select-seeds", "select_seeds"),
)


def check_up_front(args: argparse.Namespace, gpus_visible: int) -> list[str]:
    """Every problem with the resource flags, --storage and --export, before anything starts.

    On this machine a trial larger than the machine is refused; on a joined cluster
    (--address) it is a warning, since an autoscaler may add a larger node.
    """
    from search.cluster import node_sizes

    problems = [check_export(args.export, args.storage)]
    too_big = check_resources(args, node_sizes(args.address), gpus_visible)
    if too_big and args.address:
        # An autoscaling cluster may still add a node large enough: say so, do not refuse.
        print(f"warning: {too_big} unless the autoscaler adds a larger node", file=sys.stderr)
    elif too_big:
        problems.append(too_big)
    if not is_uri(args.storage):
        problems.append(writable_folder(Path(args.storage).expanduser().resolve(), "--storage"))
    return [p for p in problems if p]


def check_resources(
    args: argparse.Namespace, nodes: list[tuple[float, float]], gpus_visible: int
) -> str | None:
    """Refuse a per-trial request no node can hold (Ray would wait for it forever).

    `nodes`: (CPUs, GPUs) of each node Ray can place a trial on.
    """
    sizes = ", ".join(f"{c:g} CPU + {g:g} GPU" for c, g in nodes) or "none"
    if nodes and args.cpus_per_trial > max(c for c, _ in nodes):
        return (
            f"--cpus-per-trial {args.cpus_per_trial:g} exceeds every node's CPUs "
            f"(nodes: {sizes}); a trial could never start"
        )
    want = args.gpus_per_trial or 0.0
    if want and not gpus_visible and not args.address:
        return (
            f"--gpus-per-trial {want:g}: this machine has no GPU that PyTorch can see; "
            f"drop the flag (trials then train on the CPU) or join a GPU cluster with --address"
        )
    if want and gpus_visible and nodes and want > max(g for _, g in nodes):
        return (
            f"--gpus-per-trial {want:g} exceeds every node's GPUs (nodes: {sizes}); "
            f"a trial could never start"
        )
    return None


def writable_folder(path: Path, what: str) -> str | None:
    """Create `path` (and parents) and write a file in it; a message when either fails."""
    if path.exists() and not path.is_dir():
        return f"{what} {path} is a file, not a folder"
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as err:
        return f"{what} {path} cannot be written: {err.strerror or err}"
    return None


def check_export(export: Path | None, storage: str = "") -> str | None:
    """--export OUT: the bundle is built in a hidden folder beside OUT, so OUT's parent must be
    writable; OUT is replaced whole, so it must be new, empty or an earlier bundle
    (`search.export.replace_refusal`), and must not hold the experiments (--storage)."""
    if export is None:
        return None
    from search.export import replace_refusal

    out = export.expanduser().resolve()
    if refusal := replace_refusal(out):
        return f"--export {export}: {refusal}"
    if out.is_dir() and not os.access(out, os.W_OK):
        return f"--export {export} cannot be written (permission denied)"
    if storage and not is_uri(storage):
        runs = Path(storage).expanduser().resolve()
        if runs == out or out in runs.parents:
            return (
                f"--export {export} holds --storage {storage}; the export replaces its folder "
                f"whole: choose a folder outside the storage"
            )
    return writable_folder(out.parent, "--export's parent folder")


def resume_changes(
    parser: argparse.ArgumentParser, args: argparse.Namespace, record: ExperimentRecord
) -> tuple[str | None, int | None]:
    """(refusal, new num_samples) for `--resume` against the experiment's record.

    A flag given on the command line (not its default) that differs from the recorded value is
    refused, naming the flag and both values; a larger --num-samples is applied (more trials),
    a smaller one refused.
    """
    recorded = record.args
    changed = []
    for flag, dest in KEPT_ON_RESUME:
        given = getattr(args, dest, None)
        if given is None or given == parser.get_default(dest):
            continue
        if _same(recorded.get(dest), given) or _same(_effective(record, dest), given):
            continue
        had = recorded.get(dest)
        had = _effective(record, dest) if had is None else had
        changed.append(f"{flag} {given} (the experiment has {had})")
    space = Path(args.space).expanduser().resolve()
    if record.space and str(space) != record.space and not _same_file(space, record.space):
        changed.append(f"--space {space} (the experiment has {record.space})")
    if changed:
        return (
            "--resume keeps what the experiment decided; these flags differ: "
            + "; ".join(changed)
            + ". Drop them, or start a new experiment with another --name",
            None,
        )
    wanted = args.num_samples
    if wanted is None or wanted == record.num_samples:
        return None, None
    if record.num_samples and wanted < record.num_samples:
        return (
            f"--num-samples {wanted} is fewer than the experiment's {record.num_samples}: a "
            f"resumed sweep can add trials, not remove them",
            None,
        )
    return None, wanted


def space_edit(record: ExperimentRecord) -> str | None:
    """A refusal when the experiment's space file was edited since the sweep started (its
    content hash differs), naming what its define() and constants offer now that they did not;
    None when unchanged, gone (loading it refuses), or recorded without a hash."""
    path = Path(record.space)
    if not record.space_sha256 or not path.is_file():
        return None
    from search.space import space_sha256

    if space_sha256(path) == record.space_sha256:
        return None
    from search.walk import space_changes, space_values

    try:
        changed = space_changes(record.space_values, space_values(path))
    except ValueError as err:
        changed = [f"it no longer loads: {err}"]
    shown = "; ".join(changed[:6]) + (f"; {len(changed) - 6} more" if len(changed) > 6 else "")
    if not changed:
        shown = "its text; define() offers the same choices and constants on every branch"
    return (
        f"--resume: the space file {path} changed since the experiment started ({shown}); "
        f"a resume trains the trials the experiment was started with: restore the file, or "
        f"start a new experiment from it: {prog('search.run')} --space {path} --name "
        f"{record.name}-2"
    )


def _effective(record: ExperimentRecord, dest: str) -> object:
    """What the experiment ran with for a flag's dest (a flag left out took a default)."""
    if dest in ("data", "plugin", "class_map"):
        return record.overrides.get(dest)
    if dest in ("cpus_per_trial", "gpus_per_trial", "profile", "wandb_mode"):
        return getattr(record, dest)
    return getattr(record, dest, None)


def _same(recorded: object, given: object) -> bool:
    if recorded is None:
        return False
    if isinstance(recorded, (int, float)) and isinstance(given, (int, float)):
        return float(recorded) == float(given)
    return str(recorded) == str(given)


def _same_file(a: Path, b: str) -> bool:
    try:
        return a.read_bytes() == Path(b).read_bytes()
    except OSError:
        return False
