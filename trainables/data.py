"""Chest X-ray data: list the files, decode them once, split train/val by patient, report.

`load_dataset` (or `load_for_config`) is the one entry point. It hands each step to its module:

- `trainables.layouts`: which files belong to which split, label and patient (image folder or
  the pediatric ``chest_xray`` set, detected automatically), or `trainables.manifest` for a
  CSV manifest;
- `trainables.classes`: labels become classes (any names; seed aliases and the class map);
- `trainables.preprocess`: every image becomes an 8-bit grayscale square;
- `trainables.decode_cache`: each file is decoded once per preprocessing setting, so the second
  load (and every epoch) never calls PIL;
- `trainables.splits`: the validation split is a seeded, stratified share of train, grouped by
  patient whenever patient ids exist; `Dataset.split_record` lists its files and hash.

The names other code imports from here (`CLASSES`, `CLASS_ALIASES`, `ImageError`, `preprocess`,
`decode_file`, `class_of_folder`, ...) are re-exported from those modules.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainables.classes import CLASS_ALIASES, ClassNaming, class_of_folder, name_classes
from trainables.decode_cache import load_or_build
from trainables.dicom import screen_entries
from trainables.layouts import (
    PEDIATRIC_CLASS_DIRS,
    Entry,
    Layout,
    Listing,
    detect_layout,
    list_split,
    resolve_root,
)
from trainables.manifest import manifest_layout
from trainables.multilabel import DEFAULT_SEPARATOR, POSITIVE, code_counts, strata
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
    "list_dataset",
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

DATASET_FIELDS = (
    "data",
    "image_size",
    "resize_mode",
    "split_seed",
    "val_fraction",
    "class_map",
    "label_separator",
)
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
    """One split's images and labels. Its paths and patients are given, or (a mapped dataset,
    `trainables.mapped`, which trains without them) read by `rows` on first use."""

    images: torch.Tensor
    """uint8 (N, 1, S, S), a read-only memory map of the decode cache (shared by every process
    on the node): index or copy it, never write into it."""
    labels: torch.Tensor
    """int64 (N,), indices into `Dataset.classes`; for multi-label data int64 (N, F), one
    `trainables.multilabel` code per finding (`Dataset.classes` are then the findings)."""
    path_list: list[str] | None = None
    patient_list: list[str] | None = None
    rows: Callable[[], tuple[list[str], list[str]]] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if (self.path_list is None or self.patient_list is None) and self.rows is None:
            raise ValueError("a Split needs its paths and patients, or a way to read them")

    @property
    def paths(self) -> list[str]:
        """Relative to `Dataset.root`, POSIX separators."""
        if self.path_list is None:
            self._read_rows()
        return self.path_list  # type: ignore[return-value]

    @property
    def patients(self) -> list[str]:
        """Patient id per image; a file without one is its own patient (its path)."""
        if self.patient_list is None:
            self._read_rows()
        return self.patient_list  # type: ignore[return-value]

    def _read_rows(self) -> None:
        assert self.rows is not None
        self.path_list, self.patient_list = self.rows()

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class DataReport:
    """What a load found: classes and where they came from, images per class and split, and
    every skipped file with its reason. Printed by the driver, saved in the experiment folder
    (`trainables.experiment.data_report_json`), summarised in summary.json, the report and
    the bundle."""

    root: str
    layout: str
    """'image-folder', 'pediatric' or 'manifest'."""
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
    why: str = ""
    """How the layout was recognised."""
    sources: dict[str, list[str]] = field(default_factory=dict)
    """Class -> the folders (or manifest labels) it came from."""
    class_map: str = ""
    columns: list[str] = field(default_factory=list)
    """A manifest's columns (extra ones are kept here, unused)."""
    multilabel: bool = False
    """Several findings per image: `classes` are the findings, `counts` their positives."""
    label_format: str = "single"
    """'single', or a multi-label manifest's 'joined' / 'columns' (`trainables.multilabel`)."""
    finding_counts: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)
    """Multi-label: split -> finding -> positive / negative / uncertain / unmentioned images."""
    dicom: dict[str, dict[str, int]] = field(default_factory=dict)
    """DICOM files listed, per 'photometric', 'bits_stored' and 'transfer_syntax' value."""
    files_sha256: str = ""
    """sha256 of the train and validation files with their classes (`files_hash`): same counts
    with other files or labels differ here ("" in reports written before the field existed)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DataReport:
        """Read back `to_dict`; keys this version does not know are ignored (a newer writer)."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    def format(self) -> str:
        lines = [
            f"data {self.root} ({self.layout}: {self.why}; {self.image_size} px, "
            f"{self.resize_mode}; {self.decoded} files decoded, the rest from the cache)"
        ]
        renamed = {c: s for c, s in self.sources.items() if s != [c]}
        if renamed:
            lines.append(
                "classes: " + "; ".join(f"{c} <- {', '.join(s)}" for c, s in renamed.items())
            )
        if self.multilabel:
            lines += self._finding_table()
        else:
            lines += self._class_table()
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} file(s):")
            lines += [f"  {s['path']}: {s['reason']}" for s in self.skipped]
        if self.ignored_hidden:
            lines.append(f"ignored {self.ignored_hidden} hidden file(s)")
        for what, counts in self.dicom.items():
            shown = ", ".join(f"{v} {n}" for v, n in counts.items())
            lines.append(f"DICOM files by {what.replace('_', ' ')}: {shown}")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def _class_table(self) -> list[str]:
        header = ["split", *self.classes, "total"]
        rows = [header]
        for split, counts in self.counts.items():
            values = [counts.get(c, 0) for c in self.classes]
            rows.append([split, *map(str, values), str(sum(values))])
        return _aligned(rows)

    def _finding_table(self) -> list[str]:
        """Per finding and split: positive / negative / uncertain / unmentioned images."""
        splits = list(self.finding_counts)
        rows = [["finding", *[f"{s} +/-/?/blank" for s in splits]]]
        for finding in self.classes:
            cells = []
            for split in splits:
                c = self.finding_counts[split].get(finding, {})
                cells.append(
                    f"{c.get('positive', 0)}/{c.get('negative', 0)}/"
                    f"{c.get('uncertain', 0)}/{c.get('unmentioned', 0)}"
                )
            rows.append([finding, *cells])
        return [f"multi-label ({self.label_format}): {len(self.classes)} findings"] + _aligned(rows)


