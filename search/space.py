"""Load a space file and refuse a bad one before any trial starts.

A space file is a plain Python module (see `spaces/`):

- `define(trial)` calls `trial.suggest_*` with `TrialConfig` field names and returns a dict of
  constants (or None). No I/O: Ray's `OptunaSearch` calls it once per trial in the driver.
- `METRIC` (a metric the trainable reports, e.g. `val_precision`), `MODE` (`max` or `min`),
  `MAX_EPOCHS` (ASHA's `max_t`, and every trial's `epochs`).
- Optional: `GRACE_PERIOD` (epochs before ASHA may stop a trial, default 1),
  `REDUCTION_FACTOR` (ASHA's eta, default 3), `NUM_SAMPLES` (trials, default 20),
  `POINTS_TO_EVALUATE` (a list of partial parameter dicts tried first, in order, e.g. the seed
  study's recipes; the CPU profile leaves out those outside `CPU_CHOICES`),
  `CPU_CHOICES` (name -> the categorical choices the CPU profile keeps, e.g. only the models a
  laptop trains in seconds).

`load_space` imports the file, checks the constants, then samples `define` a few times with a
throw-away Optuna study and builds a `TrialConfig` from each sample, so a typo in a suggest name
or a choice `TrialConfig` refuses shows up as one clear `ValueError` naming the file.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import inspect
import sys
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cxr_tune import REPO, prog
from trainables.config import TrialConfig, field_names
from trainables.experiment import METRIC_MODES
from trainables.vocab import PER_FINDING_PREFIXES, class_key

DEFAULT_GRACE_PERIOD = 1  # epochs
DEFAULT_REDUCTION_FACTOR = 3
DEFAULT_NUM_SAMPLES = 20
SAMPLER_CHOICES = ("auto", "tpe", "gp", "random")  # a space's SAMPLER and --sampler
VALIDATION_SAMPLES = 5  # define() calls made by the throw-away study

# Per-epoch keys `trainables.train.train` reports (docs/ARCHITECTURE.md); METRIC must be one,
# or a per-class `val_acc_<class_key(class)>` of the data's classes (`check_metric`, pre-flight).
METRIC_KEYS = frozenset(
    [
        "train_loss",
        "train_acc",
        "val_loss",
        "val_acc",
        "val_precision",
        "val_recall",
        "val_f1",
        "val_balanced_acc",
    ]
)
PER_CLASS_PREFIX = "val_acc_"
# Multi-label data (`trainables.multilabel`) reports these and per finding `val_auroc_<key>`,
# `val_ap_<key>` instead of the accuracy family; `val_mean_auroc` is its search metric.
MULTILABEL_METRIC_KEYS = frozenset(
    ["train_loss", "train_acc", "val_loss", "val_mean_auroc", "val_mean_ap", "val_label_acc"]
)


def metric_keys(classes: Sequence[str], multilabel: bool = False) -> list[str]:
    """Every metric a trial on data with these classes (or findings) reports."""
    if multilabel:
        return sorted(MULTILABEL_METRIC_KEYS) + [
            f"{prefix}{class_key(c)}" for prefix in PER_FINDING_PREFIXES for c in classes
        ]
    return sorted(METRIC_KEYS) + [f"{PER_CLASS_PREFIX}{class_key(c)}" for c in classes]


def check_metric(metric: str, classes: Sequence[str], where: str, multilabel: bool = False) -> None:
    """Refuse a METRIC that data with `classes` does not report (a per-class key of a class the
    data lacks, an accuracy on multi-label data), naming the data's classes."""
    if metric in metric_keys(classes, multilabel):
        return
    if multilabel:
        raise ValueError(
            f"{where}: METRIC {metric!r} is not reported for multi-label data (findings "
            f"{list(classes)}); search on 'val_mean_auroc' (MODE 'max'), as spaces/multilabel.py "
            f"does, or one of {metric_keys(classes, True)}"
        )
    raise ValueError(
        f"{where}: METRIC {metric!r} is not reported for this data, whose classes are "
        f"{list(classes)}; expected one of {metric_keys(classes)}"
    )


