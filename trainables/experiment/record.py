"""The experiment record, `NAME/cxr_tune.json` (`ExperimentRecord`, schema `SCHEMA_VERSION`):
what the sweep decided before it started; a resume reads it back instead of the flags."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainables.cache import atomic_write_text
from trainables.experiment.rules import check_mode
from trainables.experiment.wandb_paths import DEFAULT_WANDB_PROJECT

SCHEMA_VERSION = 1  # of cxr_tune.json; files written before the field existed are version 1
EXPERIMENT_FILE = "cxr_tune.json"


@dataclass(frozen=True)
class ExperimentRecord:
    """What the sweep decided before it started; a resume reads it back instead of the flags."""

    name: str
    metric: str
    mode: str
    """`max` or `min`, from the space file; ranks trials and checkpoints everywhere."""
    storage: str = ""
    """The --storage folder or URI the experiment lives under."""
    path: str = ""
    """STORAGE/NAME (a local path or a URI)."""
    space: str = ""
    """The space file's absolute path."""
    max_epochs: int | None = None
    grace_period: int | None = None
    """ASHA: epochs before a trial may be stopped."""
    reduction_factor: int | None = None
    """ASHA: the top 1/factor of a rung continues."""
    num_samples: int | None = None
    max_concurrent: int | None = None
    """None: as many trials at once as the resources allow."""
    cpus_per_trial: float = 1.0
    gpus_per_trial: float | None = None
    """None: a GPU fraction sized per trial from its model's peak memory."""
    profile: str = ""
    """`cpu` or `full` (search.run's run profiles)."""
    defaults: dict[str, Any] = field(default_factory=dict)
    """Trial config values below the space's constants (image_size, ...)."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """Trial config values above them (data, seed)."""
    wandb_mode: str = "disabled"
    wandb_dir: str = ""
    """W&B adds wandb/ below this folder."""
    created: str = ""
    """UTC time, ISO 8601."""
    args: dict[str, Any] = field(default_factory=dict)
    """search.run's command-line arguments, secrets scrubbed."""
    gpu_memory: dict[str, Any] = field(default_factory=dict)
    """How trials' GPU shares were sized: measured on the card or estimated
    (`search.resources.memory_record`); empty without GPU packing."""
    code_version: str = ""
    """cxr-tune's version and git commit when the sweep started (`cxr_tune.code_version`)."""
    points_to_evaluate: list[dict[str, Any]] = field(default_factory=list)
    """The space's known-good configurations (POINTS_TO_EVALUATE) the searcher tries first, in
    order; those the run profile cannot train (outside CPU_CHOICES) are left out."""
    weights: dict[str, Any] = field(default_factory=dict)
    """The pretrained files the driver fetched before the sweep, {files: {'MODEL/WEIGHTS':
    {file, sha256, url, library}}, dropped: {'MODEL/WEIGHTS': why}} (`search.pretrained`);
    each trial's config names its own file as weights_path."""
    tpe_startup_trials: int | None = None
    """TPE's start-up count (Optuna's n_startup_trials): finished trials before TPE models the
    results, the enqueued points plus the random ones; None for records written before it."""
    sampler: str = "tpe"
    """The Optuna sampler the sweep searches with (`search.tuner.SAMPLERS`); records written
    before the choice existed searched with TPE."""
    space_sha256: str = ""
    """The space file's content hash when the sweep started; a resume refuses an edited file
    ("" for records written before the field existed: not checked)."""
    space_values: dict[str, list[str]] = field(default_factory=dict)
    """What the space file could make a trial then (`search.walk.space_values`: each name
    with its choices, range or values, and the module constants), to name what an edit changed."""
    select_top: int = 0
    """Noise-aware selection (`trainables.selection`): after a finished sweep its top
    `select_top` configurations are re-run with `select_seeds` new seeds and the export is the
    best mean; 0: off (the export is the sweep's single best epoch)."""
    select_seeds: int = 0
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        check_mode(self.mode, f"{EXPERIMENT_FILE} field 'mode'")

    @property
    def seed(self) -> int:
        return int(self.args.get("seed") or 0)

    @property
    def time_budget(self) -> float | None:
        """Seconds (--time-budget), None without a budget."""
        value = self.args.get("time_budget")
        return float(value) if value else None

    @property
    def max_failures(self) -> int | None:
        """Retries of a trial whose run failed (--max-failures), None: the product's default."""
        value = self.args.get("max_failures")
        return None if value is None else int(value)

    @property
    def wandb_project(self) -> str:
        return str(self.args.get("wandb_project") or DEFAULT_WANDB_PROJECT)

    @property
    def local_dir(self) -> str:
        """The experiment's folder on this machine: its path, or for a URI the local folder
        that holds its W&B runs and Optuna journal."""
        return self.wandb_dir if "://" in self.path else self.path

    def wandb_config(self) -> dict[str, Any]:
        """The experiment's part of every W&B run's config (trials, export, report)."""
        return {
            "name": self.name,
            "space": self.space,
            "metric": self.metric,
            "mode": self.mode,
            "max_epochs": self.max_epochs,
            "asha": {
                "grace_period": self.grace_period,
                "reduction_factor": self.reduction_factor,
                "max_t": self.max_epochs,
            },
            "num_samples": self.num_samples,
            "max_concurrent": self.max_concurrent,
            "profile": self.profile,
            "seed": self.seed,
            "data": self.overrides.get("data"),
            "code_version": self.code_version,
            "created": self.created,
        }

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, default=str) + "\n"

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], where: str = EXPERIMENT_FILE) -> ExperimentRecord:
        """Refuses unknown fields, missing required ones and a newer schema, naming `where`."""
        if not isinstance(values, Mapping):
            raise ValueError(f"{where} must hold a JSON object")
        version = values.get("schema_version", 1)
        if not isinstance(version, int) or version > SCHEMA_VERSION:
            raise ValueError(
                f"{where}: schema_version {version!r} is newer than this cxr-tune reads "
                f"({SCHEMA_VERSION})"
            )
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{where}: unknown fields {unknown}; expected some of {sorted(known)}")
        missing = [k for k in ("name", "metric", "mode") if k not in values]
        if missing:
            raise ValueError(f"{where} lacks the fields {missing}")
        return cls(**dict(values))


def parse_record(text: str, where: str = EXPERIMENT_FILE) -> ExperimentRecord:
    try:
        values = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{where} is not valid JSON: {err}") from None
    return ExperimentRecord.from_dict(values, where)


def record_path(experiment_dir: Path) -> Path:
    return Path(experiment_dir) / EXPERIMENT_FILE


def read_record(experiment_dir: Path) -> ExperimentRecord | None:
    """The record of a local experiment; None when it has none, ValueError when it is damaged."""
    path = record_path(experiment_dir)
    if not path.is_file():
        return None
    return parse_record(path.read_text(), str(path))


def write_record(experiment_dir: Path, record: ExperimentRecord) -> Path:
    """Write atomically (a reader sees the old record or the new one, never half of one)."""
    path = record_path(experiment_dir)
    atomic_write_text(path, record.to_json())
    return path


def holds_experiment(directory: Path) -> bool:
    return record_path(directory).is_file()
