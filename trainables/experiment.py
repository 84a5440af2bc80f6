"""The experiment folder on disk: the one module that names its files and reads them.

An experiment is Ray Tune's layout under `STORAGE/NAME/` plus the sweep's own files:

    NAME/cxr_tune.json                  the `ExperimentRecord` (written by search.run)
    NAME/summary.json                   the end-of-sweep summary (search.summary writes it)
    NAME/data_report.json               the driver's pre-flight data report(s) (`DataReport`s)
    NAME/experiment_state-*.json        Ray's trial table: `newest_ray_state`, `parse_ray_state`
    NAME/<trial dir>/params.json        the trial's config (a `TrialConfig` dict)
    NAME/<trial dir>/result.json        one JSON object per reported epoch, `read_results`
    NAME/<trial dir>/checkpoint_NNNNNN/checkpoint.pt
    NAME/<trial dir>/error.txt          only for a trial that raised
    NAME/export/                        the exported bundle (trainables.bundle owns its files)
    NAME/optuna_journal.log             the Optuna study (JournalStorage file; study = NAME)
    NAME/wandb/offline-run-*/           W&B runs: one per trial, the export, the report
    NAME/reruns/RERUN/rerun.json        a multi-seed re-run's `RerunPlan` (search.rerun)
    NAME/reruns/RERUN/<trial dir>/...   its trials, in the same layout as the sweep's
    NAME/cxr_tune.lock                  who runs the experiment now (`LockHolder`, search.lock)
    NAME/.cxr_tune.reserve              space kept for the last save of a full disk (search.disk)

Plain JSON and files only (no Ray, Optuna or W&B), so `search/` writes and `analysis/` reads the
same files through the same rules:

- Damaged `result.json` lines: a line that is not a JSON object (a write torn by a crash, or
  garbage) is skipped and counted in `Results.damaged`; the lines after it are kept.
- A repeated epoch (a trial restored from a checkpoint reports it again): the last report wins.
- The best checkpoint (`rank_key`): the better metric value, then the earlier epoch, then the
  smaller trial id (string order). NaN never wins. `search.export` and `analysis.load` both rank
  with it, so the exported model is the report's best trial; a trial's best epoch
  (`best_epoch_row`, the W&B summary and the Optuna value) follows the same rule.
- The W&B mode (`wandb_mode`) is W&B's own rule, for the sweep and the report alike.
"""

from __future__ import annotations

import dataclasses
import json
import math
import netrc
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from trainables.cache import atomic_write_text

SCHEMA_VERSION = 1  # of cxr_tune.json; files written before the field existed are version 1
EXPERIMENT_FILE = "cxr_tune.json"
SUMMARY_FILE = "summary.json"
DATA_REPORT_FILE = "data_report.json"
DATA_REPORT_VERSION = 1
RESULT_FILE = "result.json"
PARAMS_FILE = "params.json"
ERROR_FILE = "error.txt"
ERROR_PICKLE = "error.pkl"
CHECKPOINT_FILE = "checkpoint.pt"
CHECKPOINT_GLOB = "checkpoint_*"
RAY_STATE_PREFIX = "experiment_state-"  # + a sortable time + .json, one per save
RAY_STATE_GLOB = f"{RAY_STATE_PREFIX}*.json"
EXPORT_DIR = "export"
OPTUNA_JOURNAL = "optuna_journal.log"  # Optuna JournalStorage file (file backend)
WANDB_SUBDIR = "wandb"  # wandb.init(dir=D) writes its runs to D/wandb/
RERUNS_DIR = "reruns"  # NAME/reruns/<rerun name>/: second Ray runs of the top configurations
RERUN_FILE = "rerun.json"
RERUN_SCHEMA_VERSION = 1
TRIAL_DIR_PREFIX = "trial_"  # search.run names trial directories trial_<trial id>
LOCK_FILE = "cxr_tune.lock"  # search.lock takes it; empty (or absent) when nobody holds it
SPACE_RESERVE_FILE = ".cxr_tune.reserve"  # search.disk's kept space, there while a sweep runs

