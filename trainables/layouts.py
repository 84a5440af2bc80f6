"""Layout listing: which files of a data root belong to which split, label and patient.

A layout turns a data root into `Entry` rows (relative path, file, label, patient id) per split,
without opening an image. Three layouts are read, detected by `detect_layout`:

- image folder: ``ROOT/{train,test}/<CLASS>/*`` with any class folder names (a ``ROOT/val``
  folder, if any, is merged into train before our own split). The folder names are the labels;
  `trainables.classes` turns labels into classes (seed aliases, the class map, the order).
  Patient ids come from a ``ROOT/metadata.csv`` with ``path`` (relative to ROOT) and
  ``patient_id`` columns, else from ``person<ID>_`` file names, else a file is its own patient.
- the public pediatric set: ``chest_xray/{train,val,test}/{NORMAL,PNEUMONIA}/`` (the path of
  ``chest_xray`` or of its parent), recognised when most train PNEUMONIA files carry its file
  names: ``person12_bacteria_45.jpeg`` is BACTERIA of patient ``12``, ``person3_virus_7.jpeg``
  is VIRAL, ``IM-0115-0001.jpeg`` is NORMAL of patient ``IM-0115``. Other PNEUMONIA files are
  skipped and counted. A NORMAL/PNEUMONIA folder without those names is an image folder with
  two classes. Its official ``val`` folder (16 images) is merged into train before our split.
- a CSV manifest (``--data FILE.csv``): `trainables.manifest`.

Hostile files never crash a listing: dangling symlinks, FIFOs and other non-regular files,
unreadable files and directories named like images are skipped with their reason
(`file_problem`); a file that vanishes later is caught when it is hashed or decoded.

`LAYOUTS` maps each folder layout's name to the function that lists one of its class folders.
"""

from __future__ import annotations

import csv
import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from trainables.classes import CLASS_ALIASES, class_of_folder
from trainables.vocab import MULTILABEL_PHANTOMS, parse_phantom

__all__ = ["CLASS_ALIASES", "Entry", "Layout", "Listing", "class_of_folder", "detect_layout"]

PEDIATRIC_CLASS_DIRS = ("NORMAL", "PNEUMONIA")
SPLIT_NAMES = ("train", "val", "test")
IMAGE_SUFFIXES = frozenset(
    {
        ".png",
        ".jpg",
        ".jpeg",
        ".bmp",
        ".gif",
        ".tif",
        ".tiff",
        ".webp",
        ".dcm",
        ".dicom",
        ".pgm",
        ".ppm",
    }
)
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
    """The label as found (folder name, manifest value); `trainables.classes` names classes."""
    patient: str | None
    codes: tuple[int, ...] | None = None
    """Multi-label: one code per finding of `Layout.findings` (`trainables.multilabel`)."""


@dataclass
class Layout:
    kind: str
    """'image-folder', 'pediatric' or 'manifest'."""
    root: Path
    split_dirs: dict[str, list[Path]]
    """Our split name -> folders read into it (folder layouts)."""
    why: str = ""
    """How the layout was recognised, in words."""
    entries: dict[str, list[Entry]] | None = None
    """A manifest's rows per split ('train', 'test', and 'val' when the manifest gives one)."""
    columns: list[str] = field(default_factory=list)
    """A manifest's columns."""
    notes: list[str] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)
    """A multi-label manifest's findings (empty for one class per image)."""
    label_format: str = "single"
    """'single', or a multi-label manifest's 'joined' / 'columns' (`trainables.multilabel`)."""


@dataclass
class Listing:
    """What listing found besides the entries: files not used and why, hidden files, notes."""

    skipped: list[dict[str, str]] = field(default_factory=list)
    """{'path', 'reason'} for every file that was not used."""
    ignored_hidden: int = 0
    notes: list[str] = field(default_factory=list)
    dicom: dict[str, dict[str, int]] = field(default_factory=dict)
    """DICOM files per header field ('photometric', 'bits_stored', 'transfer_syntax') and value
    (`trainables.dicom.screen_entries`)."""

    def skip(self, rel: str, reason: str) -> None:
        self.skipped.append({"path": rel, "reason": reason})