def _aligned(rows: list[list[str]]) -> list[str]:
    """A text table: first column left-aligned, the others right-aligned."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [
        "  "
        + "  ".join(
            [row[0].ljust(widths[0])]
            + [v.rjust(w) for v, w in zip(row[1:], widths[1:], strict=True)]
        )
        for row in rows
    ]


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
    view: Path | None = None
    """The decode cache's view this load mapped (`trainables.decode_cache`)."""

    @property
    def multilabel(self) -> bool:
        """Several findings per image: `classes` are findings, `Split.labels` (N, F) codes."""
        return self.report.multilabel


# ---------------------------------------------------------------------------- loading


def load_dataset(
    data: str,
    image_size: int = 256,
    resize_mode: str = "pad",
    split_seed: int = 0,
    val_fraction: float = 0.2,
    class_map: str = "",
    label_separator: str = DEFAULT_SEPARATOR,
    include_test: bool = False,
) -> Dataset:
    """Read, decode (once, through the cache), split and report a dataset.

    `data` is an image-folder root, a pediatric ``chest_xray`` root (or its parent), a CSV
    manifest, or ``phantom:small`` / ``phantom:full``; `class_map` renames or merges labels
    (`trainables.classes`). Only analysis passes ``include_test=True``; otherwise the test
    images are not opened at all. The images of each split are memory-mapped read-only from the
    decode cache (`trainables.decode_cache`), shared with every process on the node.
    """
    check_preprocessing(image_size, resize_mode)
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
    layout, listing, entries, naming = list_dataset(data, class_map, include_test, label_separator)
    report = _new_report(layout, listing, naming, image_size, resize_mode, class_map)
    classes = naming.classes

    settings = {"split_seed": split_seed, "val_fraction": val_fraction, "class_map": class_map}

    def plan(readable: dict[str, list[int]], failures: dict[str, dict[int, str]]):
        skipped = [reason for part in failures.values() for _, reason in sorted(part.items())]
        skipped = [*(f"{s['path']}: {s['reason']}" for s in report.skipped), *skipped]
        for split, idx in readable.items():
            _check_readable([entries[split][i] for i in idx], classes, split, skipped)
        return _plan_splits(entries, readable, classes, split_seed, val_fraction)

    cached = load_or_build(entries, layout.root, image_size, resize_mode, settings, plan)
    report.decoded = cached.decoded
    for part, failed in cached.failures.items():
        for i, reason in sorted(failed.items()):
            report.skipped.append({"path": entries[part][i].rel, "reason": reason})
    report.notes += cached.notes
    splits = {
        name: _make_split(entries[s.part], s.index, s.images, classes, image_size)
        for name, s in cached.splits.items()
    }
    train, val, test = splits["train"], splits["val"], splits.get("test")
    _count(report, classes, {"train": train, "val": val, "test": test})
    report.files_sha256 = files_hash(classes, {"train": train, "val": val})
    record = {
        "hash": split_hash(train.paths, val.paths),
        "train": sorted(train.paths),
        "val": sorted(val.paths),
        "test": sorted(test.paths) if test is not None else [],
    }
    return Dataset(
        layout.root, classes, train, val, test, report, record, report.decoded, cached.view
    )


