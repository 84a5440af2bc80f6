"""The sweep: Ray Tune + Optuna TPE + ASHA over a space file, with W&B, resume and export.

    python -m search.run --space spaces/transfer.py [--num-samples N] [--storage DIR|URI] ...

Without a visible GPU the CPU profile runs (small phantom, 64 px, few epochs, a handful of
trials) so the whole sweep fits in minutes on a laptop; `--profile full` forces the full sweep
(the embedded phantom's full preset at 256 px, the space's MAX_EPOCHS and NUM_SAMPLES).
An experiment lives at STORAGE/NAME (Ray's layout plus `cxr_tune.json`, `summary.json`,
`wandb/` and, after a finished sweep, `export/`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from search.space import Space, load_space
from search.tracking import WANDB_MODES, resolve_mode, scrub
from trainables.config import PHANTOM_PRESETS

EXPERIMENT_FILE = "cxr_tune.json"
SUMMARY_FILE = "summary.json"
MAX_FAILURES = 2  # retries of a trial whose worker died, from its last checkpoint
TERMINAL = ("TERMINATED", "ERROR")


@dataclass(frozen=True)
class Profile:
    name: str
    data: str
    image_size: int  # pixels
    max_epochs: int | None  # None: the space's MAX_EPOCHS
    num_samples: int | None  # None: the space's NUM_SAMPLES
    max_concurrent: int | None  # None: as many as the resources allow
    grace_period: int | None = None  # None: the space's
    reduction_factor: int | None = None
    max_train_batches: int = 0  # 0: full epochs


# CPU profile, for `make run` on a 2-core machine without a GPU: the small phantom (304 train /
# 76 val images) at 64 px, at most 10 epochs, 10 trials two at a time, only the space's
# CPU_CHOICES; ASHA keeps the space's grace period (capped at the epochs) and factor.
# Measured: about 5 minutes for `make run` with spaces/transfer.py on 2 shared cores.
CPU_PROFILE = Profile("cpu", "phantom:small", 64, 10, 10, 2)
FULL_PROFILE = Profile("full", "phantom:full", 256, None, None, None)
PROFILES = ("auto", "cpu", "full")


# --- command line ----------------------------------------------------------------------------


def _bounded(kind: type, low: float | None, high: float | None, what: str):
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
        if (low is not None and value < low) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{text!r} is outside {what}")
        return value

    return parse


def _name(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a valid name: use 1 to 100 letters, digits, '.', '_' or '-'"
        )
    return text


def _data(text: str) -> str:
    if text.startswith("phantom:"):
        if text.split(":", 1)[1] not in PHANTOM_PRESETS:
            raise argparse.ArgumentTypeError(
                f"unknown phantom {text!r}; expected one of "
                f"{[f'phantom:{p}' for p in PHANTOM_PRESETS]} or a folder"
            )
        return text
    path = Path(text).expanduser()
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"data folder {text!r} does not exist")
    return str(path.resolve())


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default only when it has one (not "(default: None)")."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m search.run",
        description="Hyperparameter sweep for 3-class chest X-ray classification: Optuna TPE "
        "proposes trials from a space file, ASHA stops weak ones early, Ray Tune runs them "
        "(fractional GPUs when a GPU is visible), W&B logs them, and the best checkpoint is "
        "exported as a bundle plus ONNX.",
        formatter_class=_HelpFormatter,
    )
    p.add_argument(
        "--space",
        type=Path,
        required=True,
        help="space file: define(trial) plus METRIC, MODE, MAX_EPOCHS (see spaces/)",
    )
    p.add_argument(
        "--data",
        type=_data,
        default=None,
        help="image-folder root or phantom:small|phantom:full "
        "(default: the profile's embedded phantom)",
    )
    p.add_argument(
        "--profile",
        choices=PROFILES,
        default="auto",
        help="cpu: small, quick sweep; full: the space's own sweep at 256 px; "
        "auto: cpu when no GPU is visible",
    )
    p.add_argument(
        "--num-samples",
        type=_bounded(int, 1, 100000, "an integer in [1, 100000]"),
        help="trials (default: the profile's, else the space's NUM_SAMPLES)",
    )
    p.add_argument(
        "--max-concurrent",
        type=_bounded(int, 1, 10000, "an integer in [1, 10000]"),
        help="trials running at once (default: as many as resources allow)",
    )
    p.add_argument(
        "--gpus-per-trial",
        type=_bounded(float, 0.0, 8.0, "a number in [0, 8]"),
        help="GPUs per trial (default: a fraction sized from the model's peak "
        "memory; 0 on machines without a GPU)",
    )
    p.add_argument(
        "--cpus-per-trial",
        type=_bounded(float, 0.25, 256.0, "a number in [0.25, 256]"),
        default=1.0,
        help="CPUs per trial (also its torch threads)",
    )
    p.add_argument(
        "--address",
        help="join a running Ray cluster ('auto' on a `ray up` "
        "cluster, or HOST:PORT); default: start Ray on this machine",
    )
    p.add_argument(
        "--storage",
        default="runs",
        help="where experiments live: a local folder or a URI such as s3://bucket/prefix",
    )
    p.add_argument(
        "--name",
        type=_name,
        help="experiment name (default: SPACE-PROFILE-UTC time); an existing "
        "experiment of that name is resumed",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="resume the experiment --name (default: the newest one in --storage)",
    )
    p.add_argument(
        "--time-budget",
        type=_bounded(float, 1.0, 1e8, "a number of seconds in [1, 1e8]"),
        help="stop the sweep after this many seconds",
    )
    p.add_argument(
        "--seed",
        type=_bounded(int, 0, 2**31 - 1, "an integer in [0, 2**31-1]"),
        default=0,
        help="seeds TPE and every trial",
    )
    p.add_argument(
        "--grace-period",
        type=_bounded(int, 1, 100000, "an integer in [1, 100000]"),
        help="epochs before ASHA may stop a trial (default: the space's)",
    )
    p.add_argument(
        "--reduction-factor",
        type=_bounded(int, 2, 100, "an integer in [2, 100]"),
        help="ASHA keeps the top 1/factor at each rung (default: the space's)",
    )
    p.add_argument("--wandb-project", default="cxr-tune", help="W&B project")
    p.add_argument(
        "--wandb-mode",
        choices=WANDB_MODES,
        default=None,
        help="default: online when WANDB_API_KEY is set, else offline",
    )
    p.add_argument(
        "--export",
        type=Path,
        default=None,
        help="bundle directory for the best checkpoint (default: STORAGE/NAME/export)",
    )
    p.add_argument("--no-export", action="store_true", help="skip the export at the end")
    return p


# --- setup ----------------------------------------------------------------------------------


def local_gpus() -> tuple[int, int]:
    """(visible GPUs, bytes of the smallest) on this machine."""
    import torch

    count = torch.cuda.device_count()
    if not count:
        return 0, 0
    return count, min(torch.cuda.get_device_properties(i).total_memory for i in range(count))


def cluster_card_bytes(timeout_s: float = 120.0) -> int:
    """Memory of a GPU on the cluster's GPU nodes (the driver may run on a CPU-only head)."""
    import ray

    @ray.remote(num_gpus=1, num_cpus=0)
    def card() -> int:
        import torch

        return torch.cuda.get_device_properties(0).total_memory

    try:
        return int(ray.get(card.remote(), timeout=timeout_s))
    except Exception as err:  # no free GPU in time: fall back to one whole GPU per trial
        print(
            f"could not measure a GPU's memory on the cluster ({err}); trials get 1 GPU "
            f"each unless --gpus-per-trial says otherwise",
            file=sys.stderr,
        )
        return 0


