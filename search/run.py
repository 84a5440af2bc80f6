"""The sweep: Ray Tune + Optuna TPE + ASHA over a space file, with W&B, resume and export.

    python -m search.run --space spaces/transfer.py [--num-samples N] [--storage DIR|URI] ...

Without a visible GPU the CPU profile runs (small phantom, 64 px, few epochs, a handful of
trials) so the whole sweep fits in minutes on a laptop; `--profile full` forces the full sweep
(the embedded phantom's full preset at 256 px, the space's MAX_EPOCHS and NUM_SAMPLES).
An experiment lives at STORAGE/NAME (Ray's layout plus the files `trainables.experiment` names:
the experiment record, `summary.json`, `wandb/` and, after a finished sweep, `export/`).

Read top to bottom: `run` decides (new experiment or resume), `new_experiment` plans one and
writes its record, `resume` reads the record back, `execute` fits the Tuner (`search.tuner`),
summarizes (`search.summary`) and exports (`search.export`). Flags: `search.cli`; storage
URIs: `search.storage`; the live view: `search.progress`.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cxr_tune import code_version
from search import storage
from search.checkpoints import asha_milestones
from search.checks import check_up_front, resume_changes
from search.cli import Profile, build_parser, choose_profile, resume_command
from search.cluster import detect_gpus, local_ray, quiet_ray
from search.gpu_memory import measure_before_packing, oom_retry_callback
from search.lock import LockError, experiment_lock
from search.space import Space, load_space
from search.summary import (
    all_failed,
    data_leakage,
    data_summary,
    print_next_steps,
    print_summary,
    summarize,
    sweep_state,
)
from search.tracking import resolve_mode, scrub
from search.tuner import (
    build_tuner,
    make_trainable,
    restore_tuner,
    settings_for,
    startup_trials,
)
from trainables.experiment import (
    DATA_REPORT_FILE,
    EXPERIMENT_FILE,
    ExperimentRecord,
    data_report_json,
    write_summary,
)

if TYPE_CHECKING:  # the data stack (torch, scikit-learn) loads when the pre-flight runs
    from search.preflight import Preflight
    from trainables.data import DataReport


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
    return run(argv)


def run(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    quiet_ray(args.verbose)
    gpus, card_bytes = detect_gpus(args.address, args.verbose)
    for problem in check_up_front(args, gpus):
        parser.error(problem)
    root = args.storage if storage.is_uri(args.storage) else str(Path(args.storage).resolve())
    name = args.name
    if args.resume and not name:
        name = None if storage.is_uri(root) else storage.newest_experiment(root)
        if not name:
            parser.error(f"--resume: no experiment found in --storage {root}; pass --name")
    name = name or default_name(args, gpus)
    # --- one writer per experiment (search.lock): held until the sweep ends -----------------
    path, notes = storage.experiment_path(root, name), []
    try:
        with experiment_lock(path, notes):
            for note in notes:
                print(f"lock: {note}", flush=True)
            return run_locked(parser, args, root, name, gpus, card_bytes)
    except LockError as err:  # taking the lock only: the sweep's own errors pass through
        parser.error(str(err))


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
        parser.error(str(err))
    if args.resume and recorded is None:
        parser.error(f"--resume: {path} holds no {EXPERIMENT_FILE}")
    if recorded is not None:
        where = f"recorded in {EXPERIMENT_FILE}"
        print(f"profile: {recorded.profile} ({where}); resuming {path}", flush=True)
        return resume(parser, args, relocate(recorded, root, path), card_bytes)
    record, space = new_experiment(parser, args, root, name, gpus, card_bytes)
    checked = run_preflight(parser, space)  # exits 2 before any trial or folder exists
    storage.write_record(record)
    save_data_report(record, checked.reports)
    return execute(args, record, space, card_bytes, restore=False)


def default_name(args: argparse.Namespace, gpus: int) -> str:
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{args.space.stem}-{choose_profile(args.profile, gpus)[0].name}-{stamp}"


def relocate(record: ExperimentRecord, root: str, path: str) -> ExperimentRecord:
    """The record of the experiment where it is now (--storage + --name): a copied or moved
    experiment resumes in place; the path stored in the record is informative only."""
    if (record.storage, record.path) == (root, path):
        return record
    print(
        f"resume: the experiment was recorded at {record.path}; it resumes where it is now, {path}",
        flush=True,
    )
    wandb_dir = path if record.wandb_dir in ("", record.path) else record.wandb_dir
    return replace(record, storage=root, path=path, wandb_dir=wandb_dir)


def new_experiment(
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    root: str,
    name: str | None,
    gpus: int,
    card_bytes: int,
) -> tuple[ExperimentRecord, Space]:
    """Choose the profile, load and check the space, and decide everything the record holds;
    a bad space or flag is a usage error here, before Ray starts anything."""
    profile, why = choose_profile(args.profile, gpus)
    print(
        f"profile: {profile.name} ({why}): data {args.data or profile.data}, "
        f"{profile.image_size} px, "
        f"{'MAX_EPOCHS' if profile.max_epochs is None else f'<= {profile.max_epochs}'} epochs, "
        f"{args.num_samples or profile.num_samples or 'NUM_SAMPLES'} trials"
        + ("; --profile full forces the full sweep" if profile.name == "cpu" else ""),
        flush=True,
    )
    defaults: dict[str, Any] = {"image_size": profile.image_size}
    if profile.max_train_batches:
        defaults["max_train_batches"] = profile.max_train_batches
    overrides = {"data": args.data or profile.data, "seed": args.seed}
    if args.class_map:
        overrides["class_map"] = args.class_map
    try:
        space = load_space(
            args.space,
            defaults=defaults,
            overrides=overrides,
            max_epochs=profile.max_epochs,
            cpu=profile.name == "cpu",
            seed=args.seed,
        )
    except ValueError as err:
        parser.error(str(err))
    for point in space.dropped_points:
        print(f"POINTS_TO_EVALUATE: {point} left out (outside CPU_CHOICES)", flush=True)
    grace = args.grace_period or profile.grace_period or space.grace_period
    if grace > space.max_epochs:
        parser.error(f"--grace-period {grace} exceeds the {space.max_epochs} epochs of the run")
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    name = name or f"{args.space.stem}-{profile.name}-{stamp}"
    gpus_per_trial = _gpus_per_trial(args, gpus, card_bytes)
    try:  # measured GPU memory per trial shape, before packing trials onto this machine's card
        packing = card_bytes if gpus_per_trial is None and not args.address else 0
        gpu_memory = measure_before_packing(space.define, packing)
    except ValueError as err:
        parser.error(str(err))
    # checkpoints at every ASHA rung and the last epoch, so a stopped trial ends on one
    overrides["checkpoint_epochs"] = list(
        asha_milestones(grace, record_rf(args, profile, space), space.max_epochs)
    )
    space.define.overrides["checkpoint_epochs"] = overrides["checkpoint_epochs"]
    record = make_record(
        args, profile, space, root, name, grace, gpus_per_trial, defaults, overrides
    )
    record = dataclasses.replace(record, gpu_memory=gpu_memory)
    announce(record)
    return record, space


# --- pre-flight and data report (issue 10) --------------------------------------------------


def run_preflight(parser: argparse.ArgumentParser, space: Space) -> Preflight:
    """The data, the METRIC and every branch of the space checked before Ray starts; a problem
    ends the command with one line and exit status 2."""
    try:
        from search.preflight import preflight

        checked = preflight(space)
    except ValueError as err:
        parser.exit(2, f"error: {' '.join(str(err).split())}\n")
    print(checked.format(), flush=True)
    return checked


def save_data_report(record: ExperimentRecord, reports: list[DataReport]) -> None:
    text = data_report_json(r.to_dict() for r in reports)
    storage.write_text(storage.join_storage(record.path, DATA_REPORT_FILE), text)


# ---------------------------------------------------------------------------------------------


def make_record(
    args: argparse.Namespace,
    profile: Profile,
    space: Space,
    root: str,
    name: str,
    grace: int,
    gpus_per_trial: float | None,
    defaults: dict[str, Any],
    overrides: dict[str, Any],
) -> ExperimentRecord:
    """What the sweep decides before it starts (flags > profile > space), for cxr-tune's record."""
    path = storage.experiment_path(root, name)
    num_samples = args.num_samples or profile.num_samples or space.num_samples
    return ExperimentRecord(
        name=name,
        storage=root,
        path=path,
        space=str(space.path),
        metric=space.metric,
        mode=space.mode,
        max_epochs=space.max_epochs,
        grace_period=min(grace, space.max_epochs),
        reduction_factor=record_rf(args, profile, space),
        num_samples=num_samples,
        points_to_evaluate=space.points_to_evaluate,
        tpe_startup_trials=startup_trials(num_samples, len(space.points_to_evaluate)),
        max_concurrent=args.max_concurrent or profile.max_concurrent,
        cpus_per_trial=args.cpus_per_trial,
        gpus_per_trial=gpus_per_trial,
        profile=profile.name,
        defaults=defaults,
        overrides=overrides,
        wandb_mode=resolve_mode(args.wandb_mode),
        # wandb adds wandb/ below this: runs land in STORAGE/NAME/wandb/offline-run-*
        wandb_dir=path if not storage.is_uri(root) else str(Path("runs").resolve() / name),
        created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        code_version=code_version(),
        args=scrub({k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}),
    )


