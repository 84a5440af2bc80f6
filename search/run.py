"""The sweep: Ray Tune + an Optuna sampler + ASHA over a space file, with W&B, resume and export.

    python -m search.run --space spaces/transfer.py [--num-samples N] [--storage DIR|URI] ...

Without a visible GPU the CPU profile runs (small phantom, 64 px, few epochs, a handful of
trials) so the whole sweep fits in minutes on a laptop; `--profile full` forces the full sweep
(the embedded phantom's full preset at 256 px, the space's MAX_EPOCHS and NUM_SAMPLES).
An experiment lives at STORAGE/NAME (Ray's layout plus the files `trainables.experiment` names:
the experiment record, `summary.json`, `wandb/` and, after a finished sweep, `export/`).

Read top to bottom: `run` checks the flags and locks the experiment, `run_locked` decides
(new experiment or resume: both planned in `search.plan`, which decides and checks everything
before Ray starts), `execute` fits the Tuner (`search.tuner`), `finish` summarizes
(`search.summary`) and exports (`search.export`). Flags: `search.cli`; storage URIs:
`search.storage`; the live view: `search.progress`.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from cxr_tune import exit_status
from search import signals, storage
from search.checks import check_up_front
from search.cli import build_parser, refuse, resume_command
from search.cluster import detect_gpus, local_ray, quiet_ray
from search.gpu_memory import oom_retry_callback
from search.lock import LockError, experiment_lock
from search.plan import (
    check_data_memory,
    default_name,
    fetch_models,
    measure_gpu_memory,
    new_experiment,
    relocate,
    resume_plan,
    run_preflight,
    save_data_report,
)
from search.space import Space
from search.summary import (
    all_failed,
    data_leakage,
    data_summary,
    print_next_steps,
    print_summary,
    summarize,
    sweep_state,
)
from search.tuner import build_tuner, make_trainable, restore_tuner, settings_for
from trainables.experiment import EXPERIMENT_FILE, ExperimentRecord, write_summary


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # Ray saves its trial table every 10 s or more by default; a driver killed in between
    # leaves finished trials marked running (search.repair reconciles them). Every 1 s keeps
    # that window short at a cost of milliseconds per save for sweeps of this size.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
    # Ray warns about snapshot frequency and slow callbacks at sub-second thresholds; epochs
    # here take seconds, so those warnings would only bury the progress lines.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("TUNE_WARN_THRESHOLD_S", "30")
    signals.install()  # SIGTERM (Kubernetes, SLURM, `ray job stop`) stops as Ctrl-C does
    try:
        code = run(argv)
    except KeyboardInterrupt:  # before or after Tune's loop, which handles its own
        print("\ninterrupted before the sweep started or after it ended", file=sys.stderr)
        code = signals.INTERRUPTED
    except OSError as err:  # a disk the sweep's own check (search.disk) could not foresee
        if err.errno != errno.ENOSPC:
            raise
        where = err.filename or "the storage"
        print(
            f"no space left on the device of {where}: free space there, then resume",
            file=sys.stderr,
        )
        code = signals.DISK_FULL
    return signals.exit_code(code)


def run(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    quiet_ray(args.verbose)
    gpus, card_bytes = detect_gpus(args.address, args.verbose)
    for problem in check_up_front(args, gpus):
        refuse(problem)
    root = args.storage if storage.is_uri(args.storage) else str(Path(args.storage).resolve())
    name = args.name
    if args.resume and not name:
        name = None if storage.is_uri(root) else storage.newest_experiment(root)
        if not name:
            refuse(f"--resume: no experiment found in --storage {root}; pass --name")
    name = name or default_name(args, gpus)
    # --- one writer per experiment (search.lock): held until the sweep ends -----------------
    path, notes = storage.experiment_path(root, name), []
    try:
        with experiment_lock(path, notes):
            for note in notes:
                print(f"lock: {note}", flush=True)
            return run_locked(parser, args, root, name, gpus, card_bytes)
    except LockError as err:  # taking the lock only: the sweep's own errors pass through
        refuse(str(err))


def run_locked(
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    root: str,
    name: str,
    gpus: int,
    card_bytes: int,
) -> int:
    path = storage.experiment_path(root, name)
    try:
        recorded = storage.read_record(path)
    except ValueError as err:
        refuse(str(err))
    if args.resume and recorded is None:
        refuse(f"--resume: {path} holds no {EXPERIMENT_FILE}")
    if recorded is not None:
        where = f"recorded in {EXPERIMENT_FILE}"
        print(f"profile: {recorded.profile} ({where}); resuming {path}", flush=True)
        record, space = resume_plan(parser, args, relocate(recorded, root, path))
        from search.export import clean_staging, export_dir

        for left in clean_staging(export_dir(record, args.export)):
            print(f"resume: removed {left}, left by an interrupted export", flush=True)
        storage.write_record(record)  # where it is now, and the trial count it will reach
        return execute(args, record, space, card_bytes, restore=True)
    record, space = new_experiment(parser, args, root, name, gpus, card_bytes)
    checked = run_preflight(parser, space)  # exits 2 before any trial or folder exists
    record = replace(record, space_values=checked.values)  # what a resume compares against
    check_data_memory(parser, args, record, space, checked, gpus, card_bytes)
    record, space = fetch_models(parser, args, record, space)  # pretrained files, once
    record = measure_gpu_memory(parser, args, record, space, card_bytes, checked)
    storage.write_record(record)
    save_data_report(record, checked)
    return execute(args, record, space, card_bytes, restore=False)


def execute(
    args: argparse.Namespace,
    record: ExperimentRecord,
    space: Space,
    card_bytes: int,
    restore: bool,
) -> int:
    with local_ray(args.verbose):
        if not args.verbose:
            import optuna

            optuna.logging.set_verbosity(optuna.logging.WARNING)  # "A new study created..."
        trainable = make_trainable(
            record.cpus_per_trial,
            record.gpus_per_trial,
            card_bytes,
            int(record.gpu_memory.get("train_images", 0)),
        )
        started = time.monotonic()
        callbacks = sweep_callbacks(record)
        if restore:
            from search.repair import prepare_resume

            max_epochs = record.max_epochs or space.max_epochs
            try:
                notes = prepare_resume(record.path, max_epochs, record.num_samples)
            except ValueError as err:  # a torn saved state (a bucket's: local ones are planned)
                print(f"--resume: {err}", file=sys.stderr)
                return 2
            for note in notes:
                print(f"resume: {note}", flush=True)
            tuner = restore_tuner(settings_for(record, space), trainable, callbacks)
        else:
            tuner = build_tuner(
                settings_for(record, space), space.define, trainable, callbacks=callbacks
            )
        try:
            with signals.sigint_handler_restored():  # Ctrl-C stops the summary and the export
                grid = tuner.fit()
        except KeyboardInterrupt:
            print(f"\ninterrupted; resume with:\n  {resume_command(record)}", flush=True)
            return signals.INTERRUPTED
        return finish(args, record, grid, time.monotonic() - started, card_bytes)


def sweep_callbacks(record: ExperimentRecord) -> list[Any]:
    """The callbacks of a new and of a resumed sweep alike: with packed GPU shares, a trial out
    of its share retries at a larger one; a local sweep stops before its storage is full."""
    card = record.gpu_memory.get("card_bytes")
    callbacks = [oom_retry_callback(record.cpus_per_trial, card)] if card else []
    if not storage.is_uri(record.path):
        from search.disk import DiskSpaceCallback

        callbacks.append(DiskSpaceCallback(record.path))  # stops before the storage is full
    return callbacks


def finish(
    args: argparse.Namespace, record: ExperimentRecord, grid: Any, wall: float, card_bytes: int
) -> int:
    """Summarize, keep summary.json, and export the best checkpoint of a finished sweep."""
    from search.resources import resource_request

    def gpus_of(config: dict[str, Any]) -> float:
        return resource_request(
            config,
            record.cpus_per_trial,
            record.gpus_per_trial,
            card_bytes or None,
            train_images=int(record.gpu_memory.get("train_images", 0)),
        ).get("GPU", 0.0)

    budget = record.time_budget
    budget_hit = bool(budget) and wall >= float(budget) - 1.0
    summary = summarize(grid, record, wall, gpus_of)
    state = sweep_state(summary, budget_hit)
    summary["state"] = state
    summary["data"] = data_summary(record)
    print_summary(summary, state, record)
    summary["leakage"] = data_leakage(summary, record)
    if not storage.is_uri(record.storage):
        write_summary(Path(record.path), summary)
    if state == "interrupted":
        print(
            f"the sweep did not finish: nothing exported. Resume with:\n  {resume_command(record)}",
            flush=True,
        )
        return signals.INTERRUPTED
    if all_failed(summary):  # whatever --export says: nothing trained
        print(
            f"every trial failed ({len(summary['errors'])} errors): see the trials' error.txt",
            file=sys.stderr,
        )
        return 1
    select_at_end(args, record)
    bundle = None if args.no_export else export_at_end(args, record)
    print_next_steps(record, bundle)
    return 0 if args.no_export or bundle else 1


def select_at_end(args: argparse.Namespace, record: ExperimentRecord) -> None:
    """The multi-seed re-run of the top configurations the export then chooses from (off when
    the record's select_top is 0); a failed re-run leaves the export to the single best run."""
    from search.rerun import select_after_sweep

    try:
        with signals.sigint_handler_restored():  # Ctrl-C stops the export, as after the sweep
            problem = select_after_sweep(record, args.verbose)
    except ValueError as err:
        problem = str(err)
    if problem:
        print(f"selection: no re-run ({problem}); the export is one seed's best epoch", flush=True)


def export_at_end(args: argparse.Namespace, record: ExperimentRecord) -> Path | None:
    """The bundle the sweep exported (None when the export failed, which it says why)."""
    from search.export import export_record
    from trainables.bundle import read_bundle_meta
    from trainables.selection import describe

    try:
        bundle = export_record(record, args.export)
    except ValueError as err:
        print(f"export failed: {err}", file=sys.stderr)
        return None
    meta = read_bundle_meta(bundle)
    print(
        f"exported checkpoint {meta['source']['trial']}/{meta['source']['checkpoint']}"
        f" to {bundle} (bundle + model.onnx, ONNX max |diff| "
        f"{meta['onnx']['max_abs_diff_probabilities']:.1e})",
        flush=True,
    )
    print(f"headline {describe(meta.get('selection', {}))}", flush=True)
    from search.tracking import log_bundle

    logged = log_bundle(record, bundle, meta, quiet=not args.verbose)
    if logged:
        print(f"W&B: the bundle is the model artifact {record.name}-model (run {logged})")
    return bundle


if __name__ == "__main__":
    sys.exit(exit_status(main))