def _plan_splits(
    entries: dict[str, list[Entry]],
    readable: dict[str, list[int]],
    classes: list[str],
    split_seed: int,
    val_fraction: float,
) -> tuple[dict[str, tuple[str, list[int]]], list[str]]:
    """The listing indices of each split (decided once, stored with the decode cache)."""
    train_all = readable["train"]
    splits: dict[str, tuple[str, list[int]]] = {}
    if "val" in readable:  # given by a manifest
        splits = {"train": ("train", train_all), "val": ("val", readable["val"])}
        notes = ["validation split: given by the manifest"]
    else:
        chosen = [entries["train"][i] for i in train_all]
        labels = _strata(chosen, classes)
        patients = [e.patient for e in chosen]
        folders = [str(e.path.parent) for e in chosen]
        train_idx, val_idx, how = split_train_val(
            labels, patients, split_seed, val_fraction, classes, folders
        )
        splits = {
            "train": ("train", [train_all[i] for i in train_idx]),
            "val": ("train", [train_all[i] for i in val_idx]),
        }
        notes = [f"validation split: {how}, split_seed={split_seed}"]
    if "test" in readable:
        splits["test"] = ("test", readable["test"])
    return splits, notes


def list_dataset(
    data: str,
    class_map: str = "",
    include_test: bool = False,
    label_separator: str = DEFAULT_SEPARATOR,
) -> tuple[Layout, Listing, dict[str, list[Entry]], ClassNaming]:
    """List the dataset and name its classes without opening an image: the layout, what was
    skipped, the entries per split ('train', a manifest's 'val', 'test' with `include_test`)
    relabelled with their class, and the class naming. Refuses what no trial could train."""
    root = resolve_root(str(data))
    layout = manifest_layout(root, label_separator) if root.is_file() else detect_layout(root)
    listing = Listing()
    entries = {"train": list_split(layout, "train", listing)}
    if layout.entries is not None and "val" in layout.entries:
        entries["val"] = list_split(layout, "val", listing)
    if include_test:
        entries["test"] = list_split(layout, "test", listing)
    # DICOM headers (pixels unread): skip what is no grayscale image, group by PatientID.
    entries = {
        split: screen_entries(found, listing, layout.root) for split, found in entries.items()
    }
    if layout.findings:
        if class_map:
            raise ValueError(
                f"class_map {class_map!r} renames classes, which multi-label data ({root}) does "
                "not have; rename finding columns (or findings) in the manifest instead"
            )
        naming = ClassNaming(list(layout.findings), {}, {f: [f] for f in layout.findings})
        return layout, listing, entries, naming
    train_labels = [e.label for split in ("train", "val") for e in entries.get(split, [])]
    naming = name_classes(train_labels, [e.label for e in entries.get("test", [])], class_map)
    if len(naming.classes) < 2:
        where = layout.root / "train" if layout.kind != "manifest" else root
        raise ValueError(
            f"train split {where} has classes {naming.classes}; need two"
            + (f" ({'; '.join(listing.notes)})" if listing.notes else "")
        )
    for split_entries in entries.values():
        for e in split_entries:
            e.label = naming.of[e.label]
    return layout, listing, entries, naming