def choose_profile(requested: str, gpus: int) -> tuple[Profile, str]:
    if requested == "cpu" or (requested == "auto" and not gpus):
        why = "no GPU visible" if requested == "auto" else "--profile cpu"
        return CPU_PROFILE, why
    why = f"{gpus} GPU(s) visible" if requested == "auto" else "--profile full"
    return FULL_PROFILE, why


def is_uri(storage: str) -> bool:
    return "://" in storage


def join_storage(base: str, *parts: str) -> str:
    """Append path parts to a local path or a URI, keeping a URI's query string at the end
    (`s3://b/p?endpoint_override=...` + `name` -> `s3://b/p/name?endpoint_override=...`)."""
    if not is_uri(base):
        return "/".join([base.rstrip("/"), *parts])
    url = urlsplit(base)
    return urlunsplit(url._replace(path="/".join([url.path.rstrip("/"), *parts])))


def experiment_path(storage: str, name: str) -> str:
    return join_storage(storage, name)


def write_text(storage_path: str, text: str) -> None:
    """Write a small file at a local path or a URI (pyarrow filesystems, as Ray uses)."""
    if not is_uri(storage_path):
        from trainables.cache import atomic_write_text

        atomic_write_text(Path(storage_path), text)
        return
    import pyarrow.fs

    fs, path = pyarrow.fs.FileSystem.from_uri(storage_path)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as out:
        out.write(text.encode())


