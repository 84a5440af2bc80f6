"""The driver's pre-flight: everything a trial would trip over, checked once before Ray starts.

`preflight(space)` runs in the driver after the space file loaded and before the experiment
folder is written:

1. Every branch of the space: `define` is walked through every combination of its categorical
   choices (numeric suggestions at their low and at their high end), not just a few random
   samples, so each categorical value is checked against its registry (`REGISTRIES`) and every
   branch builds a `TrialConfig`.
2. Every dataset those configs can load (one per data / preprocessing / split setting) is
   listed, validated and decoded with the code the trials run (`trainables.data.load_for_config`),
   which fills the decode cache, so the trials start warm.
3. The space's METRIC against the data's classes (`search.space.check_metric`).
4. `audit_leakage`: patients and near-duplicate images across train / validation / test
   (`trainables.leakage`), once per dataset (cached with the data), so the user sees leakage
   before any trial runs; `search.run` keeps the result in the experiment for summary.json
   and the report.

A problem is a `ValueError` naming the file, folder or value and what was expected; `search.run`
turns it into exit status 2 before any trial or experiment folder exists.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from search.space import RUN_KEYS, Space, SpaceDefine, check_metric
from search.walk import EXPLORE_LIMIT, Probe, space_values, walk
from trainables.config import TrialConfig, field_names
from trainables.data import DataReport, dataset_key, list_dataset, load_for_config
from trainables.leakage import audit_settings, describe_audit, leakage_for_config
from trainables.multilabel import check_balance
from trainables.vocab import AMP_MODES, AUGMENTATIONS, BALANCES, RESIZE_MODES, WEIGHTS

# `model` is checked by TrialConfig (built-in, timm:NAME, or a plugin's) and by
# `search.pretrained.check_models` (the plugin registers it, timm knows it).
REGISTRIES: dict[str, Sequence[str]] = {
    "weights": list(WEIGHTS),
    "balance": list(BALANCES),
    "augment": list(AUGMENTATIONS),
    "resize_mode": RESIZE_MODES,
    "amp": AMP_MODES,
}
"""TrialConfig fields whose values come from a registry: a categorical choice must be a name."""


@dataclass
class Preflight:
    """What the pre-flight checked: the data reports (the run's own dataset first)."""

    reports: list[DataReport]
    branches: int
    """define() paths walked."""
    values: dict[str, list[str]]
    """What the space file can make a trial (`space_values`), for the experiment record."""
    notes: list[str] = field(default_factory=list)
    configs: list[TrialConfig] = field(default_factory=list)
    """One config per dataset setting (the run's own first)."""
    leakage: list[dict[str, Any]] = field(default_factory=list)
    """`audit_leakage`'s audits, once it ran."""
    images: list[dict[str, int]] = field(default_factory=list)
    """Images per split of each dataset setting (as `configs`): what its decoded bytes are."""

    def format(self) -> str:
        first, *others = self.reports
        lines = [
            f"pre-flight: {self.branches} branches of the space checked; "
            f"{len(self.reports)} dataset setting(s) listed and decoded",
            first.format(),
        ]
        lines += [
            f"  also decoded: {r.image_size} px {r.resize_mode} ({r.decoded} files decoded)"
            for r in others
        ]
        return "\n".join(lines + [f"note: {n}" for n in self.notes])


def preflight(space: Space) -> Preflight:
    where = f"space file {space.path}"
    configs, walked = _explore(space.define, where)
    branches = len(walked)
    # The run's own configs (as sampled by load_space) first, so its dataset is reported first.
    by_key: dict[tuple, TrialConfig] = {}
    for cfg in [*space.samples, *configs]:
        by_key.setdefault(dataset_key(cfg), cfg)
    reports, notes, images = [], [], []
    if branches >= EXPLORE_LIMIT:
        notes.append(
            f"the space has more than {EXPLORE_LIMIT} define() paths: the first {branches} were "
            f"checked; a value only a later path reaches is checked when its trial starts"
        )
    for key, cfg in by_key.items():
        dataset = load_for_config(cfg)
        check_metric(space.metric, dataset.classes, where, dataset.multilabel)
        if dataset.multilabel:  # resampling by class has no multi-label meaning
            for other in [c for c in [*space.samples, *configs] if dataset_key(c) == key]:
                try:
                    check_balance(other.balance)
                except ValueError as err:
                    raise ValueError(f"{where}: {err}") from None
        reports.append(dataset.report)
        images.append({"train": len(dataset.train), "val": len(dataset.val)})
    listed = dict.fromkeys((c.data, c.class_map, c.label_separator) for c in by_key.values())
    for data, class_map, separator in listed:
        try:
            list_dataset(data, class_map, True, separator)  # lists test; opens no image
        except ValueError as err:
            notes.append(f"the test split cannot be read, so analysis.report will refuse: {err}")
    values = space_values(space.path, walked)
    return Preflight(reports, branches, values, notes, list(by_key.values()), images=images)


def audit_leakage(
    configs: Sequence[TrialConfig], say: Callable[[str], None] = print
) -> list[dict[str, Any]]:
    """The leakage audit of each data setting `configs` train on, once each (read from the
    cache when this content was audited before), with progress lines. An audit that fails is
    recorded with its error and never stops the sweep; Ctrl-C stops it (KeyboardInterrupt)."""
    audits: dict[str, dict[str, Any]] = {}
    for cfg in configs:
        settings = audit_settings(cfg)
        key = json.dumps(settings, sort_keys=True)
        if key in audits:
            continue
        say(f"leakage audit of {cfg.data} (train / val / test at 64 px, cached with the data)")
        try:
            audit = leakage_for_config(cfg, progress=lambda text: say(f"  leakage audit: {text}"))
        except Exception as err:  # noqa: BLE001 - an audit never costs the sweep
            audit = {"settings": settings, "error": f"{type(err).__name__}: {err}"}
        say(describe_audit(audit))
        audits[key] = audit
    return list(audits.values())


def explore(
    define: SpaceDefine, where: str, restricted: bool = False
) -> tuple[list[TrialConfig], int]:
    """Every categorical branch of `define` (both numeric ends), each as a TrialConfig; every
    categorical value checked against its registry. Returns (configs, define() paths walked).
    `restricted` walks only the choices the run keeps (CPU_CHOICES): what its trials can be."""
    configs, _ = _explore(define, where, restricted)
    return configs, len(configs)


def _explore(
    define: SpaceDefine, where: str, restricted: bool = False
) -> tuple[list[TrialConfig], list[tuple[Probe, dict[str, Any]]]]:
    walked = list(walk(define, where, restricted))
    configs = [
        _leaf(probe, define.merge(returned, probe.params), where) for probe, returned in walked
    ]
    return configs, walked


def _leaf(probe: Probe, constants: dict[str, Any], where: str) -> TrialConfig:
    for name, choices in probe.categorical.items():
        bad = [c for c in choices if name in REGISTRIES and c not in REGISTRIES[name]]
        if bad:
            raise ValueError(
                f"{where}: suggest_categorical({name!r}) offers {bad[0]!r}, which is not a "
                f"{name}; expected one of {sorted(REGISTRIES[name])}"
            )
    unknown = sorted(set(probe.params) - set(field_names()))
    if unknown:
        raise ValueError(
            f"{where}: define() suggests {unknown} on the branch {probe.params}, which "
            f"TrialConfig does not know; valid names are {sorted(field_names())}"
        )
    if set(probe.params) & set(RUN_KEYS):
        raise ValueError(f"{where}: define() suggests {sorted(RUN_KEYS)}, which the run sets")
    try:
        return TrialConfig.from_dict({**constants, **probe.params})
    except ValueError as err:
        raise ValueError(
            f"{where}: the branch {probe.params} is not a valid TrialConfig: {err}"
        ) from None