METRIC_MODES = ("max", "min")
DEFAULT_METRIC, DEFAULT_MODE = "val_acc", "max"  # for an experiment without cxr_tune.json
DEFAULT_WANDB_PROJECT = "cxr-tune"  # search.run's --wandb-project


def check_mode(mode: str, where: str = "mode") -> str:
    if mode not in METRIC_MODES:
        raise ValueError(f"{where}: unknown mode {mode!r}; expected one of {list(METRIC_MODES)}")
    return mode


def asha_milestones(grace_period: int, reduction_factor: int, max_t: int) -> tuple[int, ...]:
    """The rungs of Ray's ASHAScheduler (one bracket), ascending: grace * rf**k for Ray's own
    count of rungs, int(log(max_t / grace) / log(rf) + 1), so a trial stopped at a rung ends on a
    checkpoint. The one rule: checkpoints, the report's ASHA figure and its prose all use it."""
    if grace_period < 1 or reduction_factor < 2 or max_t < grace_period:
        raise ValueError(
            f"need grace_period >= 1, reduction_factor >= 2 and max_t >= grace_period, got "
            f"{grace_period}, {reduction_factor}, {max_t}"
        )
    rungs = int(math.log(max_t / grace_period) / math.log(reduction_factor) + 1)
    return tuple(sorted(int(grace_period * reduction_factor**k) for k in range(rungs)))


def is_better(a: float, b: float, mode: str) -> bool:
    """Whether metric value `a` beats `b` under `mode` (NaN never wins)."""
    if math.isnan(a):
        return False
    if math.isnan(b):
        return True
    return a > b if mode == "max" else a < b


# --- W&B: the mode rule and where the runs are ------------------------------------------------

WANDB_MODES = ("online", "offline", "disabled")
_WANDB_MODE_ALIASES = {"dryrun": "offline", "run": "online"}  # W&B's older spellings
WANDB_DEFAULT_HOST = "https://api.wandb.ai"


def wandb_key_configured() -> bool:
    """Whether W&B has a key here, where W&B looks for one: WANDB_API_KEY, else `wandb login`'s
    netrc entry for the W&B host ($NETRC or ~/.netrc). The key itself is never returned."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlsplit(os.environ.get("WANDB_BASE_URL") or WANDB_DEFAULT_HOST).hostname
    path = os.environ.get("NETRC") or str(Path.home() / ".netrc")
    try:
        entry = netrc.netrc(path).authenticators(host or "")
    except (OSError, netrc.NetrcParseError):
        return False
    return bool(entry and entry[2])


def wandb_mode(requested: str | None = None) -> str:
    """W&B's own rule: the flag, else WANDB_MODE (WANDB_DISABLED=true: disabled), else online
    when a key is configured, else offline."""
    mode = requested or os.environ.get("WANDB_MODE") or ""
    if not mode and os.environ.get("WANDB_DISABLED", "").lower() in ("true", "1", "yes"):
        mode = "disabled"
    if not mode:
        return "online" if wandb_key_configured() else "offline"
    mode = _WANDB_MODE_ALIASES.get(mode, mode)
    if mode not in WANDB_MODES:
        where = "--wandb-mode" if requested else "WANDB_MODE"
        raise ValueError(f"{where}: unknown W&B mode {mode!r}; expected one of {list(WANDB_MODES)}")
    return mode


def wandb_runs_dir(wandb_dir: str | Path) -> Path:
    """Where wandb.init(dir=wandb_dir) puts its runs: every run of an experiment (trials, the
    export, the report) goes there, so one `wandb sync` finds them all."""
    return Path(wandb_dir) / WANDB_SUBDIR


def wandb_sync_command(wandb_dir: str | Path) -> str:
    return f"wandb sync {wandb_runs_dir(wandb_dir)}/offline-run-*"


def journal_path(local_dir: str | Path) -> Path:
    """The Optuna journal of an experiment whose local folder is `local_dir`."""
    return Path(local_dir) / OPTUNA_JOURNAL


# --- the experiment record (cxr_tune.json) ------------------------------------------------------


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
    (`search.gpu_memory.memory_record`); empty without GPU packing."""
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