def read_text(storage_path: str) -> str | None:
    if not is_uri(storage_path):
        path = Path(storage_path)
        return path.read_text() if path.is_file() else None
    import pyarrow.fs

    fs, path = pyarrow.fs.FileSystem.from_uri(storage_path)
    if fs.get_file_info(path).type == pyarrow.fs.FileType.NotFound:
        return None
    with fs.open_input_stream(path) as stream:
        return stream.read().decode()


def newest_experiment(storage: str) -> str | None:
    root = Path(storage)
    if not root.is_dir():
        return None
    found = [p for p in root.iterdir() if (p / EXPERIMENT_FILE).is_file()]
    return max(found, key=lambda p: (p / EXPERIMENT_FILE).stat().st_mtime).name if found else None


# --- progress -------------------------------------------------------------------------------


def make_progress_callback(metric: str, mode: str, max_epochs: int, num_samples: int):
    from ray.tune import Callback

    from search.space import is_better

    class ProgressLines(Callback):
        """One line per trial event: start, epoch result, stop, error."""

        def __init__(self) -> None:
            self.started = time.monotonic()
            self.best: float | None = None

        def setup(self, **info: Any) -> None:
            self.started = time.monotonic()  # also after Tuner.restore unpickles this callback

        def _line(self, trials: list, text: str) -> None:
            done = sum(t.status in TERMINAL for t in trials)
            running = sum(t.status == "RUNNING" for t in trials)
            best = "-" if self.best is None else f"{self.best:.4f}"
            elapsed = time.monotonic() - self.started
            print(
                f"[{elapsed:6.0f}s] {text:<62} | run {running} done {done}/{num_samples} "
                f"best {metric} {best}",
                flush=True,
            )

        def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self._line(trials, f"{trial.trial_id} start {describe(trial.config)}")

        def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
            value = result.get(metric)
            if value is not None and (self.best is None or is_better(value, self.best, mode)):
                self.best = float(value)
            epoch = int(result.get("epoch", result.get("training_iteration", 0)))
            shown = "nan" if value is None else f"{value:.4f}"
            self._line(trials, f"{trial.trial_id} epoch {epoch}/{max_epochs} {metric} {shown}")

        def on_trial_complete(self, iteration, trials, trial, **info) -> None:
            epoch = int((trial.last_result or {}).get("epoch", 0))
            how = "finished" if epoch >= max_epochs else f"stopped early at epoch {epoch}"
            self._line(trials, f"{trial.trial_id} {how}")

        def on_trial_error(self, iteration, trials, trial, **info) -> None:
            self._line(trials, f"{trial.trial_id} ERROR (see {trial.path}/error.txt)")

    return ProgressLines()


def describe(config: dict[str, Any]) -> str:
    keys = ("model", "balance", "augment", "frozen_depth", "pretrained", "lr", "weight_decay")
    parts = []
    for k in keys:
        if k in config:
            v = config[k]
            parts.append(f"{k}={v:.2g}" if isinstance(v, float) else f"{k}={v}")
    return " ".join(parts)


# --- the sweep ------------------------------------------------------------------------------