# Set by the driver for every trial, so a space may not suggest them.
RUN_KEYS = ("epochs",)


def space_sha256(path: str | Path) -> str:
    """The space file's content hash: the experiment record keeps it, so a resume knows whether
    the file was edited since."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def load_module(path: Path) -> types.ModuleType:
    """Import a space file by path without registering it in `sys.modules`."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(
            f"space file {path} does not exist; a space that ships with cxr-tune is named "
            f"instead of a path: {', '.join(builtin_spaces())} (`cxr-tune spaces` lists them)"
        )
    spec = importlib.util.spec_from_file_location(f"cxr_space_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise ValueError(f"space file {path} is not a Python module")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as err:  # any import-time error of user code
        raise ValueError(f"space file {path} does not load: {type(err).__name__}: {err}") from err
    return module


class SpaceDefine:
    """The space's `define`, plus the run's constants, as a picklable callable.

    Ray pickles the searcher, and with it this function, in the experiment's tuner.pkl (for
    `Tuner.restore`), so this holds the file path and re-imports the module after unpickling
    instead of pickling the user's function. It returns what is merged into each trial's config:
    `defaults` < the space's constants < `overrides`, except for names the space suggested (a
    returned constant would silently replace the sampled value in Ray's merge).
    """

    def __init__(
        self,
        path: str | Path,
        defaults: Mapping[str, Any] | None = None,
        overrides: Mapping[str, Any] | None = None,
        restrict: Mapping[str, Sequence[Any]] | None = None,
        weight_files: Mapping[str, str] | None = None,
    ) -> None:
        self.path = str(Path(path).resolve())
        self.defaults = dict(defaults or {})
        self.overrides = dict(overrides or {})
        self.restrict = {k: list(v) for k, v in (restrict or {}).items()}
        self.weight_files = dict(weight_files or {})
        """'MODEL/WEIGHTS' -> the local file the driver fetched; each trial gets its own as
        weights_path, so it reads that file and its config records which file it was."""
        self._define: Callable[[Any], Any] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "defaults": self.defaults,
            "overrides": self.overrides,
            "restrict": self.restrict,
            "weight_files": self.weight_files,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update({"weight_files": {}, **state})
        self._define = None

    def __call__(self, trial: Any) -> dict[str, Any]:
        return self.merge(self.returned(trial), trial.params)

    def returned(self, trial: Any) -> dict[str, Any]:
        """What the space file's define() returns for `trial` (CPU_CHOICES applied), checked."""
        if self._define is None:
            self._define = load_module(Path(self.path)).define
        returned = self._define(_Restricted(trial, self.restrict) if self.restrict else trial)
        returned = {} if returned is None else returned
        if not isinstance(returned, dict):
            raise ValueError(
                f"space file {self.path}: define() must return a dict of constants or None, "
                f"got {type(returned).__name__}"
            )
        return returned

    def merge(self, returned: Mapping[str, Any], suggested: Mapping[str, Any]) -> dict[str, Any]:
        """The constants Ray merges into a trial's config, around the names it suggested."""
        merged = {k: v for k, v in self.defaults.items() if k not in suggested}
        merged.update(returned)
        merged.update({k: v for k, v in self.overrides.items() if k not in suggested})
        values = {**merged, **suggested}
        key = f"{values.get('model')}/{values.get('weights')}"
        if key in self.weight_files and not values.get("weights_path"):
            merged["weights_path"] = self.weight_files[key]
        return merged


class _Restricted:
    """A trial whose `suggest_categorical` keeps only the allowed choices of some names (the
    CPU profile's CPU_CHOICES; weight sets the driver could not fetch, when allowed to drop)."""

    def __init__(self, trial: Any, allowed: Mapping[str, Sequence[Any]]) -> None:
        self._trial = trial
        self._allowed = allowed

    def __getattr__(self, name: str) -> Any:
        return getattr(self._trial, name)

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        if name in self._allowed:
            kept = [c for c in choices if c in self._allowed[name]]
            if not kept:
                raise ValueError(
                    f"CPU_CHOICES[{name!r}] = {list(self._allowed[name])} keeps "
                    f"none of {list(choices)}"
                )
            choices = kept
        return self._trial.suggest_categorical(name, choices)


@dataclass(frozen=True)
class Space:
    path: Path
    define: SpaceDefine
    metric: str
    mode: str
    max_epochs: int  # epochs, = ASHA max_t
    grace_period: int  # epochs
    reduction_factor: int
    num_samples: int
    points_to_evaluate: list[dict[str, Any]] = field(default_factory=list)
    """Tried first, in order; only those the profile can train (`runnable_points`)."""
    dropped_points: list[dict[str, Any]] = field(default_factory=list)
    """The space's points outside the profile's CPU_CHOICES."""
    samples: list[TrialConfig] = field(default_factory=list)  # configs built while checking
    sampler: str = "auto"
    """SAMPLER: the Optuna sampler the space asks for (`search.tuner.SAMPLERS` or `auto`)."""
    param_kinds: dict[str, str] = field(default_factory=dict)
    """Each suggested name's kind (`float`, `int`, `categorical`) seen while checking."""


def load_space(
    path: str | Path,
    *,
    defaults: Mapping[str, Any] | None = None,
    overrides: Mapping[str, Any] | None = None,
    max_epochs: int | None = None,
    cpu: bool = False,
    seed: int = 0,
) -> Space:
    """Load and check a space file. A run profile may cap `MAX_EPOCHS` (`max_epochs`) and, with
    `cpu`, keep only the space's `CPU_CHOICES`."""
    path = Path(path)
    module = load_module(path)
    where = f"space file {path}"
    defaults = {**registered_plugin(path), **dict(defaults or {})}
    define = getattr(module, "define", None)
    if not callable(define):
        raise ValueError(f"{where} has no define(trial) function")
    metric = _constant(module, where, "METRIC", str, None)
    known = METRIC_KEYS | MULTILABEL_METRIC_KEYS
    prefixes = (PER_CLASS_PREFIX, *PER_FINDING_PREFIXES)
    if metric not in known and not metric.startswith(prefixes):
        raise ValueError(
            f"{where}: METRIC {metric!r} is not reported; expected one of {sorted(known)}, "
            f"{PER_CLASS_PREFIX}<class> or val_auroc_<finding> (checked against the data before "
            "the sweep)"
        )
    mode = _constant(module, where, "MODE", str, None)
    if mode not in METRIC_MODES:
        raise ValueError(f"{where}: MODE {mode!r} must be one of {list(METRIC_MODES)}")
    file_epochs = _constant(module, where, "MAX_EPOCHS", int, None, low=1)
    epochs = file_epochs if max_epochs is None else min(file_epochs, max_epochs)
    grace = _constant(module, where, "GRACE_PERIOD", int, DEFAULT_GRACE_PERIOD, low=1)
    grace = min(grace, epochs)  # a shorter run profile keeps "no early stop" spaces that way
    reduction = _constant(module, where, "REDUCTION_FACTOR", int, DEFAULT_REDUCTION_FACTOR, low=2)
    num_samples = _constant(module, where, "NUM_SAMPLES", int, DEFAULT_NUM_SAMPLES, low=1)
    points = getattr(module, "POINTS_TO_EVALUATE", [])
    if not isinstance(points, list) or not all(isinstance(p, dict) for p in points):
        raise ValueError(f"{where}: POINTS_TO_EVALUATE must be a list of dicts")

    restrict = getattr(module, "CPU_CHOICES", {}) if cpu else {}
    if not isinstance(restrict, dict) or not all(
        isinstance(v, (list, tuple)) for v in restrict.values()
    ):
        raise ValueError(f"{where}: CPU_CHOICES must be a dict of name -> list of choices")
    points, dropped = runnable_points(points, restrict)
    run_overrides = {**dict(overrides or {}), "epochs": epochs}
    space_define = SpaceDefine(path, defaults, run_overrides, restrict)
    samples, kinds = walk_samples(space_define, where, points, seed=seed)
    sampler = _constant(module, where, "SAMPLER", str, "auto")
    if sampler not in SAMPLER_CHOICES:
        raise ValueError(f"{where}: SAMPLER {sampler!r} must be one of {list(SAMPLER_CHOICES)}")
    return Space(
        path=path.resolve(),
        define=space_define,
        metric=metric,
        mode=mode,
        max_epochs=epochs,
        grace_period=grace,
        reduction_factor=reduction,
        num_samples=num_samples,
        points_to_evaluate=points,
        dropped_points=dropped,
        samples=samples,
        sampler=sampler,
        param_kinds=kinds,
    )


def registered_plugin(path: Path) -> dict[str, str]:
    """{'plugin': the space file} when the space registers its own models (register_model at
    import), so trials, the GPU measurement and the bundle import it to rebuild them."""
    models = sys.modules.get("trainables.models")  # not imported: nothing was registered
    if models is None:
        return {}
    mine = Path(path).resolve()
    for builder in models.MODELS.values():
        source = inspect.getsourcefile(builder)
        if source and Path(source).resolve() == mine:
            return {"plugin": str(mine)}
    return {}


def runnable_points(
    points: list[dict[str, Any]], restrict: Mapping[str, Sequence[Any]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The points a profile can train (every restricted name among its allowed choices) and the
    ones it leaves out: an enqueued value outside the trial's choices is not a valid trial."""
    kept, dropped = [], []
    for point in points:
        fits = all(point[k] in allowed for k, allowed in restrict.items() if k in point)
        (kept if fits else dropped).append(point)
    return kept, dropped


def sample_configs(
    space_define: SpaceDefine,
    where: str,
    points: list[dict[str, Any]] | None = None,
    *,
    n: int = VALIDATION_SAMPLES,
    seed: int = 0,
) -> list[TrialConfig]:
    """Run `define` through a throw-away Optuna study; every sample must build a TrialConfig."""
    return walk_samples(space_define, where, points, n=n, seed=seed)[0]


def param_kind(distribution: Any) -> str:
    """`categorical`, `int` or `float` for an Optuna distribution."""
    import optuna

    if isinstance(distribution, optuna.distributions.CategoricalDistribution):
        return "categorical"
    if isinstance(distribution, optuna.distributions.IntDistribution):
        return "int"
    return "float"


def walk_samples(
    space_define: SpaceDefine,
    where: str,
    points: list[dict[str, Any]] | None = None,
    *,
    n: int = VALIDATION_SAMPLES,
    seed: int = 0,
) -> tuple[list[TrialConfig], dict[str, str]]:
    """`sample_configs` plus the kind of every name the samples suggested (`param_kind`)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    for point in points or []:
        study.enqueue_trial(point)
    valid = set(field_names())
    configs = []
    for i in range(max(n, len(points or []))):
        trial = study.ask()
        try:
            constants = space_define(trial)
        except Exception as err:  # user code failing on a sample
            if str(err).startswith("space file"):
                raise
            raise ValueError(
                f"{where}: define() failed on sample {i}: {type(err).__name__}: {err}"
            ) from err
        unknown = sorted(set(trial.params) - valid)
        if unknown:
            raise ValueError(
                f"{where}: define() suggests {unknown}, which TrialConfig does "
                f"not know; valid names are {sorted(valid)}"
            )
        clash = sorted(set(trial.params) & set(RUN_KEYS))
        if clash:
            raise ValueError(
                f"{where}: define() suggests {clash}, which the run sets "
                f"(epochs = MAX_EPOCHS); remove them from the space"
            )
        if i < len(points or []):
            _check_point(where, i, points[i], trial.params)
        values = {**constants, **trial.params}
        try:
            configs.append(TrialConfig.from_dict(values))
        except ValueError as err:
            raise ValueError(
                f"{where}: sample {i} {trial.params} is not a valid TrialConfig: {err}"
            ) from err
        study.tell(trial, 0.0)
    kinds = {k: param_kind(d) for t in study.trials for k, d in t.distributions.items()}
    return configs, kinds


def _check_point(where: str, i: int, point: dict[str, Any], params: dict[str, Any]) -> None:
    """Optuna silently ignores an enqueued name `define` never suggests; refuse it instead."""
    unused = sorted(set(point) - set(params))
    if unused:
        raise ValueError(
            f"{where}: POINTS_TO_EVALUATE[{i}] names {unused}, which define() does not suggest "
            f"for that point; it suggests {sorted(params)}"
        )


def _constant(
    module: types.ModuleType,
    where: str,
    name: str,
    kind: type,
    default: Any,
    low: int | None = None,
) -> Any:
    if not hasattr(module, name):
        if default is None:
            raise ValueError(f"{where} must define {name}")
        return default
    value = getattr(module, name)
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ValueError(f"{where}: {name} must be an integer, got {value!r}")
    if kind is str and not isinstance(value, str):
        raise ValueError(f"{where}: {name} must be a string, got {value!r}")
    if low is not None and value < low:
        raise ValueError(f"{where}: {name} must be >= {low}, got {value!r}")
    return value


# --- the spaces that ship with cxr-tune ------------------------------------------------------


def builtin_spaces() -> dict[str, Path]:
    """Name -> file of the spaces that ship with cxr-tune: `cxr_tune/spaces/` when installed
    from a wheel, `spaces/` in a checkout (the same files; pyproject.toml maps one to the
    other), whatever the working folder."""
    installed, checkout = REPO / "cxr_tune" / "spaces", REPO / "spaces"
    if (installed / "__init__.py").is_file():
        folder = installed
    elif (REPO / "pyproject.toml").is_file() and (checkout / "__init__.py").is_file():
        folder = checkout
    else:
        return {}
    return {p.stem: p for p in sorted(folder.glob("*.py")) if p.stem != "__init__"}


def find_space(value: str) -> Path:
    """`--space`: a file by its path, else a space that ships with cxr-tune by its name
    (`transfer`, `seed`, `smoke`). A path that is neither is kept, for `load_space` to refuse
    with the names."""
    path = Path(value).expanduser()
    if path.is_file():
        return path
    return builtin_spaces().get(value, path)


def describe_spaces() -> list[dict[str, Any]]:
    """Each shipped space: name, its docstring's first line, metric, mode, epochs, trials and
    file (each file imported, so a listed space is one that loads)."""
    rows = []
    for name, path in builtin_spaces().items():
        module = load_module(path)
        rows.append(
            {
                "name": name,
                "about": (module.__doc__ or "").strip().split("\n")[0],
                "metric": f"{getattr(module, 'METRIC', '?')} ({getattr(module, 'MODE', '?')})",
                "epochs": getattr(module, "MAX_EPOCHS", "?"),
                "trials": getattr(module, "NUM_SAMPLES", DEFAULT_NUM_SAMPLES),
                "path": path,
            }
        )
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """`cxr-tune spaces`: list the spaces that ship with cxr-tune."""
    parser = argparse.ArgumentParser(
        prog=prog("search.space"),
        description="List the search spaces that ship with cxr-tune; `cxr-tune sweep --space "
        "NAME` runs one by its name (a path to your own space file works the same way).",
    )
    parser.parse_args(argv)
    try:
        rows = describe_spaces()
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if not rows:
        print("error: no spaces found next to the cxr_tune package", file=sys.stderr)
        return 1
    for row in rows:
        print(
            f"{row['name']:<10} {row['about']}\n{'':<10} metric {row['metric']}, "
            f"{row['epochs']} epochs, {row['trials']} trials: {row['path']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
