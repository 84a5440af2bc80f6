"""Repairs of Ray's saved search generator (`search_gen_state-*.json`: the trial counter, the
trial total, the `Experiment` new trials are created in, the concurrency limiter's live trials),
read and written through `search.saved_state`; `search.repair` runs them before a resume."""

from __future__ import annotations

from pathlib import Path

from search import saved_state as saved
from trainables.experiment import TERMINAL_STATUSES, ray_state_trials


def free_slots(experiment_path: str, trial_ids: set[str]) -> None:
    """Free the concurrency slots of trials that finished after Ray's last save."""
    gen = saved.search_gen(experiment_path)
    limiter = gen[2].get(saved.LIMITER_KEY) if gen else None
    if isinstance(limiter, dict) and "live_trials" in limiter:
        limiter["live_trials"] = set(limiter["live_trials"]) - trial_ids
        limiter["num_unfinished_live_trials"] = len(limiter["live_trials"])
        saved.save_search_gen(*gen)


def rebase_search_state(experiment_dir: Path) -> list[str]:
    """Ray restores a moved or copied experiment's trials from where it is, but its search
    generator keeps the `Experiment` it was made with, whose new trials would write to the old
    place (and fail there when it is gone): its storage is re-pointed at `experiment_dir`."""
    gen = saved.search_gen(str(experiment_dir))
    storage = getattr(gen[2].get("experiment"), "storage", None) if gen else None
    if storage is None or getattr(storage, "custom_fs_provided", False):
        return []
    recorded = Path(storage.storage_fs_path) / storage.experiment_dir_name
    if recorded == experiment_dir:
        return []
    storage.storage_fs_path = str(experiment_dir.parent)
    storage.experiment_dir_name = experiment_dir.name
    saved.save_search_gen(gen[0], gen[1], gen[2])
    return [f"new trials are written here, not to {recorded}"]


def set_num_samples(experiment_path: str, num_samples: int) -> list[str]:
    """Raise the saved search's trial count (a --resume with a larger --num-samples)."""
    gen = saved.search_gen(experiment_path)
    if gen is None or int(gen[2].get("total_samples") or 0) >= num_samples:
        return []
    before = gen[2]["total_samples"]
    gen[2]["total_samples"], gen[2]["finished"] = num_samples, False
    saved.save_search_gen(*gen)
    return [f"the search now runs {num_samples} trials (was {before})"]


def align_search_counter(experiment_path: str) -> list[str]:
    """A search generator saved part-way from the trial table (a bucket gets Ray's files one by
    one): a counter below the table's trial count would create trials beyond --num-samples, one
    above it stop short. It is set to the table's count; the limiter keeps the table's running
    trials."""
    state, gen = saved.saved_state(experiment_path), saved.search_gen(experiment_path)
    if state is None or gen is None:
        return []
    trials = ray_state_trials(state[2])
    before = gen[2].get("counter")
    if before in (None, len(trials)):
        return []
    gen[2]["counter"] = len(trials)
    gen[2]["finished"] = len(trials) >= int(gen[2].get("total_samples") or 0)
    limiter = gen[2].get(saved.LIMITER_KEY)
    if isinstance(limiter, dict) and "live_trials" in limiter:
        running = {str(t["trial_id"]) for t in trials if t.get("status") not in TERMINAL_STATUSES}
        limiter["live_trials"] = set(limiter["live_trials"]) & running
        limiter["num_unfinished_live_trials"] = len(limiter["live_trials"])
    saved.save_search_gen(*gen)
    return [
        f"the search had counted {before} trial(s) but Ray's saved trial table lists "
        f"{len(trials)} (a state saved part-way): the search goes on from {len(trials)}"
    ]