def build_tuner(space: Space, args: argparse.Namespace, exp: dict[str, Any], trainable: Any):
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import ConcurrencyLimiter

    from search.optuna_pruned import PrunedOptunaSearch
    from search.tracking import wandb_callback

    sampler = optuna.samplers.TPESampler(seed=args.seed, multivariate=True, constant_liar=True)
    searcher = PrunedOptunaSearch(
        space=space.define,
        metric=space.metric,
        mode=space.mode,
        sampler=sampler,
        points_to_evaluate=space.points_to_evaluate or None,
        max_epochs=space.max_epochs,
    )
    if exp["max_concurrent"]:
        searcher = ConcurrencyLimiter(searcher, max_concurrent=exp["max_concurrent"])
    scheduler = ASHAScheduler(
        metric=space.metric,
        mode=space.mode,
        time_attr="training_iteration",  # one report per epoch
        max_t=space.max_epochs,  # epochs
        grace_period=exp["grace_period"],  # epochs
        reduction_factor=exp["reduction_factor"],
    )
    callbacks = [
        make_progress_callback(space.metric, space.mode, space.max_epochs, exp["num_samples"])
    ]
    wandb_dir = Path(exp["wandb_dir"])
    wandb = wandb_callback(args.wandb_project, exp["name"], exp["wandb_mode"], wandb_dir)
    if wandb is not None:
        callbacks.append(wandb)
    run_config = tune.RunConfig(
        name=exp["name"],
        storage_path=exp["storage"],
        callbacks=callbacks,
        verbose=0,  # the progress lines above replace Ray's tables
        checkpoint_config=tune.CheckpointConfig(
            # Ray keeps the best `num_to_keep` by the score plus, always, the latest one.
            num_to_keep=2,
            checkpoint_score_attribute=space.metric,
            checkpoint_score_order=space.mode,
        ),
        failure_config=tune.FailureConfig(max_failures=MAX_FAILURES),
    )
    tune_config = tune.TuneConfig(
        search_alg=searcher,
        scheduler=scheduler,
        num_samples=exp["num_samples"],
        time_budget_s=args.time_budget,
        reuse_actors=True,  # skip process start-up and dataset loading between trials
        trial_dirname_creator=trial_dirname,
    )
    return tune.Tuner(trainable, tune_config=tune_config, run_config=run_config)


def trial_dirname(trial: Any) -> str:
    """Short trial directories (Ray's default packs the whole config into the name)."""
    return f"trial_{trial.trial_id}"


def make_trainable(exp: dict[str, Any], card_bytes: int):
    from ray import tune

    from search.resources import trial_resources
    from search.trainable import train_trial

    gpus = exp["gpus_per_trial"]
    resources = trial_resources(exp["cpus_per_trial"], gpus, card_bytes or None)
    return tune.with_resources(train_trial, resources=resources)


def saved_statuses(exp_path: str) -> dict[str, str]:
    """Trial id -> status in the newest experiment state Ray saved (what a resume sees).

    After Ctrl-C Ray saves the state first and then stops the running trials, so in memory
    they look TERMINATED while on disk they are RUNNING and a resume continues them.
    """
    if is_uri(exp_path):
        return {}
    states = sorted(Path(exp_path).glob("experiment_state-*.json"))
    if not states:
        return {}
    try:
        data = json.loads(states[-1].read_text())
        trials = [json.loads(entry[0]) for entry in data["trial_data"]]
        return {t["trial_id"]: t["status"] for t in trials}
    except (json.JSONDecodeError, KeyError, IndexError, TypeError):
        return {}


