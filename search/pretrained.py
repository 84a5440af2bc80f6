"""The driver's model step: every model and pretrained file the sweep's trials can use, checked
and fetched once, before Ray starts.

The space is walked (`search.preflight.explore`, only the choices this run keeps) for every
(model, weights) a trial can get. A plugin's model must be registered by its file, a timm name
must exist in timm, and each weight file is fetched into its library's cache with that
library's own download function (`trainables.weights.fetch`, hash checked). Trials then read
only those local files: each trial's config gets its file as `weights_path`
(`SpaceDefine.weight_files`), so the trial's params.json records which file it started from.

A file that cannot be fetched (offline, a failed or corrupted download) ends the command with
one line naming the file, the URL and where to place it; with --allow-missing-weights its
weight set is left out of the search instead (for every model: Optuna keeps one list of
choices per name), said loudly. The space's choices never depend on what is on disk.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from search.preflight import explore
from search.space import Space, runnable_points
from trainables.config import TrialConfig
from trainables.vocab import TIMM_PREFIX, WEIGHTS


@dataclass
class ModelPlan:
    """What the step decided: the fetched files and the weight sets left out."""

    files: dict[str, dict[str, str]] = field(default_factory=dict)
    """'MODEL/WEIGHTS' -> {file, sha256, url, library}."""
    dropped: dict[str, str] = field(default_factory=dict)
    """'MODEL/WEIGHTS' -> why it could not be fetched (only with --allow-missing-weights)."""

    def record(self) -> dict[str, Any]:
        """The experiment record's `weights` field."""
        return {"files": self.files, "dropped": self.dropped}


def prepare_models(space: Space, allow_missing: bool = False, progress: bool = True) -> ModelPlan:
    """Check every model the run can build and fetch every weight file it can load; point the
    space's trials at those files. ValueError (one line) for a file that cannot be fetched,
    unless `allow_missing`."""
    from trainables.weights import fetch, weight_file

    where = f"space file {space.path}"
    configs, _ = explore(space.define, where, restricted=True)
    check_models(configs, where)
    plan = ModelPlan()
    check_own_files(configs, where)
    # a weights_path the space sets is the user's own file: nothing to fetch for it
    pairs = sorted(
        {(c.model, c.weights) for c in configs if c.weights != "none" and not c.weights_path}
    )
    for model, weights in pairs:
        wf = weight_file(model, weights)
        try:
            path, digest = fetch(wf, progress=progress)
        except ValueError as err:
            if not allow_missing:
                raise ValueError(
                    f"{err} (or pass --allow-missing-weights to leave it out)"
                ) from None
            plan.dropped[wf.key] = str(err)
            continue
        plan.files[wf.key] = {
            "file": str(path),
            "sha256": digest,
            "url": wf.url,
            "library": wf.library,
        }
        print(f"weights: {wf.key} ({wf.library}) at {path} (sha256 {digest[:12]})", flush=True)
    space.define.weight_files.update({k: v["file"] for k, v in plan.files.items()})
    return plan


def drop_missing(space: Space, plan: ModelPlan) -> Space:
    """The space without the weight sets that could not be fetched (for every model), said
    loudly; the enqueued points that use them are left out too."""
    if not plan.dropped:
        return space
    names = sorted({key.split("/")[-1] for key in plan.dropped})
    kept = [w for w in space.define.restrict.get("weights", list(WEIGHTS)) if w not in names]
    space.define.restrict["weights"] = kept
    for key, why in plan.dropped.items():
        print(f"WARNING: --allow-missing-weights: {key} left out: {why}", flush=True)
    print(
        f"WARNING: --allow-missing-weights: weights {names} are left out of this sweep for "
        f"every model; its trials choose weights among {kept}",
        flush=True,
    )
    points, dropped = runnable_points(space.points_to_evaluate, space.define.restrict)
    for point in dropped:
        print(f"WARNING: POINTS_TO_EVALUATE: {point} left out (its weights were not fetched)")
    return replace(space, points_to_evaluate=points, dropped_points=space.dropped_points + dropped)


def check_own_files(configs: list[TrialConfig], where: str) -> None:
    """A weights_path the space sets is the user's own file: it must exist (nothing fetched)."""
    for path in sorted({c.weights_path for c in configs if c.weights_path}):
        if not Path(path).expanduser().is_file():
            raise ValueError(f"{where}: weights_path {path} does not exist")


def check_models(configs: list[TrialConfig], where: str) -> None:
    """Every model name builds: a plugin's file registers it, timm knows a timm name."""
    from trainables.models import MODELS, load_plugin

    for model, plugin in sorted({(c.model, c.plugin) for c in configs}):
        if model.startswith(TIMM_PREFIX):
            from trainables.weights import import_timm

            timm = import_timm(model)
            if not timm.is_model(model[len(TIMM_PREFIX) :]):
                raise ValueError(f"{where}: timm has no model {model[len(TIMM_PREFIX) :]!r}")
        elif plugin:
            load_plugin(plugin)
            if model not in MODELS:
                raise ValueError(
                    f"{where}: model {model!r} is not registered by plugin {plugin}; "
                    f"registered models are {sorted(MODELS)}"
                )
