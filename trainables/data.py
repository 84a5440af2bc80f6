"""Chest X-ray data: list the files, decode them once, split train/val by patient, report.

`load_dataset` (or `load_for_config`) is the one entry point. It hands each step to its module:

- `trainables.layouts`: which files belong to which split, class and patient (image folder or
  the pediatric ``chest_xray`` set, detected automatically; see that module for the rules);
- `trainables.preprocess`: every image becomes an 8-bit grayscale square;
- `trainables.decode_cache`: each file is decoded once per preprocessing setting, so the second
  load (and every epoch) never calls PIL;
- `trainables.splits`: the validation split is a seeded, stratified share of train, grouped by
  patient whenever patient ids exist; `Dataset.split_record` lists its files and hash.

The names other code imports from here (`CLASSES`, `CLASS_ALIASES`, `ImageError`, `preprocess`,
`decode_file`, `class_of_folder`, ...) are re-exported from those modules.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainables.decode_cache import decode_cached
from trainables.layouts import (
    CLASS_ALIASES,
    PEDIATRIC_CLASS_DIRS,
    Entry,
    Listing,
    class_of_folder,
    detect_layout,
    list_split,
    resolve_root,
)
from trainables.preprocess import (
    PREPROCESS_VERSION,
    ImageError,
    check_preprocessing,
    decode_file,
    preprocess,
)
from trainables.splits import split_hash, split_train_val
from trainables.vocab import CLASSES

__all__ = [
    "CLASSES",
    "CLASS_ALIASES",
    "DATASET_FIELDS",
    "PEDIATRIC_CLASS_DIRS",
    "PREPROCESS_VERSION",
    "DataReport",
    "Dataset",
    "ImageError",
    "Split",
    "class_of_folder",
    "dataset_key",
    "decode_file",
    "load_dataset",
    "load_for_config",
    "preprocess",
]

DATASET_FIELDS = ("data", "image_size", "resize_mode", "split_seed", "val_fraction")
"""The `TrialConfig` fields that decide a `Dataset` (the decoded arrays and the split); they are
also `load_dataset`'s parameter names."""


def dataset_key(cfg: Any) -> tuple:
    """What identifies `cfg`'s dataset: two configs with equal keys load the same `Dataset`, so
    a process may keep one loaded dataset per key (the Ray trainable, the report)."""
    return tuple(getattr(cfg, name) for name in DATASET_FIELDS)


def load_for_config(cfg: Any, include_test: bool = False) -> Dataset:
    """`load_dataset` with the data and preprocessing fields of a `TrialConfig`."""
    return load_dataset(
        **dict(zip(DATASET_FIELDS, dataset_key(cfg), strict=True)), include_test=include_test
    )


# ---------------------------------------------------------------------------- data classes


@dataclass
class Split:
    images: torch.Tensor
    """uint8 (N, 1, S, S)."""
    labels: torch.Tensor
    """int64 (N,), indices into `Dataset.classes`."""
    paths: list[str]
    """Relative to `Dataset.root`, POSIX separators."""
    patients: list[str]
    """Patient id per image; a file without one is its own patient (its path)."""

    def __len__(self) -> int:
        return len(self.paths)


