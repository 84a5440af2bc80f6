"""What a sweep decides before Ray starts: the record of a new experiment, or the checked
record of one to resume.

`new_experiment` chooses the profile, loads and checks the space and writes nothing;
`search.run` then runs the pre-flight (`run_preflight`), measures the trial shapes' GPU memory
for packing (`measure_gpu_memory`) and writes the `ExperimentRecord` only after both passed.
`resume_plan` reads a record back where the experiment is now (`relocate`), applies what a
`--resume` may change (more trials), refuses the rest, and runs the pre-flight again: data
that changed since the experiment started (other classes, other images per class and split)
is refused rather than mixed into one sweep. Every problem here is a usage error (exit 2, one
line naming the flag or file) before any work.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cxr_tune import code_version, version_label
from search import storage
from search.checkpoints import asha_milestones
from search.checks import resume_changes, space_edit
from search.cli import Profile, choose_profile, refuse, selection_of
from search.resources import measure_before_packing
from search.space import Space, load_space, space_sha256
from search.tracking import scrub
from search.tuner import choose_sampler, startup_trials
from trainables.experiment import (
    DATA_REPORT_FILE,
    ExperimentRecord,
    data_report_json,
    parse_data_report,
    wandb_mode,
)

if TYPE_CHECKING:  # the data stack (torch, scikit-learn) loads when the pre-flight runs
    from search.preflight import Preflight
    from trainables.data import DataReport


def _utc_stamp() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")


def default_name(args: argparse.Namespace, gpus: int) -> str:
    return f"{args.space.stem}-{choose_profile(args.profile, gpus)[0].name}-{_utc_stamp()}"


# --- a new experiment -------------------------------------------------------------------------


def new_experiment(
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    root: str,
    name: str,
    gpus: int,
    card_bytes: int,
) -> tuple[ExperimentRecord, Space]:
    """Choose the profile, load and check the space, and decide everything the record holds;
    a bad space or flag is a usage error here, before Ray starts anything."""
    profile, why = choose_profile(args.profile, gpus)
    print(profile_line(args, profile, why), flush=True)
    defaults: dict[str, Any] = {"image_size": profile.image_size}
    if profile.max_train_batches:
        defaults["max_train_batches"] = profile.max_train_batches
    overrides = {"data": args.data or profile.data, "seed": args.seed}
    if args.class_map:
        overrides["class_map"] = args.class_map
    if getattr(args, "stream_data", False):
        overrides["data_on_device"] = "stream"
    if args.label_separator:
        overrides["label_separator"] = args.label_separator
    if getattr(args, "plugin", None):
        overrides["plugin"] = args.plugin
    cpu = profile.name == "cpu"
    space = _load(parser, args.space, defaults, overrides, profile.max_epochs, cpu, args.seed)
    for point in space.dropped_points:
        print(f"POINTS_TO_EVALUATE: {point} left out (outside CPU_CHOICES)", flush=True)
    grace = args.grace_period or profile.grace_period or space.grace_period
    if grace > space.max_epochs:
        refuse(f"--grace-period {grace} exceeds the {space.max_epochs} epochs of the run")
    gpus_per_trial = _gpus_per_trial(args, gpus, card_bytes)
    # checkpoints at every ASHA rung and the last epoch, so a stopped trial ends on one
    overrides["checkpoint_epochs"] = list(
        asha_milestones(grace, record_rf(args, profile, space), space.max_epochs)
    )
    space.define.overrides["checkpoint_epochs"] = overrides["checkpoint_epochs"]
    record = make_record(
        args, profile, space, root, name, grace, gpus_per_trial, defaults, overrides
    )
    announce(record)
    return record, space


def measure_gpu_memory(
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    record: ExperimentRecord,
    space: Space,
    card_bytes: int,
    checked: Preflight | None = None,
) -> ExperimentRecord:
    """The record with each trial shape's GPU memory measured on this machine's card, when
    trials are packed onto it (after the pre-flight: bad data is refused before this runs),
    for the run's train split (its size is part of every measurement's key)."""
    train_images = checked.images[0]["train"] if checked is not None and checked.images else 0
    try:
        packing = card_bytes if record.gpus_per_trial is None and not args.address else 0
        memory = measure_before_packing(space.define, packing, train_images=train_images)
        return replace(record, gpu_memory=memory)
    except ValueError as err:
        refuse(str(err))


def fetch_models(
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    record: ExperimentRecord,
    space: Space,
) -> tuple[ExperimentRecord, Space]:
    """Every model checked and every pretrained file fetched before Ray starts
    (`search.pretrained`); a file that cannot be fetched is one line and exit status 2, unless
    --allow-missing-weights (recorded, so a resume keeps it) leaves its weight set out."""
    from search.pretrained import drop_missing, prepare_models

    allow = bool(getattr(args, "allow_missing_weights", False))
    allow = allow or bool(record.args.get("allow_missing_weights"))
    try:
        plan = prepare_models(space, allow)
    except ValueError as err:
        refuse(str(err))
    if plan.dropped:
        space = drop_missing(space, plan)
        points = space.points_to_evaluate
        record = replace(
            record,
            points_to_evaluate=points,
            tpe_startup_trials=startup_trials(record.num_samples or 1, len(points)),
        )
    return replace(record, weights=plan.record()), space


def profile_line(args: argparse.Namespace, profile: Profile, why: str) -> str:
    epochs = "MAX_EPOCHS" if profile.max_epochs is None else f"<= {profile.max_epochs}"
    trials = args.num_samples or (f"<= {profile.num_samples}" if profile.num_samples else "")
    return (
        f"profile: {profile.name} ({why}): data {args.data or profile.data}, "
        f"{profile.image_size} px unless the space sets image_size, {epochs} epochs, "
        f"{trials or 'NUM_SAMPLES'} trials"
        + ("; --profile full forces the full sweep" if profile.name == "cpu" else "")
    )


def _load(
    parser: argparse.ArgumentParser,
    space_file: str | Path,
    defaults: dict[str, Any],
    overrides: dict[str, Any],
    max_epochs: int | None,
    cpu: bool,
    seed: int,
) -> Space:
    """The space file loaded and checked; its error is a usage error."""
    try:
        return load_space(
            space_file,
            defaults=defaults,
            overrides=overrides,
            max_epochs=max_epochs,
            cpu=cpu,
            seed=seed,
        )
    except ValueError as err:
        refuse(str(err))


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
    num_samples = args.num_samples or min(profile.num_samples or math.inf, space.num_samples)
    select_top, select_seeds = selection_of(args, profile)
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
        space_sha256=space_sha256(space.path),
        tpe_startup_trials=startup_trials(num_samples, len(space.points_to_evaluate)),
        sampler=choose_sampler(args.sampler or space.sampler, num_samples, space.param_kinds),
        select_top=select_top,
        select_seeds=select_seeds,
        max_concurrent=args.max_concurrent or profile.max_concurrent,
        cpus_per_trial=args.cpus_per_trial,
        gpus_per_trial=gpus_per_trial,
        profile=profile.name,
        defaults=defaults,
        overrides=overrides,
        wandb_mode=wandb_mode(args.wandb_mode),
        # wandb adds wandb/ below this: runs land in STORAGE/NAME/wandb/offline-run-*
        wandb_dir=path if not storage.is_uri(root) else str(Path("runs").resolve() / name),
        created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        code_version=version_label(code_version()),
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
        f"{record.sampler.upper()}: {len(record.points_to_evaluate)} enqueued point(s) first "
        f"{record.points_to_evaluate}, random start-up until {record.tpe_startup_trials} "
        f"trials have finished",
        flush=True,
    )
    print(selection_line(record), flush=True)


def selection_line(record: ExperimentRecord) -> str:
    """What the export will be chosen by (`trainables.selection`)."""
    if record.select_top:
        return (
            f"selection: after the sweep, its top {record.select_top} configurations re-run with "
            f"{record.select_seeds} new seeds each; the export is the best mean over seeds"
        )
    why = " (off on the cpu profile: it would about double the run's time)"
    return (
        f"selection: single run{why if record.profile == 'cpu' else ''}; the export is the "
        f"sweep's best epoch; --select-top K --select-seeds N chooses by the mean over seeds"
    )


# --- pre-flight and data report ---------------------------------------------------------------


def run_preflight(parser: argparse.ArgumentParser, space: Space) -> Preflight:
    """The data, the METRIC and every branch of the space checked before Ray starts; a problem
    ends the command with one line and exit status 2."""
    from search.preflight import audit_leakage, preflight

    try:
        checked = preflight(space)
    except ValueError as err:
        refuse(str(err))
    except OSError as err:  # a folder the user cannot list (PermissionError names it)
        refuse(f"the data cannot be read: {err.strerror}: {err.filename}")
    print(checked.format(), flush=True)
    checked.leakage = audit_leakage(checked.configs, lambda line: print(line, flush=True))
    return checked


def check_data_memory(
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    record: ExperimentRecord,
    space: Space,
    checked: Preflight,
    gpus: int,
    card_bytes: int,
) -> None:
    """Print what the run's data needs per trial and per node; refuse (exit 2, one line) a
    sweep whose data cannot fit this node. On a cluster (--address) the figures are per node
    and only printed: the workers are not this machine."""
    from search.data_memory import data_memory
    from search.gpu_memory import space_configs

    if not checked.images:
        return
    memory = data_memory(
        space_configs(space.define),
        checked.images[0],
        max_concurrent=record.max_concurrent,
        num_samples=record.num_samples,
        cpus_per_trial=record.cpus_per_trial,
        gpus=gpus,
        card_bytes=card_bytes,
    )
    print(memory.format(), flush=True)
    if not args.address and (refusal := memory.refusal()):
        parser.exit(2, f"error: {refusal}\n")


def save_data_report(record: ExperimentRecord, checked: Preflight) -> None:
    """The pre-flight's data reports and leakage audits, kept in the experiment."""
    from trainables.leakage import LEAKAGE_FILE, leakage_file_text

    text = data_report_json(r.to_dict() for r in checked.reports)
    storage.write_text(storage.join_storage(record.path, DATA_REPORT_FILE), text)
    text = leakage_file_text(checked.leakage)
    storage.write_text(storage.join_storage(record.path, LEAKAGE_FILE), text)