def summarize(grid: Any, exp: dict[str, Any], wall_s: float, gpus_of) -> dict[str, Any]:
    """What happened, from the trials Ray tracked (statuses as saved for a resume)."""
    metric, mode, max_epochs = exp["metric"], exp["mode"], exp["max_epochs"]
    trials = list(grid._experiment_analysis.trials)
    saved = saved_statuses(exp["path"])
    rows = []
    gpu_hours = 0.0
    for t in trials:
        last = t.last_result or {}
        epoch = int(last.get("epoch", 0))
        seconds = float(last.get("time_total_s", 0.0))
        gpu_hours += seconds * gpus_of(t.config) / 3600.0
        status = saved.get(t.trial_id, t.status)
        rows.append(
            {
                "trial_id": t.trial_id,
                "status": status,
                "epochs": epoch,
                "stopped_early": status == "TERMINATED" and epoch < max_epochs,
                "error": status == "ERROR",
                "failures": int(getattr(t, "num_failures", 0)),
                metric: last.get(metric),
                "seconds": seconds,
                "node_ip": last.get("node_ip"),
                "gpus": gpus_of(t.config),
                "config": {k: t.config[k] for k in sorted(t.config)},
            }
        )
    summary: dict[str, Any] = {
        "name": exp["name"],
        "metric": metric,
        "mode": mode,
        "trials": len(trials),
        "num_samples": exp["num_samples"],
        "finished": sum(r["status"] == "TERMINATED" and not r["stopped_early"] for r in rows),
        "stopped_early": [
            {"trial_id": r["trial_id"], "epoch": r["epochs"]} for r in rows if r["stopped_early"]
        ],
        "errors": [r["trial_id"] for r in rows if r["error"]],
        "wall_s": wall_s,
        "gpu_hours": gpu_hours,
        "trial_rows": rows,
    }
    try:
        best = grid.get_best_result(metric=metric, mode=mode, scope="all")
    except (RuntimeError, KeyError, ValueError):
        best = None
    summary["best"] = None
    if best is not None and best.metrics_dataframe is not None:
        # `best.metrics` is the trial's last epoch; the best epoch is a row of its history.
        frame = best.metrics_dataframe.dropna(subset=[metric])
        if len(frame):
            row = frame.loc[frame[metric].idxmax() if mode == "max" else frame[metric].idxmin()]
            summary["best"] = {
                "trial_id": str(row.get("trial_id", best.metrics.get("trial_id"))),
                "value": float(row[metric]),
                "epoch": int(row.get("epoch", 0)),
                "config": best.config,
                "metrics": {
                    k: float(row[k])
                    for k in row.index
                    if k.startswith(("val_", "train_")) and _is_number(row[k])
                },
                "path": best.path,
            }
    return summary


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def sweep_state(summary: dict[str, Any], budget_hit: bool) -> str:
    statuses = [r["status"] for r in summary["trial_rows"]]
    if all(s in TERMINAL for s in statuses) and len(statuses) >= summary["num_samples"]:
        return "finished"
    if budget_hit and all(s in TERMINAL for s in statuses):
        return "time budget reached"
    return "interrupted"


def print_summary(summary: dict[str, Any], state: str, exp: dict[str, Any]) -> None:
    metric = summary["metric"]
    print()
    print(
        f"sweep {summary['name']}: {state} ({summary['trials']}/{summary['num_samples']} "
        f"trials, wall {summary['wall_s']:.0f} s, {summary['gpu_hours']:.3f} GPU-hours)"
    )
    best = summary.get("best")
    if best:
        others = ", ".join(
            f"{k} {best['metrics'][k]:.4f}"
            for k in ("val_acc", "val_loss")
            if k in best["metrics"] and k != metric
        )
        print(
            f"best {metric} {best['value']:.4f} (trial {best['trial_id']}, epoch "
            f"{best['epoch']}{'; ' + others if others else ''}): {describe(best['config'])}"
        )
        print("  config: " + json.dumps(best["config"], sort_keys=True, default=str))
    stopped = summary["stopped_early"]
    cause = "by ASHA" if state != "time budget reached" else "by ASHA or the time budget"
    print(
        f"stopped early {cause}: {len(stopped)}"
        + (
            ": " + ", ".join(f"{s['trial_id']}@epoch {s['epoch']}" for s in stopped)
            if stopped
            else ""
        )
    )
    print(f"finished all {exp['max_epochs']} epochs: {summary['finished']}")
    print(
        f"errors: {len(summary['errors'])}"
        + (": " + ", ".join(summary["errors"]) if summary["errors"] else "")
    )


def resume_command(exp: dict[str, Any]) -> str:
    return (
        f"python -m search.run --space {exp['space']} --storage {exp['storage']} "
        f"--name {exp['name']} --resume"
    )


