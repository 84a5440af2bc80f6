"""The experiment folder on disk: the one package that names its files and reads them.

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

Each file has one submodule that names, writes and reads it; this package re-exports them all:

- `rules`: `check_mode`, `asha_milestones`, `is_better` (no file of their own)
- `wandb_paths`: W&B's mode rule (`wandb_mode`) and the runs folder `NAME/wandb/`
- `layout`: the names of the export folder, the Optuna journal and the disk reserve
- `record`: cxr_tune.json (`ExperimentRecord`)
- `lock`: cxr_tune.lock (`LockHolder`)
- `summary`: summary.json
- `data_report`: data_report.json
- `trials`: a trial's result.json, params.json, error.txt and checkpoints
- `ray_state`: Ray's experiment_state-*.json and `trial_outcome`
- `ranking`: the best checkpoint (`rank_key`, `best_checkpoint`, `ranked_trials`)
- `reruns`: reruns/RERUN/rerun.json (`RerunPlan`)
"""

from __future__ import annotations

from trainables.experiment.data_report import (
    DATA_REPORT_FILE,
    DATA_REPORT_VERSION,
    data_report_json,
    parse_data_report,
    read_data_report,
)
from trainables.experiment.layout import (
    EXPORT_DIR,
    OPTUNA_JOURNAL,
    SPACE_RESERVE_FILE,
    journal_path,
)
from trainables.experiment.lock import (
    LOCK_FILE,
    LockHolder,
    parse_lock,
)
from trainables.experiment.ranking import (
    ScoredCheckpoint,
    best_checkpoint,
    best_epoch_row,
    best_of,
    rank_key,
    ranked_trials,
    scored_checkpoints,
    trial_checkpoints,
)
from trainables.experiment.ray_state import (
    COMPLETED,
    ERRORED,
    RAY_STATE_GLOB,
    RAY_STATE_PREFIX,
    STOPPED,
    TERMINAL_STATUSES,
    UNFINISHED,
    RayTrialState,
    newest_ray_state,
    parse_ray_state,
    ray_state_trials,
    read_ray_states,
    trial_outcome,
)
from trainables.experiment.record import (
    EXPERIMENT_FILE,
    SCHEMA_VERSION,
    ExperimentRecord,
    holds_experiment,
    parse_record,
    read_record,
    record_path,
    write_record,
)
from trainables.experiment.reruns import (
    RERUN_FILE,
    RERUN_SCHEMA_VERSION,
    RERUNS_DIR,
    RerunPlan,
    read_rerun_plan,
    rerun_dir,
    rerun_dirs,
    rerun_key,
    write_rerun_plan,
)
from trainables.experiment.rules import (
    DEFAULT_METRIC,
    DEFAULT_MODE,
    METRIC_MODES,
    asha_milestones,
    check_mode,
    is_better,
)
from trainables.experiment.summary import (
    SUMMARY_FILE,
    read_summary_rows,
    write_summary,
)
from trainables.experiment.trials import (
    CHECKPOINT_FILE,
    CHECKPOINT_GLOB,
    ERROR_FILE,
    ERROR_PICKLE,
    PARAMS_FILE,
    RESULT_FILE,
    TRIAL_DIR_PREFIX,
    Results,
    epoch_rows,
    find_checkpoints,
    is_trial_dir,
    parse_results,
    read_error,
    read_params,
    read_results,
    row_epoch,
    trial_dirs,
    trial_id_of,
)
from trainables.experiment.wandb_paths import (
    DEFAULT_WANDB_PROJECT,
    WANDB_DEFAULT_HOST,
    WANDB_MODES,
    WANDB_SUBDIR,
    wandb_key_configured,
    wandb_mode,
    wandb_runs_dir,
    wandb_sync_command,
)

__all__ = [
    "CHECKPOINT_FILE",
    "CHECKPOINT_GLOB",
    "COMPLETED",
    "DATA_REPORT_FILE",
    "DATA_REPORT_VERSION",
    "DEFAULT_METRIC",
    "DEFAULT_MODE",
    "DEFAULT_WANDB_PROJECT",
    "ERRORED",
    "ERROR_FILE",
    "ERROR_PICKLE",
    "EXPERIMENT_FILE",
    "EXPORT_DIR",
    "ExperimentRecord",
    "LOCK_FILE",
    "LockHolder",
    "METRIC_MODES",
    "OPTUNA_JOURNAL",
    "PARAMS_FILE",
    "RAY_STATE_GLOB",
    "RAY_STATE_PREFIX",
    "RERUNS_DIR",
    "RERUN_FILE",
    "RERUN_SCHEMA_VERSION",
    "RESULT_FILE",
    "RayTrialState",
    "RerunPlan",
    "Results",
    "SCHEMA_VERSION",
    "SPACE_RESERVE_FILE",
    "STOPPED",
    "SUMMARY_FILE",
    "ScoredCheckpoint",
    "TERMINAL_STATUSES",
    "TRIAL_DIR_PREFIX",
    "UNFINISHED",
    "WANDB_DEFAULT_HOST",
    "WANDB_MODES",
    "WANDB_SUBDIR",
    "asha_milestones",
    "best_checkpoint",
    "best_epoch_row",
    "best_of",
    "check_mode",
    "data_report_json",
    "epoch_rows",
    "find_checkpoints",
    "holds_experiment",
    "is_better",
    "is_trial_dir",
    "journal_path",
    "newest_ray_state",
    "parse_data_report",
    "parse_lock",
    "parse_results",
    "parse_ray_state",
    "parse_record",
    "rank_key",
    "ranked_trials",
    "ray_state_trials",
    "read_data_report",
    "read_error",
    "read_params",
    "read_ray_states",
    "read_record",
    "read_rerun_plan",
    "read_results",
    "read_summary_rows",
    "record_path",
    "rerun_dir",
    "rerun_dirs",
    "rerun_key",
    "row_epoch",
    "scored_checkpoints",
    "trial_checkpoints",
    "trial_dirs",
    "trial_id_of",
    "trial_outcome",
    "wandb_key_configured",
    "wandb_mode",
    "wandb_runs_dir",
    "wandb_sync_command",
    "write_record",
    "write_rerun_plan",
    "write_summary",
]