def _is_hidden(name: str) -> bool:
    return name.startswith(".") or name in ("Thumbs.db", "desktop.ini", "__MACOSX")


def resolve_root(data: str) -> Path:
    """What `data` names: a phantom preset (generated on first use), a folder or a CSV file."""
    preset = parse_phantom(data)
    if preset in MULTILABEL_PHANTOMS:  # a manifest of the multi-label phantom
        from trainables.phantom_multilabel import MANIFESTS, ensure_multilabel_phantom

        return ensure_multilabel_phantom() / MANIFESTS[preset]
    if preset is not None:
        from trainables.phantom import ensure_phantom  # generating is heavy: only on demand

        return Path(ensure_phantom(preset))
    root = Path(data).expanduser()
    if not root.exists():
        raise ValueError(f"data path {root} does not exist")
    if root.is_file() and root.suffix.lower() == ".csv":
        return root
    if not root.is_dir():
        raise ValueError(f"data path {root} is neither a folder nor a .csv manifest")
    return root


def detect_layout(root: Path) -> Layout:
    """The folder layout of `root` (a manifest's is `trainables.manifest.manifest_layout`)."""
    for base in (root, root / "chest_xray"):
        train = base / "train"
        if not train.is_dir():
            continue
        kind, why = _folder_kind(train)
        # A given val folder (the pediatric set's has 16 images) joins train before our split.
        dirs = [train] + ([base / "val"] if (base / "val").is_dir() else [])
        return Layout(kind, base, {"train": dirs, "test": [base / "test"]}, why)
    raise ValueError(_no_train_message(root))


def _folder_kind(train: Path) -> tuple[str, str]:
    """'pediatric' when most train PNEUMONIA files carry the pediatric set's names."""
    folders = {p.name.upper(): p for p in train.iterdir() if p.is_dir()}
    if set(folders) != set(PEDIATRIC_CLASS_DIRS):
        return "image-folder", "train/<CLASS>/ folders"
    names = [n for _, _, files in os.walk(folders["PNEUMONIA"]) for n in files if not _is_hidden(n)]
    named = sum(bool(_PEDIATRIC_PNEUMONIA_RE.match(n)) for n in names)
    if names and 2 * named >= len(names):
        return (
            "pediatric",
            f"{named} of {len(names)} train PNEUMONIA files are person<ID>_(bacteria|virus)_<N>",
        )
    return "image-folder", (
        f"NORMAL/PNEUMONIA folders, two classes: {named} of {len(names)} PNEUMONIA file names "
        "say bacteria or virus (the pediatric layout needs most of them to)"
    )


def _no_train_message(root: Path) -> str:
    """Why `root` is no data root, with the path the user probably meant."""
    expected = (
        "expected an image folder ROOT/{train,test}/<CLASS>/, the pediatric "
        "chest_xray/{train,val,test}/{NORMAL,PNEUMONIA}/ or a .csv manifest"
    )
    if root.name.lower() in SPLIT_NAMES and (root.parent / "train").is_dir():
        return (
            f"{root} is a split folder, one level too deep: pass --data {root.parent} ({expected})"
        )
    nested = sorted(p for p in root.iterdir() if p.is_dir() and (p / "train").is_dir())
    if nested:
        return (
            f"{root} has no train folder but {nested[0]} has: pass --data {nested[0]} ({expected})"
        )
    classes = sorted(
        p.name
        for p in root.iterdir()
        if p.is_dir() and not _is_hidden(p.name) and p.name.lower() not in SPLIT_NAMES
    )
    if classes:
        return (
            f"missing split folder {root / 'train'}: {root} holds {classes[:5]} but no "
            f"train/test folders; arrange them as ROOT/{{train,test}}/<CLASS>/ or list the "
            f"files in a CSV manifest (path,label[,patient_id,split])"
        )
    return f"missing split folder {root / 'train'}: {expected}"