def run(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.address:
        import ray

        ray.init(address=args.address, log_to_driver=False)
        gpus = int(ray.cluster_resources().get("GPU", 0))
        card_bytes = cluster_card_bytes() if gpus else 0
    else:
        gpus, card_bytes = local_gpus()
    storage = args.storage if is_uri(args.storage) else str(Path(args.storage).resolve())
    name = args.name
    if args.resume and not name:
        name = None if is_uri(storage) else newest_experiment(storage)
        if not name:
            parser.error(f"--resume: no experiment found in --storage {storage}; pass --name")
    recorded = None
    if name:
        text = read_text(join_storage(experiment_path(storage, name), EXPERIMENT_FILE))
        recorded = json.loads(text) if text else None
    if args.resume and recorded is None:
        parser.error(f"--resume: {experiment_path(storage, name)} holds no {EXPERIMENT_FILE}")

    if recorded is not None:
        print(
            f"profile: {recorded['profile']} (recorded in {EXPERIMENT_FILE}); resuming "
            f"{recorded['path']}",
            flush=True,
        )
        return resume(parser, args, recorded, card_bytes)

    profile, why = choose_profile(args.profile, gpus)
    print(
        f"profile: {profile.name} ({why}): data {args.data or profile.data}, "
        f"{profile.image_size} px, "
        f"{'MAX_EPOCHS' if profile.max_epochs is None else f'<= {profile.max_epochs}'} epochs, "
        f"{args.num_samples or profile.num_samples or 'NUM_SAMPLES'} trials"
        + ("; --profile full forces the full sweep" if profile.name == "cpu" else ""),
        flush=True,
    )

    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    name = name or f"{args.space.stem}-{profile.name}-{stamp}"
    defaults = {"image_size": profile.image_size}
    if profile.max_train_batches:
        defaults["max_train_batches"] = profile.max_train_batches
    overrides = {"data": args.data or profile.data, "seed": args.seed}
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
    grace = args.grace_period or profile.grace_period or space.grace_period
    if grace > space.max_epochs:
        parser.error(f"--grace-period {grace} exceeds the {space.max_epochs} epochs of the run")
    # On an autoscaling cluster the GPU workers may not exist yet: an explicit
    # --gpus-per-trial with --address asks for GPUs, and the autoscaler starts them.
    want_gpus = bool(gpus) or bool(args.address and args.gpus_per_trial)
    gpus_per_trial = args.gpus_per_trial if want_gpus else 0.0
    if want_gpus and gpus_per_trial is None and not card_bytes:
        gpus_per_trial = 1.0  # card size unknown: no packing
    wandb_mode = resolve_mode(args.wandb_mode)
    exp_path = experiment_path(storage, name)
    exp = {
        "name": name,
        "storage": storage,
        "path": exp_path,
        "space": str(space.path),
        "metric": space.metric,
        "mode": space.mode,
        "max_epochs": space.max_epochs,
        "grace_period": min(grace, space.max_epochs),
        "reduction_factor": args.reduction_factor
        or profile.reduction_factor
        or space.reduction_factor,
        "num_samples": args.num_samples or profile.num_samples or space.num_samples,
        "max_concurrent": args.max_concurrent or profile.max_concurrent,
        "cpus_per_trial": args.cpus_per_trial,
        "gpus_per_trial": gpus_per_trial,
        "profile": profile.name,
        "defaults": defaults,
        "overrides": overrides,
        "wandb_mode": wandb_mode,
        # wandb adds wandb/ below this: runs land in STORAGE/NAME/wandb/offline-run-*
        "wandb_dir": exp_path if not is_uri(storage) else str(Path("runs").resolve() / name),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "args": scrub({k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}),
    }
    print(
        f"experiment {exp_path}: {exp['num_samples']} trials, metric {space.metric} "
        f"({space.mode}), {space.max_epochs} epochs, ASHA grace {exp['grace_period']} "
        f"reduction {exp['reduction_factor']}, max concurrent "
        f"{exp['max_concurrent'] or 'auto'}, {args.cpus_per_trial:g} CPU + "
        f"{'auto' if gpus_per_trial is None else f'{gpus_per_trial:g}'} GPU per trial, "
        f"W&B {wandb_mode}",
        flush=True,
    )
    write_text(
        join_storage(exp_path, EXPERIMENT_FILE), json.dumps(exp, indent=2, default=str) + "\n"
    )
    return execute(args, exp, space, card_bytes, restore=False)


def resume(
    parser: argparse.ArgumentParser, args: argparse.Namespace, exp: dict[str, Any], card_bytes: int
) -> int:
    from ray import tune

    if not tune.Tuner.can_restore(exp["path"]):
        parser.error(
            f"{exp['path']} cannot be restored (no experiment state yet); "
            f"remove it or choose another --name"
        )
    print(
        f"resuming {exp['name']}: space {exp['space']}, {exp['num_samples']} trials, "
        f"metric {exp['metric']} ({exp['mode']}); finished trials are kept",
        flush=True,
    )
    try:
        space = load_space(
            exp["space"],
            defaults=exp["defaults"],
            overrides=exp["overrides"],
            max_epochs=exp["max_epochs"],
            cpu=exp["profile"] == "cpu",
            seed=exp["args"].get("seed", 0),
        )
    except ValueError as err:
        parser.error(str(err))
    return execute(args, exp, space, card_bytes, restore=True)


def execute(
    args: argparse.Namespace, exp: dict[str, Any], space: Space, card_bytes: int, restore: bool
) -> int:
    import ray
    from ray import tune

    from search.export import export_best
    from search.resources import resource_request

    temp_dir = None
    if not ray.is_initialized():
        temp_dir = tempfile.mkdtemp(prefix="r", dir="/tmp")  # short: Ray's socket paths
        ray.init(
            object_store_memory=200 * 2**20,  # bytes; trials pass nothing big through it
            include_dashboard=False,
            log_to_driver=False,
            _temp_dir=temp_dir,
        )
    trainable = make_trainable(exp, card_bytes)
    started = time.monotonic()
    budget_hit = False
    try:
        if restore:
            from search.repair import repair_missing_checkpoints

            for note in repair_missing_checkpoints(exp["path"]):
                print(f"resume: {note}", flush=True)
            tuner = tune.Tuner.restore(
                exp["path"], trainable=trainable, resume_unfinished=True, resume_errored=True
            )
        else:
            tuner = build_tuner(space, args, exp, trainable)
        try:
            grid = tuner.fit()
        except KeyboardInterrupt:
            print(f"\ninterrupted; resume with:\n  {resume_command(exp)}", flush=True)
            return 130
        wall = time.monotonic() - started
        budget = exp["args"].get("time_budget")
        budget_hit = bool(budget) and wall >= float(budget) - 1.0

        def gpus_of(config: dict[str, Any]) -> float:
            return resource_request(
                config, exp["cpus_per_trial"], exp["gpus_per_trial"], card_bytes or None
            ).get("GPU", 0.0)

        summary = summarize(grid, exp, wall, gpus_of)
        state = sweep_state(summary, budget_hit)
        summary["state"] = state
        print_summary(summary, state, exp)
        if not is_uri(exp["storage"]):
            write_text(
                join_storage(exp["path"], SUMMARY_FILE),
                json.dumps(summary, indent=2, default=str) + "\n",
            )
        if state == "interrupted":
            print(
                f"the sweep did not finish: nothing exported. Resume with:\n  "
                f"{resume_command(exp)}",
                flush=True,
            )
            return 130
        if args.no_export:
            return 0
        return export_at_end(args, exp, export_best)
    finally:
        if temp_dir is not None:
            ray.shutdown()
            shutil.rmtree(temp_dir, ignore_errors=True)


def export_at_end(args: argparse.Namespace, exp: dict[str, Any], export_best) -> int:
    out = args.export or Path(exp["path"]) / "export"
    if is_uri(exp["storage"]):
        import pyarrow.fs

        local = Path(tempfile.mkdtemp(prefix="cxr-export-"))
        pyarrow.fs.copy_files(exp["path"], str(local / exp["name"]))
        source = local / exp["name"]
        if args.export is None:
            out = Path("runs").resolve() / exp["name"] / "export"
    else:
        source = Path(exp["path"])
    try:
        bundle = export_best(source, out, exp["metric"], exp["mode"])
    except ValueError as err:
        print(f"export failed: {err}", file=sys.stderr)
        return 1
    meta = json.loads((bundle / "bundle.json").read_text())
    print(
        f"exported best checkpoint {meta['source']['trial']}/{meta['source']['checkpoint']}"
        f" to {bundle} (bundle + model.onnx, ONNX max |diff| "
        f"{meta['onnx']['max_abs_diff_probabilities']:.1e})",
        flush=True,
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # Ray warns about snapshot frequency and slow callbacks at sub-second thresholds; epochs
    # here take seconds, so those warnings would only bury the progress lines.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("TUNE_WARN_THRESHOLD_S", "30")
    return run(argv)


if __name__ == "__main__":
    sys.exit(main())
