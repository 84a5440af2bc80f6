"""Chest X-ray data: find the files, decode them once, split train/val by patient, report.

Two layouts are read, detected automatically:

- image folder: ``ROOT/{train,test}/<CLASS>/*`` (a ``ROOT/val`` folder, if any, is merged
  into train before our own split). Class names come from the folder names and
  are ordered as in `CLASSES`. Folder names are matched case-insensitively, with spaces,
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

Every image becomes an 8-bit grayscale square by `preprocess` and is decoded once per
preprocessing setting: a consolidated ``.npy`` array per (file list, preprocessing) lives under
``cache_root()/decoded/``, keyed by the files' content hashes, so the second load (and every
epoch) never calls PIL. The validation split is a seeded, stratified share of train, grouped by
patient whenever patient ids exist; `Dataset.split_record` lists its files and hash.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from trainables.cache import atomic_write_bytes, atomic_write_text, cache_root, file_lock

CLASSES = ("NORMAL", "BACTERIA", "VIRAL")
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
RESIZE_MODES = ("pad", "crop")
PHANTOM_PRESETS = ("small", "full")
# Bump when `preprocess` changes its output, so old decoded arrays are not reused.
PREPROCESS_VERSION = 1
PEDIATRIC_CLASS_DIRS = ("NORMAL", "PNEUMONIA")
_HIGH_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
_PERSON_RE = re.compile(r"^person(\d+)_", re.IGNORECASE)
_PEDIATRIC_PNEUMONIA_RE = re.compile(r"^person(\d+)_(bacteria|virus)_", re.IGNORECASE)
_PEDIATRIC_NORMAL_RE = re.compile(r"^((?:[A-Za-z0-9]+-)?IM-\d+)-", re.IGNORECASE)
_DECODE_THREADS = min(8, os.cpu_count() or 1)  # PIL releases the GIL while decoding


class ImageError(ValueError):
    """A file that cannot be decoded as an image; the message names the file."""


def _alias_key(name: str) -> str:
    return re.sub(r"[\s_\-]+", "-", name.strip().lower())


def class_of_folder(name: str) -> str | None:
    """The class a folder name stands for (through `CLASS_ALIASES`), or None."""
    return CLASS_ALIASES.get(_alias_key(name))


# ---------------------------------------------------------------------------- preprocessing


def preprocess(img: Image.Image, image_size: int, resize_mode: str) -> np.ndarray:
    """Any PIL image -> uint8 (image_size, image_size) grayscale, aspect ratio kept.

    EXIF orientation is applied first. 16-bit, 32-bit and float images are scaled from their
    own min..max to 0..255 (PIL's own conversion would clip them at 255); alpha is composited
    onto black. 'pad' centres the image on a black square, 'crop' takes the central square;
    the square is then resized with antialiasing (Lanczos).
    """
    _check_preprocessing(image_size, resize_mode)
    img = ImageOps.exif_transpose(img)
    gray = _to_gray(img)
    h, w = gray.shape
    side = max(h, w) if resize_mode == "pad" else min(h, w)
    if resize_mode == "pad":
        square = np.zeros((side, side), dtype=np.uint8)
        top, left = (side - h) // 2, (side - w) // 2
        square[top : top + h, left : left + w] = gray
    else:
        top, left = (h - side) // 2, (w - side) // 2
        square = gray[top : top + side, left : left + side]
    out = Image.fromarray(np.ascontiguousarray(square), mode="L")
    if side != image_size:
        out = out.resize((image_size, image_size), Image.Resampling.LANCZOS, reducing_gap=3.0)
    return np.asarray(out, dtype=np.uint8).copy()


def _check_preprocessing(image_size: int, resize_mode: str) -> None:
    if resize_mode not in RESIZE_MODES:
        raise ValueError(
            f"unknown resize_mode {resize_mode!r}; expected one of {list(RESIZE_MODES)}"
        )
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive integer, got {image_size!r}")


def _to_gray(img: Image.Image) -> np.ndarray:
    if img.mode in _HIGH_DEPTH_MODES:
        values = np.asarray(img).astype(np.float64)
        lo, hi = float(values.min()), float(values.max())
        if hi <= lo:  # a constant image carries no contrast to keep
            return np.zeros(values.shape, dtype=np.uint8)
        return np.round((values - lo) * (255.0 / (hi - lo))).astype(np.uint8)
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if "A" in img.getbands() or img.mode in ("PA", "La", "RGBa"):
        la = np.asarray(img.convert("RGBA").convert("LA"), dtype=np.float32)
        return np.round(la[..., 0] * la[..., 1] / 255.0).astype(np.uint8)
    if img.mode == "L":
        return np.asarray(img, dtype=np.uint8)
    if img.mode not in ("1", "P", "RGB"):
        img = img.convert("RGB")  # CMYK, YCbCr, LAB, HSV: via RGB, which PIL converts from all
    return np.asarray(img.convert("L"), dtype=np.uint8)


def _decode(path: Path, image_size: int, resize_mode: str) -> np.ndarray:
    """Decode one file; the caller decides how DecompressionBombWarning is treated."""
    try:
        if path.stat().st_size == 0:
            raise ImageError(f"{path}: zero-byte file")
        with Image.open(path) as img:
            w, h = img.size
            if w * h > (Image.MAX_IMAGE_PIXELS or float("inf")):
                raise ImageError(
                    f"{path}: {w}x{h} pixels is over Pillow's decompression-bomb limit "
                    f"(Image.MAX_IMAGE_PIXELS = {Image.MAX_IMAGE_PIXELS})"
                )
            # JPEG only: let libjpeg downscale by 2^k while keeping >= 2x the target (as
            # Image.thumbnail does), a large speed-up at no visible cost after Lanczos.
            img.draft(None, (2 * image_size, 2 * image_size))
            img.load()
            return preprocess(img, image_size, resize_mode)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageError(f"{path}: over Pillow's decompression-bomb limit ({err})") from None
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image file Pillow can identify") from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise ImageError(f"{path}: corrupt or truncated image ({err})") from None


def decode_file(path: str | Path, image_size: int, resize_mode: str) -> np.ndarray:
    """Open, decode and `preprocess` one file; any failure is an ImageError naming the file."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        return _decode(Path(path), image_size, resize_mode)


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


# ---------------------------------------------------------------------------- listing


@dataclass
class _Entry:
    rel: str
    path: Path
    label: str  # a name from CLASSES
    patient: str | None


@dataclass
class _Layout:
    kind: str
    root: Path
    split_dirs: dict[str, list[Path]]  # our split name -> folders read into it


def _is_hidden(name: str) -> bool:
    return name.startswith(".") or name in ("Thumbs.db", "desktop.ini", "__MACOSX")


def _resolve_root(data: str) -> Path:
    if data.startswith("phantom:"):
        preset = data.split(":", 1)[1]
        if preset not in PHANTOM_PRESETS:
            raise ValueError(
                f"unknown data {data!r}; expected a folder or one of "
                f"{[f'phantom:{p}' for p in PHANTOM_PRESETS]}"
            )
        from trainables.phantom import ensure_phantom  # generating is heavy: only on demand

        return Path(ensure_phantom(preset))
    root = Path(data).expanduser()
    if not root.exists():
        raise ValueError(f"data path {root} does not exist")
    if not root.is_dir():
        raise ValueError(f"data path {root} is not a folder")
    return root


def _detect_layout(root: Path) -> _Layout:
    for base in (root, root / "chest_xray"):
        train = base / "train"
        if not train.is_dir():
            continue
        names = {p.name.upper() for p in train.iterdir() if p.is_dir()}
        kind = "pediatric" if "PNEUMONIA" in names else "image-folder"
        # A given val folder (the pediatric set's has 16 images) joins train before our split.
        dirs = [train] + ([base / "val"] if (base / "val").is_dir() else [])
        return _Layout(kind, base, {"train": dirs, "test": [base / "test"]})
    raise ValueError(
        f"missing split folder {root / 'train'}: expected an image folder ROOT/{{train,test}}/"
        f"<CLASS>/ or the pediatric chest_xray/{{train,val,test}}/{{NORMAL,PNEUMONIA}}/"
    )


def _list_split(layout: _Layout, split: str, report: DataReport) -> list[_Entry]:
    entries: list[_Entry] = []
    metadata = _read_metadata(layout.root, report) if layout.kind == "image-folder" else {}
    for split_dir in layout.split_dirs[split]:
        if not split_dir.is_dir():
            raise ValueError(f"missing split folder {split_dir}")
        for child in sorted(split_dir.iterdir()):
            if _is_hidden(child.name):
                report.ignored_hidden += 1
                continue
            if not child.is_dir():
                report.skipped.append(
                    {"path": _rel(child, layout.root), "reason": "not inside a class folder"}
                )
                continue
            files = _files_under(child, report)
            if not files:
                raise ValueError(f"empty class folder {child}: it holds no files")
            if layout.kind == "pediatric":
                entries += _pediatric_entries(child, files, layout.root, report)
            else:
                label = class_of_folder(child.name)
                if label is None:
                    raise ValueError(
                        f"unknown class folder {child}; known class folders are {list(CLASSES)} "
                        f"and the aliases {sorted(CLASS_ALIASES)} (case-insensitive)"
                    )
                for f in files:
                    rel = _rel(f, layout.root)
                    entries.append(_Entry(rel, f, label, metadata.get(rel) or _person_id(f.name)))
    return entries


def _files_under(folder: Path, report: DataReport) -> list[Path]:
    files = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not _is_hidden(d))
        for name in sorted(filenames):
            if _is_hidden(name):
                report.ignored_hidden += 1
            else:
                files.append(Path(dirpath) / name)
    return files