def record_rf(args: argparse.Namespace, profile: Profile, space: Space) -> int:
    """ASHA's reduction factor: the flag, else the profile's, else the space's."""
    return args.reduction_factor or profile.reduction_factor or space.reduction_factor


def _gpus_per_trial(args: argparse.Namespace, gpus: int, card_bytes: int) -> float | None:
    """The --gpus-per-trial to record: 0 without GPUs, None to size each trial's share."""
    # On an autoscaling cluster the GPU workers may not exist yet: an explicit
    # --gpus-per-trial with --address asks for GPUs, and the autoscaler starts them.
    want_gpus = bool(gpus) or bool(args.address and args.gpus_per_trial)
    gpus_per_trial = args.gpus_per_trial if want_gpus else 0.0
    if want_gpus and gpus_per_trial is None and not card_bytes:
        gpus_per_trial = 1.0  # card size unknown: no packing
    return gpus_per_trial


def announce(record: ExperimentRecord) -> None:
    gpus = "auto" if record.gpus_per_trial is None else f"{record.gpus_per_trial:g}"
    print(
        f"experiment {record.path}: {record.num_samples} trials, metric {record.metric} "
        f"({record.mode}), {record.max_epochs} epochs, ASHA grace {record.grace_period} "
        f"reduction {record.reduction_factor}, max concurrent "
        f"{record.max_concurrent or 'auto'}, {record.cpus_per_trial:g} CPU + "
        f"{gpus} GPU per trial, W&B {record.wandb_mode}",
        flush=True,
    )
    print(
        f"TPE: {len(record.points_to_evaluate)} enqueued point(s) first "
        f"{record.points_to_evaluate}, random start-up until {record.tpe_startup_trials} "
        f"trials have finished",
        flush=True,
    )


