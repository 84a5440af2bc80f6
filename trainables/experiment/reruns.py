"""Multi-seed re-runs, `NAME/reruns/RERUN/rerun.json` (`RerunPlan`, schema
`RERUN_SCHEMA_VERSION`): a re-run of an experiment's top configurations with new seeds, its
trials in the same layout as the sweep's."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainables.cache import atomic_write_text
from trainables.experiment.rules import check_mode

RERUNS_DIR = "reruns"  # NAME/reruns/<rerun name>/: second Ray runs of the top configurations
RERUN_FILE = "rerun.json"
RERUN_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class RerunPlan:
    """A re-run of an experiment's top configurations with new seeds (search.rerun writes it
    before its Ray run starts; analysis reads it back with the trials)."""

    name: str
    metric: str
    mode: str
    seeds: list[int]
    """Training seeds (`TrialConfig.seed`); the validation split (`split_seed`) is unchanged."""
    configs: list[dict[str, Any]]
    """Best first: {"rank", "trial_id", "value" (the sweep's best metric), "params"}."""
    source: str = ""
    """The experiment directory the configurations come from."""
    created: str = ""
    schema_version: int = RERUN_SCHEMA_VERSION

    def __post_init__(self) -> None:
        check_mode(self.mode, f"{RERUN_FILE} field 'mode'")

    def config_of(self, params: Mapping[str, Any]) -> dict[str, Any] | None:
        """The planned configuration a re-run trial's params.json belongs to (all but seed)."""
        key = rerun_key(params)
        return next((c for c in self.configs if rerun_key(c["params"]) == key), None)


def rerun_key(params: Mapping[str, Any]) -> str:
    """A configuration's identity across seeds: every parameter but `seed`."""
    return json.dumps({k: v for k, v in params.items() if k != "seed"}, sort_keys=True, default=str)


def rerun_dir(experiment_dir: Path, name: str) -> Path:
    return Path(experiment_dir) / RERUNS_DIR / name


def write_rerun_plan(directory: Path, plan: RerunPlan) -> Path:
    path = Path(directory) / RERUN_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(dataclasses.asdict(plan), indent=2, default=str) + "\n")
    return path


def read_rerun_plan(directory: Path) -> RerunPlan:
    """ValueError naming the file when it is missing, damaged or newer than this code."""
    path = Path(directory) / RERUN_FILE
    try:
        values = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is missing or not valid JSON: {err}") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path} must hold a JSON object")
    version = values.get("schema_version", 1)
    if not isinstance(version, int) or version > RERUN_SCHEMA_VERSION:
        raise ValueError(f"{path}: schema_version {version!r} is newer than this cxr-tune reads")
    known = {f.name for f in dataclasses.fields(RerunPlan)}
    try:
        return RerunPlan(**{k: v for k, v in values.items() if k in known})
    except TypeError as err:
        raise ValueError(f"{path}: {err}") from None


def rerun_dirs(experiment_dir: Path) -> list[Path]:
    """The experiment's re-runs (folders under reruns/ holding rerun.json), sorted by name."""
    root = Path(experiment_dir) / RERUNS_DIR
    if not root.is_dir():
        return []
    return sorted(d for d in root.iterdir() if (d / RERUN_FILE).is_file())