def _pediatric_entries(
    folder: Path, files: list[Path], root: Path, report: DataReport
) -> list[_Entry]:
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
            entries.append(_Entry(rel, f, "NORMAL", m.group(1).upper() if m else None))
            continue
        m = _PEDIATRIC_PNEUMONIA_RE.match(f.name)
        if m is None:
            report.skipped.append(
                {
                    "path": rel,
                    "reason": "PNEUMONIA file name does not say bacteria or virus "
                    "(expected person<ID>_bacteria_<N> or person<ID>_virus_<N>)",
                }
            )
            continue
        label = "BACTERIA" if m.group(2).lower() == "bacteria" else "VIRAL"
        entries.append(_Entry(rel, f, label, m.group(1)))
    return entries


def _person_id(name: str) -> str | None:
    m = _PERSON_RE.match(name)
    return m.group(1) if m else None


def _read_metadata(root: Path, report: DataReport) -> dict[str, str]:
    path = root / "metadata.csv"
    if not path.is_file():
        return {}
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        columns = reader.fieldnames or []
        if "path" not in columns or "patient_id" not in columns:
            report.notes.append(
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


# ---------------------------------------------------------------------------- decode cache


def _digest_files(entries: list[_Entry], root: Path) -> list[str]:
    """Content hashes (blake2b-128), reusing a (size, mtime) index so warm loads read no pixels."""
    index_path = cache_root() / "decoded" / "index" / f"{_sha(str(root.resolve()))[:32]}.json"
    try:
        index = json.loads(index_path.read_text())
    except (OSError, ValueError):
        index = {}
    digests, changed = [], False
    for e in entries:
        st = e.path.stat()
        known = index.get(e.rel)
        if known and known[0] == st.st_size and known[1] == st.st_mtime_ns:
            digests.append(known[2])
            continue
        h = hashlib.blake2b(digest_size=16)
        with open(e.path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
        digests.append(h.hexdigest())
        index[e.rel] = [st.st_size, st.st_mtime_ns, digests[-1]]
        changed = True
    if changed:
        atomic_write_text(index_path, json.dumps(index))
    return digests


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _decode_cached(
    entries: list[_Entry], root: Path, image_size: int, resize_mode: str
) -> tuple[np.ndarray, list[int], dict[int, str], int]:
    """(images of the readable entries, their indices, {index: failure}, files decoded now).

    One consolidated .npy per (content hashes, preprocessing); built under a lock, written
    atomically, so concurrent loads decode once and never see a partial file.
    """
    digests = _digest_files(entries, root)
    prep_dir = cache_root() / "decoded" / f"v{PREPROCESS_VERSION}-{image_size}px-{resize_mode}"
    key = _sha("\n".join(digests))[:32]
    array_path, meta_path = prep_dir / f"{key}.npy", prep_dir / f"{key}.json"
    decoded = 0
    with file_lock(prep_dir / f"{key}.lock"):
        if not meta_path.exists():
            decoded = _build_cache(
                entries, digests, prep_dir, array_path, meta_path, image_size, resize_mode
            )
        meta = json.loads(meta_path.read_text())
        images = np.load(array_path)
    rows = {d: i for i, d in enumerate(meta["ok"])}
    kept, failures = [], {}
    for i, d in enumerate(digests):
        if d in rows:
            kept.append(i)
        else:
            failures[i] = meta["failed"][d].replace("{path}", str(entries[i].path))
    index = np.array([rows[digests[i]] for i in kept], dtype=np.int64)
    return images[index], kept, failures, decoded


def _build_cache(
    entries: list[_Entry],
    digests: list[str],
    prep_dir: Path,
    array_path: Path,
    meta_path: Path,
    image_size: int,
    resize_mode: str,
) -> int:
    # Each distinct content once: duplicate files share a row.
    todo = {d: e.path for e, d in zip(entries, digests, strict=True)}
    order = sorted(todo)
    known = _rows_from_other_arrays(prep_dir, set(order))
    missing = [d for d in order if d not in known]

    def work(d: str) -> np.ndarray | str:
        try:
            return _decode(todo[d], image_size, resize_mode)
        except ImageError as err:
            # Stored with a placeholder: the same bytes may sit at another path next time.
            return str(err).replace(str(todo[d]), "{path}", 1)

    # The warning filter is process-wide; set once around the pool, not per thread.
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with ThreadPoolExecutor(_DECODE_THREADS) as pool:
            results = dict(zip(missing, pool.map(work, missing), strict=True))
    for d in order:
        if d in known:
            results[d] = known[d]
    ok = [d for d in order if not isinstance(results[d], str)]
    failed = {d: results[d] for d in order if isinstance(results[d], str)}
    stack = np.zeros((len(ok), image_size, image_size), dtype=np.uint8)
    for i, d in enumerate(ok):
        stack[i] = results[d]
    buf = io.BytesIO()
    np.save(buf, stack)
    atomic_write_bytes(array_path, buf.getbuffer())
    # The metadata is written last: its presence means the array next to it is complete.
    atomic_write_text(meta_path, json.dumps({"ok": ok, "failed": failed}))
    return len(missing)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:  # removed meanwhile by someone cleaning the cache
        return 0.0


def _rows_from_other_arrays(prep_dir: Path, wanted: set[str]) -> dict[str, np.ndarray | str]:
    """Reuse images already decoded for another file list (e.g. train when test is added)."""
    found: dict[str, np.ndarray | str] = {}
    metas = sorted(prep_dir.glob("*.json"), key=_mtime, reverse=True)
    for meta_path in metas[:20]:
        if len(found) == len(wanted):
            break
        try:
            meta = json.loads(meta_path.read_text())
            hits = [(i, d) for i, d in enumerate(meta["ok"]) if d in wanted and d not in found]
            for d, reason in meta["failed"].items():
                if d in wanted:
                    found.setdefault(d, reason)
            if hits:
                array = np.load(meta_path.with_suffix(".npy"), mmap_mode="r")
                for i, d in hits:
                    found[d] = np.array(array[i])
        except (OSError, ValueError, KeyError):
            continue  # another process's half-finished or foreign file: just decode
    return found


# ---------------------------------------------------------------------------- splitting


def _split_train_val(
    labels: np.ndarray, groups: list[str | None], split_seed: int, val_fraction: float
) -> tuple[np.ndarray, np.ndarray, str]:
    """Indices (train, val) and how they were chosen."""
    from sklearn.model_selection import StratifiedGroupKFold, train_test_split

    n = len(labels)
    idx = np.arange(n)
    if any(g is not None for g in groups):
        group_ids = [g if g is not None else f"\0file{i}" for i, g in enumerate(groups)]
        small = min(val_fraction, 1.0 - val_fraction)
        n_splits = max(2, round(1.0 / small))
        n_groups = len(set(group_ids))
        if n_groups < n_splits:
            raise ValueError(
                f"only {n_groups} patients in train; holding out val_fraction={val_fraction} "
                f"by patient needs at least {n_splits}"
            )
        cv = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=split_seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "least populated class" on tiny sets
            fit_idx, held_idx = next(cv.split(idx, labels, group_ids))
        train_idx, val_idx = (fit_idx, held_idx) if val_fraction <= 0.5 else (held_idx, fit_idx)
        how = f"StratifiedGroupKFold(n_splits={n_splits}) by patient"
        return np.sort(train_idx), np.sort(val_idx), how
    try:
        train_idx, val_idx = train_test_split(
            idx, test_size=val_fraction, random_state=split_seed, stratify=labels
        )
    except ValueError as err:
        raise ValueError(
            f"cannot split train stratified with val_fraction={val_fraction}: {err}"
        ) from None
    return np.sort(train_idx), np.sort(val_idx), "stratified shuffle split (no patient ids)"


def _split_hash(train: list[str], val: list[str]) -> str:
    body = json.dumps({"train": sorted(train), "val": sorted(val)}, separators=(",", ":"))
    return _sha(body)


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
    _check_preprocessing(image_size, resize_mode)
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
    layout = _detect_layout(_resolve_root(str(data)))
    report = DataReport(
        str(layout.root), layout.kind, [], image_size=image_size, resize_mode=resize_mode
    )
    if len(layout.split_dirs["train"]) > 1:
        report.notes.append("the given val folder is merged into train before our split")

    train_entries = _list_split(layout, "train", report)
    test_entries = _list_split(layout, "test", report) if include_test else []
    classes = [c for c in CLASSES if any(e.label == c for e in train_entries)]
    report.classes = classes
    if len(classes) < 2:
        raise ValueError(f"train split {layout.root / 'train'} has classes {classes}; need two")
    stray = sorted({e.label for e in test_entries} - set(classes))
    if stray:
        raise ValueError(f"test split has classes {stray} that train does not have ({classes})")

    train_all, decoded = _load_part(train_entries, layout.root, image_size, resize_mode, report)
    test, test_decoded = (None, 0)
    if include_test:
        test, test_decoded = _load_part(test_entries, layout.root, image_size, resize_mode, report)
        _check_readable(test, classes, "test", report)
    _check_readable(train_all, classes, "train", report)
    labels = np.array([classes.index(x) for x in train_all[1]], dtype=np.int64)
    train_idx, val_idx, how = _split_train_val(labels, train_all[3], split_seed, val_fraction)
    report.notes.append(f"validation split: {how}, split_seed={split_seed}")
    train = _make_split(train_all, classes, train_idx)
    val = _make_split(train_all, classes, val_idx)
    test_split = _make_split(test, classes, np.arange(len(test[2]))) if test is not None else None
    for name, split in (("train", train), ("val", val), ("test", test_split)):
        if split is None:
            continue
        report.counts[name] = {c: int((split.labels == i).sum()) for i, c in enumerate(classes)}
    _check_classes_after_split(report, classes)
    report.decoded = decoded + test_decoded
    record = {
        "hash": _split_hash(train.paths, val.paths),
        "train": sorted(train.paths),
        "val": sorted(val.paths),
        "test": sorted(test_split.paths) if test_split is not None else [],
    }
    return Dataset(layout.root, classes, train, val, test_split, report, record, report.decoded)


_Part = tuple[np.ndarray, list[str], list[str], list[str | None]]  # images, labels, paths, groups


def _load_part(
    entries: list[_Entry], root: Path, image_size: int, resize_mode: str, report: DataReport
) -> tuple[_Part, int]:
    if not entries:
        return (np.zeros((0, image_size, image_size), np.uint8), [], [], []), 0
    images, kept, failures, decoded = _decode_cached(entries, root, image_size, resize_mode)
    for i, reason in failures.items():
        report.skipped.append({"path": entries[i].rel, "reason": reason})
    good = [entries[i] for i in kept]
    part = (images, [e.label for e in good], [e.rel for e in good], [e.patient for e in good])
    return part, decoded


def _check_readable(part: _Part, classes: list[str], split: str, report: DataReport) -> None:
    """Refuse a split with no readable images, or (train) a class with none; say why."""
    counts = Counter(part[1])
    empty = [c for c in classes if counts[c] == 0] if split == "train" else []
    if part[2] and not empty:
        return
    skipped = [f"{s['path']}: {s['reason']}" for s in report.skipped]
    why = f"; skipped files include {skipped[:3]}" if skipped else ""
    if not part[2]:
        raise ValueError(f"the {split} split has no readable images{why}")
    raise ValueError(f"class {empty[0]} has no readable images in the {split} split{why}")


def _check_classes_after_split(report: DataReport, classes: list[str]) -> None:
    for split in ("train", "val"):
        for c in classes:
            if report.counts[split][c] == 0:
                raise ValueError(
                    f"class {c} has no images in the {split} split after the validation split "
                    f"(train holds {report.counts['train'][c] + report.counts['val'][c]} {c} "
                    f"images); add images or patients, or change val_fraction"
                )


def _make_split(part: _Part, classes: list[str], idx: np.ndarray) -> Split:
    images, labels, paths, groups = part
    chosen = np.ascontiguousarray(images[idx])
    return Split(
        images=torch.from_numpy(chosen).unsqueeze(1),
        labels=torch.tensor([classes.index(labels[i]) for i in idx], dtype=torch.int64),
        paths=[paths[i] for i in idx],
        patients=[groups[i] if groups[i] is not None else paths[i] for i in idx],
    )


def load_for_config(cfg: Any, include_test: bool = False) -> Dataset:
    """`load_dataset` with the data and preprocessing fields of a `TrialConfig`."""
    return load_dataset(
        cfg.data,
        image_size=cfg.image_size,
        resize_mode=cfg.resize_mode,
        split_seed=cfg.split_seed,
        val_fraction=cfg.val_fraction,
        include_test=include_test,
    )