def resume(
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    record: ExperimentRecord,
    card_bytes: int,
) -> int:
    from ray import tune

    if not tune.Tuner.can_restore(record.path):
        parser.error(
            f"{record.path} cannot be restored (no experiment state yet); "
            f"remove it or choose another --name"
        )
    if "://" not in record.path:
        from search.repair import missing_journal

        if message := missing_journal(Path(record.path)):
            parser.error(f"--resume: {message}")
    refusal, more_samples = resume_changes(parser, args, record)
    if refusal:
        parser.error(refusal)
    if more_samples:
        print(f"resume: --num-samples {more_samples} (was {record.num_samples})", flush=True)
        record = replace(record, num_samples=more_samples)
    print(
        f"resuming {record.name}: space {record.space}, {record.num_samples} trials, "
        f"metric {record.metric} ({record.mode}); finished trials are kept",
        flush=True,
    )
    try:
        space = load_space(
            record.space,
            defaults=record.defaults,
            overrides=record.overrides,
            max_epochs=record.max_epochs,
            cpu=record.profile == "cpu",
            seed=record.seed,
        )
    except ValueError as err:
        parser.error(str(err))
    if (space.metric, space.mode) != (record.metric, record.mode):
        parser.error(
            f"--resume: {record.space} now says metric {space.metric} ({space.mode}), but the "
            f"experiment ranks by {record.metric} ({record.mode}); a sweep cannot change its "
            f"metric: start a new experiment with another --name"
        )
    storage.write_record(record)  # where it is now, and the trial count it will reach
    return execute(args, record, space, card_bytes, restore=True)


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
        trainable = make_trainable(record.cpus_per_trial, record.gpus_per_trial, card_bytes)
        started = time.monotonic()
        if restore:
            from search.repair import prepare_resume

            max_epochs = record.max_epochs or space.max_epochs
            for note in prepare_resume(record.path, max_epochs, record.num_samples):
                print(f"resume: {note}", flush=True)
            tuner = restore_tuner(settings_for(record, space), trainable)
        else:
            callbacks = []
            if record.gpu_memory.get("card_bytes"):  # a trial out of its share retries larger
                card = record.gpu_memory["card_bytes"]
                callbacks.append(oom_retry_callback(record.cpus_per_trial, card))
            tuner = build_tuner(
                settings_for(record, space), space.define, trainable, callbacks=callbacks
            )
        try:
            grid = tuner.fit()
        except KeyboardInterrupt:
            print(f"\ninterrupted; resume with:\n  {resume_command(record)}", flush=True)
            return 130
        return finish(args, record, grid, time.monotonic() - started, card_bytes)