# --- the lock file (cxr_tune.lock) ---------------------------------------------------------------


@dataclass(frozen=True)
class LockHolder:
    """Who holds an experiment's lock: written into `LOCK_FILE` by the process that took it."""

    pid: int
    host: str
    started: str
    """UTC time the holder took the lock, ISO 8601."""
    command: str = ""
    """The holder's command line, shortened (for the refusal message)."""

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self)) + "\n"

    def describe(self) -> str:
        return f"pid {self.pid} on host {self.host} since {self.started}"


def parse_lock(text: str) -> LockHolder | None:
    """The holder a lock file names; None for an empty or unreadable one (nobody to name)."""
    try:
        values = json.loads(text)
        return LockHolder(
            pid=int(values["pid"]),
            host=str(values["host"]),
            started=str(values["started"]),
            command=str(values.get("command", "")),
        )
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


# --- summary.json ------------------------------------------------------------------------------


def write_summary(experiment_dir: Path, summary: Mapping[str, Any]) -> Path:
    path = Path(experiment_dir) / SUMMARY_FILE
    atomic_write_text(path, json.dumps(summary, indent=2, default=str) + "\n")
    return path


def read_summary_rows(experiment_dir: Path) -> dict[str, dict[str, Any]]:
    """summary.json's per-trial rows by trial id; {} when absent or unreadable (it is optional:
    an interrupted driver never wrote it)."""
    try:
        summary = json.loads((Path(experiment_dir) / SUMMARY_FILE).read_text())
        return {str(r["trial_id"]): r for r in summary.get("trial_rows", []) if "trial_id" in r}
    except (OSError, json.JSONDecodeError, TypeError, AttributeError, KeyError):
        return {}


# --- data_report.json --------------------------------------------------------------------------
# One `trainables.data.DataReport.to_dict()` per dataset the sweep's space can load (one per
# preprocessing setting), the first being the run's own; plain dicts here so this module stays
# free of torch (`DataReport.from_dict` types them).


def data_report_json(reports: Iterable[Mapping[str, Any]]) -> str:
    body = {"schema_version": DATA_REPORT_VERSION, "datasets": [dict(r) for r in reports]}
    return json.dumps(body, indent=2, default=str) + "\n"


def parse_data_report(text: str, where: str = DATA_REPORT_FILE) -> list[dict[str, Any]]:
    try:
        body = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{where} is not valid JSON: {err}") from None
    if not isinstance(body, dict) or not isinstance(body.get("datasets"), list):
        raise ValueError(f"{where} must hold an object with a 'datasets' list")
    if body.get("schema_version", 1) > DATA_REPORT_VERSION:
        raise ValueError(f"{where}: schema_version {body['schema_version']!r} is newer than this")
    return [d for d in body["datasets"] if isinstance(d, dict)]


def write_data_report(experiment_dir: Path, reports: Iterable[Mapping[str, Any]]) -> Path:
    path = Path(experiment_dir) / DATA_REPORT_FILE
    atomic_write_text(path, data_report_json(reports))
    return path


def read_data_report(experiment_dir: Path) -> list[dict[str, Any]]:
    """The saved data reports; [] when the experiment has none (written before it existed)."""
    path = Path(experiment_dir) / DATA_REPORT_FILE
    if not path.is_file():
        return []
    return parse_data_report(path.read_text(), str(path))


# --- trials: result.json, params.json, error.txt, checkpoints ------------------------------------


@dataclass(frozen=True)
class Results:
    """A trial's result.json: the rows that parsed, in file order, and how many did not."""

    rows: list[dict[str, Any]]
    damaged: int = 0
    """Lines skipped because they were not a JSON object."""


def is_trial_dir(directory: Path) -> bool:
    return (directory / PARAMS_FILE).is_file() or (directory / RESULT_FILE).is_file()