def list_split(layout: Layout, split: str, listing: Listing) -> list[Entry]:
    """Every usable file of `split`, in a stable order; what is not used is recorded in
    `listing`."""
    if layout.entries is not None:
        return _usable(layout.entries.get(split, []), listing)
    entries: list[Entry] = []
    metadata = _read_metadata(layout.root, listing) if layout.kind == "image-folder" else {}
    list_class_dir = LAYOUTS[layout.kind]
    for split_dir in layout.split_dirs[split]:
        if not split_dir.is_dir():
            raise ValueError(f"missing split folder {split_dir} (expected {split_dir}/<CLASS>/)")
        for child in sorted(split_dir.iterdir()):
            if _is_hidden(child.name):
                listing.ignored_hidden += 1
                continue
            if not child.is_dir():
                listing.skip(_rel(child, layout.root), "not inside a class folder")
                continue
            files = _files_under(child, layout.root, listing)
            if not files and not any(
                s["path"].startswith(_rel(child, layout.root) + "/") for s in listing.skipped
            ):
                raise ValueError(f"empty class folder {child}: it holds no files")
            entries += list_class_dir(child, files, layout.root, listing, metadata)
    return entries


def file_problem(path: Path) -> str | None:
    """Why `path` cannot be read as an image file (without opening it), or None."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "dangling symlink" if os.path.islink(path) else "missing file"
    except OSError as err:
        return f"cannot stat the file ({err.strerror})"
    if stat.S_ISDIR(st.st_mode):
        return "a directory, not an image file"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file (a FIFO, socket or device)"
    if not os.access(path, os.R_OK):
        return "permission denied: not readable by this user"
    return None


def _usable(entries: list[Entry], listing: Listing) -> list[Entry]:
    kept = []
    for e in entries:
        problem = file_problem(e.path)
        if problem:
            listing.skip(e.rel, problem)
        else:
            kept.append(e)
    return kept


def _files_under(folder: Path, root: Path, listing: Listing) -> list[Path]:
    files = []
    for dirpath, dirnames, filenames in os.walk(folder):
        for d in sorted(dirnames):
            if not _is_hidden(d) and Path(d).suffix.lower() in IMAGE_SUFFIXES:
                listing.skip(_rel(Path(dirpath) / d, root), "a directory named like an image file")
        dirnames[:] = sorted(
            d
            for d in dirnames
            if not _is_hidden(d) and Path(d).suffix.lower() not in IMAGE_SUFFIXES
        )
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if _is_hidden(name):
                listing.ignored_hidden += 1
            elif problem := file_problem(path):
                listing.skip(_rel(path, root), problem)
            else:
                files.append(path)
    return files


def image_files_under(folder: Path) -> tuple[list[Path], list[Path]]:
    """(image files, other files) below `folder`, sorted; an image file is one whose suffix is in
    `IMAGE_SUFFIXES`; hidden files and folders are left out of both."""
    images, others = [], []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not _is_hidden(d))
        for name in sorted(n for n in filenames if not _is_hidden(n)):
            path = Path(dirpath) / name
            (images if path.suffix.lower() in IMAGE_SUFFIXES else others).append(path)
    return images, others


ClassDirLister = Callable[[Path, list[Path], Path, Listing, dict[str, str]], list[Entry]]


def _image_folder_entries(
    folder: Path, files: list[Path], root: Path, listing: Listing, metadata: dict[str, str]
) -> list[Entry]:
    entries = []
    for f in files:
        rel = _rel(f, root)
        entries.append(Entry(rel, f, folder.name, metadata.get(rel) or _person_id(f.name)))
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
    entries, unnamed = [], 0
    for f in files:
        rel = _rel(f, root)
        if kind == "NORMAL":
            m = _PEDIATRIC_NORMAL_RE.match(f.name)
            entries.append(Entry(rel, f, "NORMAL", m.group(1).upper() if m else None))
            continue
        m = _PEDIATRIC_PNEUMONIA_RE.match(f.name)
        if m is None:
            unnamed += 1
            listing.skip(
                rel,
                "PNEUMONIA file name does not say bacteria or virus "
                "(expected person<ID>_bacteria_<N> or person<ID>_virus_<N>)",
            )
            continue
        label = "BACTERIA" if m.group(2).lower() == "bacteria" else "VIRAL"
        entries.append(Entry(rel, f, label, m.group(1)))
    if unnamed:
        listing.notes.append(
            f"{unnamed} of {len(files)} files in {_rel(folder, root)} could not be classified: "
            "their names do not say bacteria or virus"
        )
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