def finish(
    args: argparse.Namespace, record: ExperimentRecord, grid: Any, wall: float, card_bytes: int
) -> int:
    """Summarize, keep summary.json, and export the best checkpoint of a finished sweep."""
    from search.resources import resource_request

    def gpus_of(config: dict[str, Any]) -> float:
        return resource_request(
            config, record.cpus_per_trial, record.gpus_per_trial, card_bytes or None
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
        return 130
    if all_failed(summary):  # whatever --export says: nothing trained
        print(
            f"every trial failed ({len(summary['errors'])} errors): see the trials' error.txt",
            file=sys.stderr,
        )
        return 1
    code = 0 if args.no_export else export_at_end(args, record)
    print_next_steps(record, exported=not args.no_export and code == 0)
    return code


def export_at_end(args: argparse.Namespace, record: ExperimentRecord) -> int:
    from search.export import export_record
    from trainables.bundle import read_bundle_meta

    try:
        bundle = export_record(record, args.export)
    except ValueError as err:
        print(f"export failed: {err}", file=sys.stderr)
        return 1
    meta = read_bundle_meta(bundle)
    print(
        f"exported best checkpoint {meta['source']['trial']}/{meta['source']['checkpoint']}"
        f" to {bundle} (bundle + model.onnx, ONNX max |diff| "
        f"{meta['onnx']['max_abs_diff_probabilities']:.1e})",
        flush=True,
    )
    from search.tracking import log_bundle

    logged = log_bundle(record, bundle, meta, quiet=not args.verbose)
    if logged:
        print(f"W&B: the bundle is the model artifact {record.name}-model (run {logged})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