def trial_dirs(experiment_dir: Path) -> list[Path]:
    """Sub-directories holding params.json or result.json, sorted by name."""
    return sorted(d for d in Path(experiment_dir).iterdir() if d.is_dir() and is_trial_dir(d))


def read_results(trial_dir: Path) -> Results:
    """The rows of `trial_dir/result.json`; a damaged line is skipped and counted (module doc)."""
    path = Path(trial_dir) / RESULT_FILE
    if not path.is_file():
        return Results([])
    rows, damaged = [], 0
    for line in path.read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if isinstance(row, dict):
            rows.append(row)
        else:
            damaged += 1
    return Results(rows, damaged)


def row_epoch(row: Mapping[str, Any], index: int) -> int:
    """The epoch of a result row: `epoch`, else Ray's `training_iteration`, else its position."""
    value = row.get("epoch", row.get("training_iteration"))
    return int(value) if value is not None else index + 1


def epoch_rows(rows: Iterable[Mapping[str, Any]]) -> dict[int, dict[str, Any]]:
    """Epoch -> the last row reported for it (a restored trial reports an epoch again), sorted."""
    out: dict[int, dict[str, Any]] = {}
    for i, row in enumerate(rows):
        out[row_epoch(row, i)] = dict(row)
    return dict(sorted(out.items()))


def read_params(trial_dir: Path) -> dict[str, Any]:
    """params.json as a dict; {} when missing or not a JSON object."""
    path = Path(trial_dir) / PARAMS_FILE
    try:
        loaded = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def read_error(trial_dir: Path) -> str | None:
    """The last line of error.txt for a trial that raised; None for one that did not."""
    text_file, pickle_file = Path(trial_dir) / ERROR_FILE, Path(trial_dir) / ERROR_PICKLE
    if text_file.is_file():
        lines = [ln for ln in text_file.read_text(errors="replace").splitlines() if ln]
        return lines[-1].strip() if lines else "error (empty error.txt)"
    if pickle_file.is_file():
        return "error (details only in error.pkl)"
    return None


def trial_id_of(trial_dir: Path, rows: list[dict[str, Any]]) -> str:
    """The trial id from its last result row, else from the directory name."""
    for row in reversed(rows):
        if row.get("trial_id"):
            return str(row["trial_id"])
    # search.run names trial dirs 'trial_<trial_id>'; Ray's default is
    # '<trainable>_<trial_id>_<index>_<params>_<date>'.
    parts = Path(trial_dir).name.split("_")
    return parts[1] if len(parts) >= 2 else Path(trial_dir).name


def find_checkpoints(trial_dir: Path, epochs: Mapping[int, Mapping[str, Any]]) -> dict[int, Path]:
    """Epoch -> checkpoint directory holding checkpoint.pt, for those still on disk.

    A row's `checkpoint_dir_name` says which epoch wrote a checkpoint; a checkpoint no row names
    (its row was lost) gets the epoch stored inside checkpoint.pt.
    """
    trial_dir = Path(trial_dir)
    on_disk = {
        c.name: c for c in trial_dir.glob(CHECKPOINT_GLOB) if (c / CHECKPOINT_FILE).is_file()
    }
    found: dict[int, Path] = {}
    for epoch, row in epochs.items():
        name = row.get("checkpoint_dir_name")
        if isinstance(name, str) and name in on_disk:
            found[epoch] = on_disk[name]
    for ckpt in on_disk.values():
        if ckpt not in found.values():
            epoch = _checkpoint_epoch(ckpt)
            if epoch is not None:
                found.setdefault(epoch, ckpt)
    return dict(sorted(found.items()))


def _checkpoint_epoch(ckpt: Path) -> int | None:
    """The completed epoch stored in checkpoint.pt (memory-mapped: tensors are not read)."""
    import torch

    try:
        state = torch.load(ckpt / CHECKPOINT_FILE, map_location="cpu", weights_only=True, mmap=True)
        return int(state["epoch"])
    except Exception:  # an unreadable checkpoint counts as missing, not fatal
        return None


