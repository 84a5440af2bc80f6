"""Class names from the data: the seed's aliases, the class map, and the order.

A dataset's labels (image-folder names, a manifest's `label` values, the pediatric set's file
names) become classes by these rules, applied by `name_classes`:

1. Labels are matched case-insensitively, with spaces, underscores and hyphens alike, so
   ``Viral Pneumonia`` in train and ``viral_pneumonia`` in test are one class (spelled as in
   train).
2. The class map (`TrialConfig.class_map`, ``--class-map``) renames or merges labels first:
   ``"COVID=VIRAL,Viral Pneumonia=VIRAL"`` merges both into VIRAL; the preset ``seed`` merges
   every label that aliases a seed class into it (the seed's study counted COVID-19 as viral).
3. A label that aliases a seed class (`CLASS_ALIASES`) takes the canonical name, unless two
   labels alias the same class (``COVID`` and ``Viral Pneumonia`` both mean VIRAL): then both
   stay classes of their own, spelled as in the data, and the report says how to merge them.
4. Any other label is a class of its own, spelled as in the data.
5. Order: the seed's classes first (NORMAL, BACTERIA, VIRAL), then the others sorted, as
   torchvision's `ImageFolder` sorts folder names.

Plain Python (imports only `vocab`), so `trainables.config` can validate a class map.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from trainables.vocab import CLASSES, class_key

CLASS_ALIASES: dict[str, str] = {
    "normal": "NORMAL",
    "healthy": "NORMAL",
    "bacteria": "BACTERIA",
    "bacterial": "BACTERIA",
    "pneumonia-bacterial": "BACTERIA",
    "bacterial-pneumonia": "BACTERIA",
    "viral": "VIRAL",
    "virus": "VIRAL",
    "covid": "VIRAL",
    "covid-19": "VIRAL",
    "covid19": "VIRAL",
    "pneumonia-viral": "VIRAL",
    "viral-pneumonia": "VIRAL",
    "pneumonia-viral-covid-19": "VIRAL",
}
"""Label (its `alias_key`) -> seed class."""

CLASS_MAP_PRESETS: dict[str, str] = {
    "seed": "every label that aliases a seed class merges into it "
    "(COVID, COVID-19 and Viral Pneumonia -> VIRAL), as the seed's study did",
}
"""Named class maps (`TrialConfig.class_map`)."""


def alias_key(name: str) -> str:
    """A label as matched: lower case, runs of spaces, underscores and hyphens as one '-'."""
    return re.sub(r"[\s_\-]+", "-", name.strip().lower())


def class_of_folder(name: str) -> str | None:
    """The seed class a label stands for (through `CLASS_ALIASES`), or None."""
    return CLASS_ALIASES.get(alias_key(name))


def parse_class_map(text: str) -> str | dict[str, str]:
    """'' -> {}; a preset name -> the name; ``"A=B,C=D"`` -> {alias_key(A): B, ...}.

    A ValueError names the bad entry and the valid forms."""
    text = text.strip()
    if not text:
        return {}
    if text in CLASS_MAP_PRESETS:
        return text
    mapping: dict[str, str] = {}
    for item in text.split(","):
        source, sep, target = (part.strip() for part in item.partition("="))
        if not sep or not source or not target:
            raise ValueError(
                f"class_map entry {item.strip()!r} is not LABEL=CLASS; expected a preset "
                f"{sorted(CLASS_MAP_PRESETS)} or 'LABEL=CLASS,LABEL=CLASS'"
            )
        class_key(target)  # a class needs a metric key
        key = alias_key(source)
        if mapping.get(key, target) != target:
            raise ValueError(f"class_map maps {source!r} twice ({mapping[key]!r}, {target!r})")
        mapping[key] = target
    return mapping


@dataclass
class ClassNaming:
    """What `name_classes` decided."""

    classes: list[str]
    """In order: seed classes first, then the others sorted."""
    of: dict[str, str]
    """Label as found in the data -> class."""
    sources: dict[str, list[str]] = field(default_factory=dict)
    """Class -> the labels (folders, manifest values) it came from."""
    notes: list[str] = field(default_factory=list)


def name_classes(
    train: Iterable[str], test: Iterable[str] = (), class_map: str = ""
) -> ClassNaming:
    """Classes from the labels of train (and test, which may hold no class train lacks)."""
    spec = parse_class_map(class_map)
    groups = _groups(list(dict.fromkeys(train)))
    mapped = _mapped(spec, groups)
    claims = Counter(CLASS_ALIASES[k] for k in groups if k not in mapped and k in CLASS_ALIASES)
    notes = []
    for canon in sorted(c for c, n in claims.items() if n > 1):
        both = [groups[k][0] for k in groups if k not in mapped and CLASS_ALIASES.get(k) == canon]
        notes.append(
            f"labels {both} all alias {canon}: kept as {len(both)} classes; merge them with "
            f"class_map 'seed' or '{','.join(f'{b}={canon}' for b in both)}'"
        )
    name_of = {}
    for k, spellings in groups.items():
        canon = CLASS_ALIASES.get(k)
        unique = canon is not None and claims[canon] == 1
        name_of[k] = mapped.get(k) or (canon if unique else spellings[0])
    of = {label: name_of[k] for k, spellings in groups.items() for label in spellings}
    classes = _ordered(set(name_of.values()))
    _check_keys(classes, of)
    of.update(_test_labels(list(dict.fromkeys(test)), of, spec, classes))
    sources = {c: [label for label, to in of.items() if to == c] for c in classes}
    return ClassNaming(classes, of, sources, notes)


def _groups(labels: list[str]) -> dict[str, list[str]]:
    """Alias key -> the spellings of that label, in order of appearance."""
    groups: dict[str, list[str]] = {}
    for label in labels:
        spellings = groups.setdefault(alias_key(label), [])
        if label not in spellings:
            spellings.append(label)
    return groups


def _test_labels(
    test: list[str], of: dict[str, str], spec: str | dict[str, str], classes: list[str]
) -> dict[str, str]:
    """Test labels -> train's classes: the same label, or one that names the same class."""
    by_key = {alias_key(label): c for label, c in of.items()}
    mapped = {} if isinstance(spec, str) else spec
    found, stray = {}, []
    for label in test:
        k = alias_key(label)
        given = mapped.get(k)
        target = by_key.get(k) or (given and (class_of_folder(given) or given))
        target = target or class_of_folder(label)
        if target in classes:
            found[label] = target
        else:
            stray.append(label)
    if stray:
        raise ValueError(
            f"test has classes {stray} that train does not have (train's classes: {classes})"
        )
    return found


def _mapped(spec: str | dict[str, str], groups: dict[str, list[str]]) -> dict[str, str]:
    """Alias key -> class the class map assigns (canonical spelling for a seed class)."""
    if isinstance(spec, str):  # the one preset, "seed"
        return {k: CLASS_ALIASES[k] for k in groups if k in CLASS_ALIASES}
    unknown = sorted(k for k in spec if k not in groups)
    if unknown:
        labels = sorted(s for spellings in groups.values() for s in spellings)
        raise ValueError(
            f"class_map names labels {unknown} the data does not have; it has {labels}"
        )
    return {k: class_of_folder(t) or t for k, t in spec.items()}


def _ordered(names: set[str]) -> list[str]:
    return [c for c in CLASSES if c in names] + sorted(n for n in names if n not in CLASSES)


def _check_keys(classes: list[str], of: dict[str, str]) -> None:
    """Two classes may not share a metric key (`val_acc_<key>`)."""
    by_key: dict[str, list[str]] = {}
    for c in classes:
        by_key.setdefault(class_key(c), []).append(c)
    for key, names in by_key.items():
        if len(names) > 1:
            raise ValueError(
                f"classes {names} share the metric key {key!r}; rename a folder or merge them "
                f"with class_map"
            )
