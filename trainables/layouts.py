"""Layout listing: which files of a data root belong to which split, class and patient.

A layout turns a data root into `Entry` rows (relative path, file, class name, patient id) per
split, without opening an image. Two layouts are read, detected by `detect_layout`:

- image folder: ``ROOT/{train,test}/<CLASS>/*`` (a ``ROOT/val`` folder, if any, is merged
  into train before our own split). Class names come from the folder names and are ordered as
  in `trainables.vocab.CLASSES`. Folder names are matched case-insensitively, with spaces,
  underscores and hyphens treated alike, through `CLASS_ALIASES`:

  ===========  ==================================================================
  class        folder names accepted
  ===========  ==================================================================
  NORMAL       normal, healthy
  BACTERIA     bacteria, bacterial, pneumonia-bacterial, bacterial-pneumonia
  VIRAL        viral, virus, covid, covid-19, covid19, pneumonia-viral,
               viral-pneumonia, pneumonia-viral-covid-19
  ===========  ==================================================================

  Patient ids come from a ``ROOT/metadata.csv`` with ``path`` (relative to ROOT) and
  ``patient_id`` columns, else from ``person<ID>_`` file names, else a file is its own patient.
- the public pediatric set: ``chest_xray/{train,val,test}/{NORMAL,PNEUMONIA}/`` (the path of
  ``chest_xray`` or of its parent). The class and patient come from the file name:
  ``person12_bacteria_45.jpeg`` is BACTERIA of patient ``12``, ``person3_virus_7.jpeg`` is
  VIRAL, ``IM-0115-0001.jpeg`` is NORMAL of patient ``IM-0115``. Its official ``val`` folder
  (16 images) is merged into train before our own split.

`LAYOUTS` maps each layout's name to the function that lists one of its class folders; a new
layout (a CSV manifest, say) adds a detector to `detect_layout` and an entry to `LAYOUTS`.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from trainables.vocab import CLASSES, parse_phantom

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
PEDIATRIC_CLASS_DIRS = ("NORMAL", "PNEUMONIA")
_PERSON_RE = re.compile(r"^person(\d+)_", re.IGNORECASE)
_PEDIATRIC_PNEUMONIA_RE = re.compile(r"^person(\d+)_(bacteria|virus)_", re.IGNORECASE)
_PEDIATRIC_NORMAL_RE = re.compile(r"^((?:[A-Za-z0-9]+-)?IM-\d+)-", re.IGNORECASE)


@dataclass
class Entry:
    """One file of a split, before decoding."""

    rel: str
    """Path relative to the data root, POSIX separators."""
    path: Path
    label: str
    """A name from `CLASSES`."""
    patient: str | None


@dataclass
class Layout:
    kind: str
    """A key of `LAYOUTS`."""
    root: Path
    split_dirs: dict[str, list[Path]]
    """Our split name -> folders read into it."""


@dataclass
class Listing:
    """What listing found besides the entries: files not used and why, hidden files, notes."""

    skipped: list[dict[str, str]] = field(default_factory=list)
    """{'path', 'reason'} for every file that was not used."""
    ignored_hidden: int = 0
    notes: list[str] = field(default_factory=list)


def _alias_key(name: str) -> str:
    return re.sub(r"[\s_\-]+", "-", name.strip().lower())


def class_of_folder(name: str) -> str | None:
    """The class a folder name stands for (through `CLASS_ALIASES`), or None."""
    return CLASS_ALIASES.get(_alias_key(name))


def _is_hidden(name: str) -> bool:
    return name.startswith(".") or name in ("Thumbs.db", "desktop.ini", "__MACOSX")


def resolve_root(data: str) -> Path:
    """The folder `data` names: a phantom preset (generated on first use) or an existing folder."""
    preset = parse_phantom(data)
    if preset is not None:
        from trainables.phantom import ensure_phantom  # generating is heavy: only on demand

        return Path(ensure_phantom(preset))
    root = Path(data).expanduser()
    if not root.exists():
        raise ValueError(f"data path {root} does not exist")
    if not root.is_dir():
        raise ValueError(f"data path {root} is not a folder")
    return root


def detect_layout(root: Path) -> Layout:
    for base in (root, root / "chest_xray"):
        train = base / "train"
        if not train.is_dir():
            continue
        names = {p.name.upper() for p in train.iterdir() if p.is_dir()}
        kind = "pediatric" if "PNEUMONIA" in names else "image-folder"
        # A given val folder (the pediatric set's has 16 images) joins train before our split.
        dirs = [train] + ([base / "val"] if (base / "val").is_dir() else [])
        return Layout(kind, base, {"train": dirs, "test": [base / "test"]})
    raise ValueError(
        f"missing split folder {root / 'train'}: expected an image folder ROOT/{{train,test}}/"
        f"<CLASS>/ or the pediatric chest_xray/{{train,val,test}}/{{NORMAL,PNEUMONIA}}/"
    )


def list_split(layout: Layout, split: str, listing: Listing) -> list[Entry]:
    """Every file of `split`, in a stable order; what is not used is recorded in `listing`."""
    entries: list[Entry] = []
    metadata = _read_metadata(layout.root, listing) if layout.kind == "image-folder" else {}
    list_class_dir = LAYOUTS[layout.kind]
    for split_dir in layout.split_dirs[split]:
        if not split_dir.is_dir():
            raise ValueError(f"missing split folder {split_dir}")
        for child in sorted(split_dir.iterdir()):
            if _is_hidden(child.name):
                listing.ignored_hidden += 1
                continue
            if not child.is_dir():
                listing.skipped.append(
                    {"path": _rel(child, layout.root), "reason": "not inside a class folder"}
                )
                continue
            files = _files_under(child, listing)
            if not files:
                raise ValueError(f"empty class folder {child}: it holds no files")
            entries += list_class_dir(child, files, layout.root, listing, metadata)
    return entries


def _files_under(folder: Path, listing: Listing) -> list[Path]:
    files = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not _is_hidden(d))
        for name in sorted(filenames):
            if _is_hidden(name):
                listing.ignored_hidden += 1
            else:
                files.append(Path(dirpath) / name)
    return files


ClassDirLister = Callable[[Path, list[Path], Path, Listing, dict[str, str]], list[Entry]]


def _image_folder_entries(
    folder: Path, files: list[Path], root: Path, listing: Listing, metadata: dict[str, str]
) -> list[Entry]:
    label = class_of_folder(folder.name)
    if label is None:
        raise ValueError(
            f"unknown class folder {folder}; known class folders are {list(CLASSES)} "
            f"and the aliases {sorted(CLASS_ALIASES)} (case-insensitive)"
        )
    entries = []
    for f in files:
        rel = _rel(f, root)
        entries.append(Entry(rel, f, label, metadata.get(rel) or _person_id(f.name)))
    return entries


def _pediatric_entries(
    folder: Path, files: list[Path], root: Path, listing: Listing, metadata: dict[str, str]
) -> list[Entry]:
    kind = folder.name.upper()
    if kind not in PEDIATRIC_CLASS_DIRS:
        raise ValueError(
            f"unknown class folder {folder} in the pediatric layout; expected "
            f"{list(PEDIATRIC_CLASS_DIRS)}"
        )
    entries = []
    for f in files:
        rel = _rel(f, root)
        if kind == "NORMAL":
            m = _PEDIATRIC_NORMAL_RE.match(f.name)
            entries.append(Entry(rel, f, "NORMAL", m.group(1).upper() if m else None))
            continue
        m = _PEDIATRIC_PNEUMONIA_RE.match(f.name)
        if m is None:
            listing.skipped.append(
                {
                    "path": rel,
                    "reason": "PNEUMONIA file name does not say bacteria or virus "
                    "(expected person<ID>_bacteria_<N> or person<ID>_virus_<N>)",
                }
            )
            continue
        label = "BACTERIA" if m.group(2).lower() == "bacteria" else "VIRAL"
        entries.append(Entry(rel, f, label, m.group(1)))
    return entries


LAYOUTS: dict[str, ClassDirLister] = {
    "image-folder": _image_folder_entries,
    "pediatric": _pediatric_entries,
}


def _person_id(name: str) -> str | None:
    m = _PERSON_RE.match(name)
    return m.group(1) if m else None


def _read_metadata(root: Path, listing: Listing) -> dict[str, str]:
    path = root / "metadata.csv"
    if not path.is_file():
        return {}
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        columns = reader.fieldnames or []
        if "path" not in columns or "patient_id" not in columns:
            listing.notes.append(
                f"{path} has no path and patient_id columns (has {columns}); "
                "patient ids taken from file names"
            )
            return {}
        return {
            str(PurePosixPath(row["path"])): row["patient_id"]
            for row in reader
            if row.get("path") and row.get("patient_id")
        }


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()