# --- Ray's experiment state ----------------------------------------------------------------------


TERMINAL_STATUSES = ("TERMINATED", "ERROR")  # Ray's statuses of a trial that will not run again

# How a trial ended, in words a report can print (`trial_outcome` decides).
COMPLETED = "completed"  # trained all max_epochs
STOPPED = "stopped early"  # ended before max_epochs without error (ASHA or a time budget)
ERRORED = "errored"  # raised (Ray's ERROR; error.txt in the trial dir)
UNFINISHED = "unfinished"  # still pending or running, or nothing reported yet


def trial_outcome(
    status: str | None, epochs: int, max_epochs: int | None, raised: bool = False
) -> str:
    """COMPLETED, STOPPED, ERRORED or UNFINISHED: the one rule for how a trial ended, used by
    summary.json, the W&B tags, the Optuna state, the progress lines and the report.

    `status` is Ray's word (None when unknown: no saved Ray state, or a callback that only
    knows whether the trial raised); `raised` decides ERRORED only without a status, since a
    trial Ray retried after an error has an error.txt but may since have finished. `epochs` is
    the last epoch it reported; `max_epochs` None when unknown."""
    if status == "ERROR" or (status is None and raised):
        return ERRORED
    if status in ("PENDING", "RUNNING", "PAUSED"):
        return UNFINISHED
    if max_epochs is not None and epochs >= max_epochs:
        return COMPLETED
    if status == "TERMINATED" or epochs > 0:
        return STOPPED
    return UNFINISHED


@dataclass(frozen=True)
class RayTrialState:
    trial_id: str
    dir_name: str
    """The trial directory's name under the experiment ('' when Ray did not record it)."""
    status: str
    """Ray's word: PENDING, RUNNING, PAUSED, TERMINATED or ERROR."""


def newest_ray_state(names: Iterable[str]) -> str | None:
    """The newest of Ray's saved experiment states among `names` (paths or file names): Ray
    names them experiment_state-<sortable time>.json, one per driver session."""
    states = [n for n in names if _base(n).startswith(RAY_STATE_PREFIX) and n.endswith(".json")]
    return max(states, key=_base) if states else None


def _base(name: str) -> str:
    return name.rstrip("/").rsplit("/", 1)[-1]


def parse_ray_state(data: bytes | str, where: str) -> dict[str, Any]:
    """Ray's saved experiment state, each trial's JSON checked; a one-line ValueError naming
    `where` and what to do when it is torn (a write cut short by a full disk or a crash) or is
    not Ray's. The one rule for every reader of this file (`read_ray_states`, `search.repair`).
    """
    try:
        state = json.loads(data)
        for trial, meta in state["trial_data"]:
            json.loads(trial)["trial_id"]
            json.loads(meta)
    except (ValueError, KeyError, TypeError) as err:  # JSONDecodeError is a ValueError
        reason = f"{type(err).__name__}: {err}"
        raise ValueError(
            f"{where}: Ray's saved experiment state cannot be read ({reason}), as a write cut "
            f"short by a full disk or a crash leaves it; Ray cannot resume from it: move it "
            f"aside to resume from an older {RAY_STATE_GLOB} beside it, or start a new --name"
        ) from None
    return state