# --- a resume ---------------------------------------------------------------------------------


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


def resume_plan(
    parser: argparse.ArgumentParser, args: argparse.Namespace, record: ExperimentRecord
) -> tuple[ExperimentRecord, Space]:
    """The record to resume with (more trials applied) and its space, or a usage error naming
    what a resume cannot change or what is missing."""
    from ray import tune

    if not tune.Tuner.can_restore(record.path):
        refuse(
            f"{record.path} cannot be restored (no experiment state yet); "
            f"remove it or choose another --name"
        )
    if not storage.is_uri(record.path):
        from search.repair import resume_problem

        if message := resume_problem(Path(record.path)):
            refuse(f"--resume: {message}")
    refusal, more_samples = resume_changes(parser, args, record)
    if refusal:
        refuse(refusal)
    if refusal := space_edit(record):
        refuse(refusal)
    if more_samples:
        print(f"resume: --num-samples {more_samples} (was {record.num_samples})", flush=True)
        record = replace(record, num_samples=more_samples)
    print(
        f"resuming {record.name}: space {record.space}, {record.num_samples} trials, "
        f"metric {record.metric} ({record.mode}); finished trials are kept",
        flush=True,
    )
    space = _load(
        parser,
        record.space,
        record.defaults,
        record.overrides,
        record.max_epochs,
        record.profile == "cpu",
        record.seed,
    )
    if (space.metric, space.mode) != (record.metric, record.mode):
        refuse(
            f"--resume: {record.space} now says metric {space.metric} ({space.mode}), but the "
            f"experiment ranks by {record.metric} ({record.mode}); a sweep cannot change its "
            f"metric: start a new experiment with another --name"
        )
    checked = run_preflight(parser, space)  # the data may have moved or changed since
    record, space = fetch_models(parser, args, record, space)  # files on this machine again
    if changed := data_changes(saved_data_reports(record), checked.reports):
        refuse(
            f"--resume: the data changed since the experiment started ({changed}); "
            f"its trials would mix two datasets: restore the data or start a new --name"
        )
    return record, space


def saved_data_reports(record: ExperimentRecord) -> list[dict[str, Any]]:
    where = storage.join_storage(record.path, DATA_REPORT_FILE)
    text = storage.read_text(where)
    return parse_data_report(text, where) if text else []


def data_changes(saved: list[dict[str, Any]], now: list[DataReport]) -> str:
    """The differences in classes and images per class and split between the data reports the
    experiment saved and the ones the pre-flight made now ('' when none, or none was saved)."""
    changes = []
    for before, report in zip(saved, now, strict=False):
        if list(before.get("classes", [])) != report.classes:
            changes.append(f"classes {before.get('classes')} -> {report.classes}")
            continue
        counted = len(changes)
        for split, counts in report.counts.items():
            for cls, n in counts.items():
                was = before.get("counts", {}).get(split, {}).get(cls)
                if was != n:
                    changes.append(f"{split} {cls} {was} -> {n} images")
        files = before.get("files_sha256")
        if len(changes) == counted and files and files != report.files_sha256:
            changes.append("the same counts, but other train or validation files or labels")
    return "; ".join(changes[:6]) + (f"; {len(changes) - 6} more" if len(changes) > 6 else "")