def _new_report(
    layout: Layout,
    listing: Listing,
    naming: ClassNaming,
    image_size: int,
    resize_mode: str,
    class_map: str,
) -> DataReport:
    notes = list(layout.notes) + list(listing.notes) + list(naming.notes)
    if len(layout.split_dirs.get("train", [])) > 1:
        notes.insert(0, "the given val folder is merged into train before our split")
    return DataReport(
        root=str(layout.root),
        layout=layout.kind,
        classes=list(naming.classes),
        skipped=list(listing.skipped),
        ignored_hidden=listing.ignored_hidden,
        notes=notes,
        image_size=image_size,
        resize_mode=resize_mode,
        why=layout.why,
        sources=dict(naming.sources),
        class_map=class_map,
        columns=list(layout.columns),
        multilabel=bool(layout.findings),
        label_format=layout.label_format,
        dicom=dict(listing.dicom),
    )


def _check_readable(
    entries: list[Entry], classes: list[str], split: str, skipped: list[str]
) -> None:
    """Refuse a split with no readable images, or (train) a class with none; say why."""
    if entries and entries[0].codes is not None:  # multi-label: a finding needs a positive
        positives = (np.array([e.codes for e in entries], np.int64) == POSITIVE).sum(0)
        counts = Counter({c: int(n) for c, n in zip(classes, positives, strict=True)})
    else:
        counts = Counter(e.label for e in entries)
    empty = [c for c in classes if counts[c] == 0] if split == "train" else []
    if entries and not empty:
        return
    why = f"; skipped files include {skipped[:3]}" if skipped else ""
    if not entries:
        raise ValueError(f"the {split} split has no readable images{why}")
    raise ValueError(f"class {empty[0]} has no readable images in the {split} split{why}")


def _count(report: DataReport, classes: list[str], splits: dict[str, Split | None]) -> None:
    """Images per split and class into `report.counts`; train and val need every class."""
    if report.multilabel:
        _count_findings(report, classes, splits)
        return
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


def _count_findings(
    report: DataReport, findings: list[str], splits: dict[str, Split | None]
) -> None:
    """Positives per finding into `report.counts`, every code into `report.finding_counts`.
    Train needs a positive of each finding; a finding with one class in val has no AUROC
    there, which the metrics leave out of the mean (`trainables.multilabel`), noted here."""
    for name, split in splits.items():
        if split is not None:
            report.finding_counts[name] = code_counts(split.labels.numpy(), findings)
            report.counts[name] = {f: c["positive"] for f, c in report.finding_counts[name].items()}
    val = report.finding_counts["val"]
    one_class = [
        f for f, c in val.items() if not c["positive"] or not c["negative"] + c["unmentioned"]
    ]
    if one_class:
        report.notes.append(
            f"findings {one_class} have one class in val: no AUROC there, left out of the mean"
        )


def _strata(entries: list[Entry], classes: list[str]) -> np.ndarray:
    """What the validation split stratifies on: the class, or (multi-label) the image's rarest
    positive finding (`trainables.multilabel.strata`)."""
    if entries and entries[0].codes is not None:
        return strata(np.array([e.codes for e in entries], np.int64))
    return np.array([classes.index(e.label) for e in entries], dtype=np.int64)


def files_hash(classes: list[str], splits: dict[str, Split]) -> str:
    """sha256 of every (split, file, class) a trial trains and validates on, sorted."""
    rows = sorted(
        (name, path, classes[label] if isinstance(label, int) else label)  # multi-label: codes
        for name, split in splits.items()
        for path, label in zip(split.paths, split.labels.tolist(), strict=True)
    )
    return hashlib.sha256(json.dumps(rows, separators=(",", ":")).encode()).hexdigest()


def _make_split(
    entries: list[Entry], index: list[int], images: np.ndarray, classes: list[str], size: int
) -> Split:
    chosen = [entries[i] for i in index]
    if chosen and chosen[0].codes is not None:
        labels = torch.tensor([list(e.codes) for e in chosen], dtype=torch.int64)
    else:
        labels = torch.tensor([classes.index(e.label) for e in chosen], dtype=torch.int64)
    return Split(
        pixels(images, size),
        labels,
        [e.rel for e in chosen],
        [e.patient if e.patient is not None else e.rel for e in chosen],
    )


def pixels(images: np.ndarray, size: int) -> torch.Tensor:
    """A split's (N, 1, S, S) tensor over its read-only memory map (N may be 0)."""
    if not len(images):
        images = np.zeros((0, size, size), np.uint8)
    with warnings.catch_warnings():
        # A read-only map: torch warns that it cannot write into it; nothing here writes.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(images).unsqueeze(1)