def ray_state_trials(state: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The plain JSON part of each trial in a `parse_ray_state` state (Ray's pickles left alone)."""
    return [json.loads(trial) for trial, _ in state["trial_data"]]


def read_ray_states(experiment_dir: Path) -> list[RayTrialState]:
    """The trials of the newest experiment_state-*.json Ray saved (what a resume sees); [] when
    Ray saved none. A torn one is refused (`parse_ray_state`)."""
    newest = newest_ray_state(str(p) for p in Path(experiment_dir).glob(RAY_STATE_GLOB))
    if newest is None:
        return []
    out = []
    for trial in ray_state_trials(parse_ray_state(Path(newest).read_bytes(), newest)):
        if isinstance(trial.get("status"), str):
            name = Path(trial.get("relative_logdir") or "").name
            out.append(RayTrialState(str(trial.get("trial_id", "")), name, trial["status"]))
    return out


# --- the best checkpoint -------------------------------------------------------------------------


@dataclass(frozen=True)
class ScoredCheckpoint:
    trial_dir: Path
    trial_id: str
    epoch: int
    checkpoint_dir: Path
    value: float
    """The metric at `epoch` (the row of the epoch that wrote the checkpoint)."""
    row: dict[str, Any]


def rank_key(candidate: ScoredCheckpoint, mode: str) -> tuple[float, int, str]:
    """Sort key, best first: the better value, then the earlier epoch, then the smaller trial id."""
    check_mode(mode)
    value = -candidate.value if mode == "max" else candidate.value
    return (value, candidate.epoch, candidate.trial_id)


def best_epoch_row(
    rows: Iterable[Mapping[str, Any]], metric: str, mode: str
) -> tuple[int, dict[str, Any]] | None:
    """A trial's best epoch and its row by `rank_key`'s rule (the better value, then the earlier
    epoch; NaN never wins); None when no epoch reported `metric` as a number."""
    check_mode(mode)
    scored = []
    for epoch, row in epoch_rows(rows).items():
        value = row.get(metric)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isnan(float(value)):
                scored.append(((-float(value) if mode == "max" else float(value)), epoch, row))
    if not scored:
        return None
    _, epoch, row = min(scored, key=lambda s: (s[0], s[1]))
    return epoch, row


def scored_checkpoints(
    trial_dir: Path,
    trial_id: str,
    epochs: Mapping[int, Mapping[str, Any]],
    checkpoints: Mapping[int, Path],
    metric: str,
) -> list[ScoredCheckpoint]:
    """The trial's checkpoints on disk whose epoch reported `metric` as a number (not NaN)."""
    out = []
    for epoch, ckpt in checkpoints.items():
        value = epochs.get(epoch, {}).get(metric)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isnan(float(value)):
                row = dict(epochs[epoch])
                out.append(ScoredCheckpoint(trial_dir, trial_id, epoch, ckpt, float(value), row))
    return out


def best_of(candidates: Iterable[ScoredCheckpoint], mode: str) -> ScoredCheckpoint | None:
    ranked = sorted(candidates, key=lambda c: rank_key(c, mode))
    return ranked[0] if ranked else None


def trial_checkpoints(trial_dir: Path, metric: str) -> list[ScoredCheckpoint]:
    """Every scored checkpoint of one trial, straight from its files."""
    rows = read_results(trial_dir).rows
    epochs = epoch_rows(rows)
    checkpoints = find_checkpoints(trial_dir, epochs)
    return scored_checkpoints(trial_dir, trial_id_of(trial_dir, rows), epochs, checkpoints, metric)


def best_checkpoint(experiment_dir: Path, metric: str, mode: str) -> ScoredCheckpoint:
    """The best checkpoint of the experiment by `rank_key`; ValueError when there is none."""
    check_mode(mode)
    experiment_dir = Path(experiment_dir)
    trials = trial_dirs(experiment_dir)
    if not trials:
        raise ValueError(
            f"{experiment_dir} holds no trial directories (params.json or result.json)"
        )
    best = best_of((c for d in trials for c in trial_checkpoints(d, metric)), mode)
    if best is None:
        raise ValueError(f"{experiment_dir}: no trial has a kept checkpoint with {metric!r}")
    return best


def ranked_trials(experiment_dir: Path, metric: str, mode: str) -> list[ScoredCheckpoint]:
    """Each trial's best checkpoint, the trials best first by `rank_key` (what export and the
    report call the ranking of the configurations)."""
    check_mode(mode)
    bests = [best_of(trial_checkpoints(d, metric), mode) for d in trial_dirs(experiment_dir)]
    return sorted((b for b in bests if b is not None), key=lambda c: rank_key(c, mode))


# --- multi-seed re-runs (reruns/RERUN/rerun.json) ------------------------------------------------


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
