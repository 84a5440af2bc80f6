"""The sweep's command line: flags, their checks, and the run profiles.

Every flag is checked as it is parsed (argparse's usage error: exit status 2 naming the flag and
its valid values), before Ray starts anything.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from cxr_tune import prog
from search.space import SAMPLER_CHOICES, find_space
from search.tracking import WANDB_MODES
from trainables.classes import parse_class_map
from trainables.experiment import DEFAULT_WANDB_PROJECT, ExperimentRecord
from trainables.vocab import check_label_separator, parse_phantom


@dataclass(frozen=True)
class Profile:
    name: str
    data: str
    image_size: int  # pixels
    max_epochs: int | None  # None: the space's MAX_EPOCHS
    num_samples: int | None  # at most this many trials (None: the space's NUM_SAMPLES)
    max_concurrent: int | None  # None: as many as the resources allow
    grace_period: int | None = None  # None: the space's
    reduction_factor: int | None = None
    max_train_batches: int = 0  # 0: full epochs
    select_top: int = 0  # configurations re-run with new seeds before export (0: off)
    select_seeds: int = 0


# CPU profile, for `make run` on a 2-core machine without a GPU: the small phantom (304 train /
# 76 val images) at 64 px, at most 10 epochs and 10 trials, two at a time, only the space's
# CPU_CHOICES; ASHA keeps the space's grace period (capped at the epochs) and factor.
# Measured: about 2-3 minutes for `make run` with spaces/transfer.py on 2 shared cores.
# Noise-aware selection is off on the CPU profile (re-running the top 3 with 3 seeds would about
# double `make run`'s time on a laptop) and on for the full one: top 3 configurations x 3 seeds.
CPU_PROFILE = Profile("cpu", "phantom:small", 64, 10, 10, 2)
FULL_PROFILE = Profile("full", "phantom:full", 256, None, None, None, select_top=3, select_seeds=3)
DEFAULT_SELECT_TOP, DEFAULT_SELECT_SEEDS = 3, 3  # when only one of the two flags is given
PROFILES = ("auto", "cpu", "full")


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
    try:
        if parse_phantom(text) is not None:
            return text
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    path = Path(text).expanduser()
    if path.is_file() and path.suffix.lower() == ".csv":  # a CSV manifest (README, Data)
        return str(path.resolve())
    if not path.is_dir():
        raise argparse.ArgumentTypeError(
            f"data {text!r} does not exist as a folder or a .csv manifest"
        )
    return str(path.resolve())


def _plugin(text: str) -> str:
    path = Path(text).expanduser().resolve()
    if not path.is_file() or path.suffix != ".py":
        raise argparse.ArgumentTypeError(f"{text} is not a Python file")
    return str(path)


def _class_map(text: str) -> str:
    try:
        parse_class_map(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def _label_separator(text: str) -> str:
    try:
        check_label_separator(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default only when it has one (not "(default: None)")."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        # argparse's documented extension point for HelpFormatter subclasses.
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog("search.run"),
        description="Hyperparameter sweep for chest X-ray classification: an Optuna sampler "
        "proposes trials from a space file, ASHA stops weak ones early, Ray Tune runs them "
        "(fractional GPUs when a GPU is visible), W&B logs them, and the best checkpoint is "
        "exported as a bundle plus ONNX.",
        formatter_class=_HelpFormatter,
    )
    _what_to_run(p)
    _resources(p)
    _where_and_how(p)
    return p


def _what_to_run(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--space",
        type=find_space,
        required=True,
        help="a space by name (transfer, seed, smoke: `cxr-tune spaces` lists them) or the path "
        "of your own space file: define(trial) plus METRIC, MODE, MAX_EPOCHS",
    )
    p.add_argument(
        "--data",
        type=_data,
        default=None,
        help="image-folder root, CSV manifest (path,label[,patient_id,split]) or "
        "phantom:small|phantom:full (default: the profile's embedded phantom)",
    )
    p.add_argument(
        "--class-map",
        type=_class_map,
        default=None,
        help="rename or merge the data's labels: 'seed' (every label that aliases a seed "
        "class merges into it: COVID and Viral Pneumonia -> VIRAL, as the seed's study did) "
        "or 'LABEL=CLASS,LABEL=CLASS'",
    )
    p.add_argument(
        "--label-separator",
        type=_label_separator,
        default=None,
        help="what joins findings in a multi-label manifest's 'labels' / 'Finding Labels' "
        "column (default '|', as NIH ChestX-ray14 writes them)",
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
        "--seed",
        type=_bounded(int, 0, 2**31 - 1, "an integer in [0, 2**31-1]"),
        default=0,
        help="seeds TPE and every trial",
    )
    p.add_argument(
        "--sampler",
        choices=SAMPLER_CHOICES,
        default=None,
        help="Optuna sampler: tpe, gp (a Gaussian process), random, or auto (GP for at most "
        "100 trials over numeric parameters, else TPE) (default: the space's SAMPLER, else auto)",
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
    p.add_argument(
        "--plugin",
        type=_plugin,
        default=None,
        help="a Python file that registers your own model builders with "
        "trainables.models.register_model; the space can then choose them by name",
    )
    p.add_argument(
        "--allow-missing-weights",
        action="store_true",
        help="a pretrained weight set whose file cannot be downloaded (offline) is left out "
        "of the search, with a warning, instead of ending the command",
    )
    p.add_argument(
        "--time-budget",
        type=_bounded(float, 1.0, 1e8, "a number of seconds in [1, 1e8]"),
        help="stop the sweep after this many seconds",
    )
    p.add_argument(
        "--max-failures",
        type=_bounded(int, 0, 100, "an integer in [0, 100]"),
        help="times a failed trial is retried from its last checkpoint (a worker or node that "
        "died); 0 for a space whose failures are its own errors (default: 2)",
    )


def _resources(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--max-concurrent",
        type=_bounded(int, 1, 10000, "an integer in [1, 10000]"),
        help="trials running at once (default: as many as resources allow)",
    )
    p.add_argument(
        "--stream-data",
        action="store_true",
        help="stream training batches from the node's memory-mapped copy instead of keeping the "
        "train split on the GPU (default: kept there when it fits the trial's share)",
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


def _where_and_how(p: argparse.ArgumentParser) -> None:
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
    p.add_argument("--wandb-project", default=DEFAULT_WANDB_PROJECT, help="W&B project")
    p.add_argument(
        "--wandb-mode",
        choices=WANDB_MODES,
        default=None,
        help="default: WANDB_MODE, else online when a W&B key is configured "
        "(WANDB_API_KEY or `wandb login`), else offline",
    )
    p.add_argument(
        "--export",
        type=Path,
        default=None,
        help="bundle directory for the best checkpoint (default: STORAGE/NAME/export)",
    )
    p.add_argument("--no-export", action="store_true", help="skip the export at the end")
    p.add_argument(
        "--select-top",
        type=_bounded(int, 0, 1000, "an integer in [0, 1000]"),
        help="after a finished sweep, re-run its top K configurations with new seeds and export "
        "the best mean over seeds (0: off; default: the profile's, 3 on full, off on cpu)",
    )
    p.add_argument(
        "--select-seeds",
        type=_bounded(int, 1, 1000, "an integer in [1, 1000]"),
        help=f"new seeds per re-run configuration (default: the profile's, else "
        f"{DEFAULT_SELECT_SEEDS})",
    )
    p.add_argument(
        "--verbose",
        action="store_true",
        help="also show Ray's own output (its config box, INFO lines, the trials' prints)",
    )


def refuse(message: str) -> NoReturn:
    """Refuse what the flags ask for (not how they are spelled): one line on stderr, exit
    status 2. argparse's usage block is for usage errors (an unknown flag, a value of the wrong
    kind) and --help."""
    sys.stderr.write(f"error: {' '.join(str(message).split())}\n")
    raise SystemExit(2)


def choose_profile(requested: str, gpus: int) -> tuple[Profile, str]:
    """The profile to run and why, in words (`auto`: cpu without a visible GPU)."""
    if requested == "cpu" or (requested == "auto" and not gpus):
        why = "no GPU visible" if requested == "auto" else "--profile cpu"
        return CPU_PROFILE, why
    why = f"{gpus} GPU(s) visible" if requested == "auto" else "--profile full"
    return FULL_PROFILE, why


def selection_of(args: argparse.Namespace, profile: Profile) -> tuple[int, int]:
    """(top K, seeds N) of the noise-aware selection; (0, 0) when off. A flag beats the
    profile; either flag alone turns the selection on with the other's default."""
    top, seeds = getattr(args, "select_top", None), getattr(args, "select_seeds", None)
    if top is None:
        top = profile.select_top if seeds is None else DEFAULT_SELECT_TOP
    if not top:
        return 0, 0
    return top, seeds or profile.select_seeds or DEFAULT_SELECT_SEEDS


def resume_command(record: ExperimentRecord) -> str:
    """The command line that resumes the sweep `record` describes."""
    return (
        f"python -m search.run --space {record.space} --storage {record.storage} "
        f"--name {record.name} --resume"
    )