@dataclass
class DataReport:
    root: str
    layout: str
    """'image-folder' or 'pediatric'."""
    classes: list[str]
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    """split -> class -> images."""
    skipped: list[dict[str, str]] = field(default_factory=list)
    """{'path', 'reason'} for every file that was not used."""
    ignored_hidden: int = 0
    """Hidden files (.DS_Store, ._*) ignored."""
    notes: list[str] = field(default_factory=list)
    image_size: int = 0
    resize_mode: str = ""
    decoded: int = 0
    """Files decoded by PIL in this load (0 on a warm cache)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "root": self.root,
            "layout": self.layout,
            "classes": list(self.classes),
            "counts": {s: dict(c) for s, c in self.counts.items()},
            "skipped": [dict(s) for s in self.skipped],
            "ignored_hidden": self.ignored_hidden,
            "notes": list(self.notes),
            "image_size": self.image_size,
            "resize_mode": self.resize_mode,
            "decoded": self.decoded,
        }

    def format(self) -> str:
        lines = [
            f"data {self.root} ({self.layout}, {self.image_size} px, {self.resize_mode}; "
            f"{self.decoded} files decoded, the rest from the cache)"
        ]
        header = ["split", *self.classes, "total"]
        rows = [header]
        for split, counts in self.counts.items():
            values = [counts.get(c, 0) for c in self.classes]
            rows.append([split, *map(str, values), str(sum(values))])
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        for row in rows:
            cells = [row[0].ljust(widths[0])] + [
                v.rjust(w) for v, w in zip(row[1:], widths[1:], strict=True)
            ]
            lines.append("  " + "  ".join(cells))
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} file(s):")
            lines += [f"  {s['path']}: {s['reason']}" for s in self.skipped]
        if self.ignored_hidden:
            lines.append(f"ignored {self.ignored_hidden} hidden file(s)")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


@dataclass
class Dataset:
    root: Path
    classes: list[str]
    train: Split
    val: Split
    test: Split | None
    report: DataReport
    split_record: dict
    """{'hash': sha256 of the sorted train and val paths, 'train', 'val', 'test': [paths]}."""
    decoded: int
    """Files decoded by PIL in this load; 0 when everything came from the cache."""


@dataclass
class _Part:
    """The readable images of one split of the data root, before the validation split."""

    images: np.ndarray
    """uint8 (N, S, S)."""
    labels: list[str]
    """Class names."""
    paths: list[str]
    patients: list[str | None]


# ---------------------------------------------------------------------------- loading


def load_dataset(
    data: str,
    image_size: int = 256,
    resize_mode: str = "pad",
    split_seed: int = 0,
    val_fraction: float = 0.2,
    include_test: bool = False,
) -> Dataset:
    """Read, decode (once, through the cache), split and report a dataset.

    `data` is an image-folder root, a pediatric ``chest_xray`` root (or its parent), or
    ``phantom:small`` / ``phantom:full``. Only analysis passes ``include_test=True``; otherwise
    the test folder is not read at all.
    """
    check_preprocessing(image_size, resize_mode)
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
    layout = detect_layout(resolve_root(str(data)))
    report = DataReport(
        str(layout.root), layout.kind, [], image_size=image_size, resize_mode=resize_mode
    )
    if len(layout.split_dirs["train"]) > 1:
        report.notes.append("the given val folder is merged into train before our split")
    listing = Listing()
    train_entries = list_split(layout, "train", listing)
    test_entries = list_split(layout, "test", listing) if include_test else []
    _add_listing(report, listing)
    classes = _classes_of(train_entries, test_entries, layout.root)
    report.classes = classes

    train_all = _load_part(train_entries, layout.root, image_size, resize_mode, report)
    test = None
    if include_test:
        test = _load_part(test_entries, layout.root, image_size, resize_mode, report)
        _check_readable(test, classes, "test", report)
    _check_readable(train_all, classes, "train", report)
    labels = np.array([classes.index(x) for x in train_all.labels], dtype=np.int64)
    train_idx, val_idx, how = split_train_val(labels, train_all.patients, split_seed, val_fraction)
    report.notes.append(f"validation split: {how}, split_seed={split_seed}")
    train = _make_split(train_all, classes, train_idx)
    val = _make_split(train_all, classes, val_idx)
    test_split = (
        _make_split(test, classes, np.arange(len(test.paths))) if test is not None else None
    )
    _count(report, classes, {"train": train, "val": val, "test": test_split})
    record = {
        "hash": split_hash(train.paths, val.paths),
        "train": sorted(train.paths),
        "val": sorted(val.paths),
        "test": sorted(test_split.paths) if test_split is not None else [],
    }
    return Dataset(layout.root, classes, train, val, test_split, report, record, report.decoded)


def _add_listing(report: DataReport, listing: Listing) -> None:
    report.skipped += listing.skipped
    report.ignored_hidden += listing.ignored_hidden
    report.notes += listing.notes


def _classes_of(train: list[Entry], test: list[Entry], root: Path) -> list[str]:
    """The classes train holds, in `CLASSES` order; test may hold no class train lacks."""
    classes = [c for c in CLASSES if any(e.label == c for e in train)]
    if len(classes) < 2:
        raise ValueError(f"train split {root / 'train'} has classes {classes}; need two")
    stray = sorted({e.label for e in test} - set(classes))
    if stray:
        raise ValueError(f"test split has classes {stray} that train does not have ({classes})")
    return classes


def _load_part(
    entries: list[Entry], root: Path, image_size: int, resize_mode: str, report: DataReport
) -> _Part:
    """Decode `entries` through the cache; unreadable files go to `report.skipped`."""
    if not entries:
        return _Part(np.zeros((0, image_size, image_size), np.uint8), [], [], [])
    images, kept, failures, decoded = decode_cached(entries, root, image_size, resize_mode)
    report.decoded += decoded
    for i, reason in failures.items():
        report.skipped.append({"path": entries[i].rel, "reason": reason})
    good = [entries[i] for i in kept]
    return _Part(images, [e.label for e in good], [e.rel for e in good], [e.patient for e in good])


def _check_readable(part: _Part, classes: list[str], split: str, report: DataReport) -> None:
    """Refuse a split with no readable images, or (train) a class with none; say why."""
    counts = Counter(part.labels)
    empty = [c for c in classes if counts[c] == 0] if split == "train" else []
    if part.paths and not empty:
        return
    skipped = [f"{s['path']}: {s['reason']}" for s in report.skipped]
    why = f"; skipped files include {skipped[:3]}" if skipped else ""
    if not part.paths:
        raise ValueError(f"the {split} split has no readable images{why}")
    raise ValueError(f"class {empty[0]} has no readable images in the {split} split{why}")


def _count(report: DataReport, classes: list[str], splits: dict[str, Split | None]) -> None:
    """Images per split and class into `report.counts`; train and val need every class."""
    for name, split in splits.items():
        if split is not None:
            report.counts[name] = {c: int((split.labels == i).sum()) for i, c in enumerate(classes)}
    for split in ("train", "val"):
        for c in classes:
            if report.counts[split][c] == 0:
                raise ValueError(
                    f"class {c} has no images in the {split} split after the validation split "
                    f"(train holds {report.counts['train'][c] + report.counts['val'][c]} {c} "
                    f"images); add images or patients, or change val_fraction"
                )


def _make_split(part: _Part, classes: list[str], idx: np.ndarray) -> Split:
    chosen = np.ascontiguousarray(part.images[idx])
    return Split(
        images=torch.from_numpy(chosen).unsqueeze(1),
        labels=torch.tensor([classes.index(part.labels[i]) for i in idx], dtype=torch.int64),
        paths=[part.paths[i] for i in idx],
        patients=[part.patients[i] if part.patients[i] is not None else part.paths[i] for i in idx],
    )
