"""The decode cache: every image decoded once per node and preprocessing, mapped by every trial.

Layout under ``cache_root()/decoded/v<PREPROCESS_VERSION>-<size>px-<mode>/`` (this module is
the one owner of these files):

- ``arrays/<key>.npy``: one split's images, uint8 (N, S, S), rows in the split's order, keyed by
  the rows' content hashes (blake2b); ``arrays/<key>.json`` beside it lists those hashes and is
  written after the array is complete, so an array without it is never read.
- ``views/<id>.json``: one dataset setting (the listing's paths, labels, patients and content
  hashes, the preprocessing, the split settings): per split the array it maps and the listing
  indices of its rows, the files that failed to decode and why, and how the validation split was
  chosen. A warm load reads this and maps the arrays: no PIL, no split computed again.
- ``views/<id>.npz``: the view's record for trials (`save_record`, written by
  `trainables.mapped`): labels, paths and patients per split and the data report, so a trial
  maps its splits without listing the files or holding a Python object per image.

Every process (the driver's pre-flight, each trial, the report) maps the arrays read-only
(``numpy.load(mmap_mode="r")``): the pages live once in the node's page cache, so a trial's
private memory does not grow with the dataset. A build streams decoded images into a temporary
pool file, then each split's rows into its own temporary array (no image list, no stacked
copy in memory), fsyncs and renames them, then writes the markers and the view last; a build that
is killed leaves only temporary files, which no load reads and `prune` removes. Publishing a view
replaces the older views of the same dataset setting (same root, preprocessing, split settings)
and deletes the arrays no view maps any more, so versions do not accumulate.

A (size, mtime) index per data root under ``decoded/index/`` spares re-hashing unchanged files.
The cache is node-local: each node of a cluster builds its own once (the first trial there, under
a file lock; the others wait and map it), never once per trial.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import os
import secrets
import shutil
import stat
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from trainables.cache import atomic_write_text, cache_root, file_lock
from trainables.layouts import Entry
from trainables.preprocess import PREPROCESS_VERSION, ImageError, decode_image

FORMAT_VERSION = 2  # of views/*.json and arrays/*.json
_DECODE_THREADS = min(8, os.cpu_count() or 1)  # PIL releases the GIL while decoding
_DECODE_CHUNK = 256  # images decoded per batch of thread work, then streamed to the pool file
_COPY_CHUNK = 1024  # rows gathered per write when a split's array is written
_REUSE_SCAN = 20  # most recent arrays searched for rows already decoded


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def decoded_root() -> Path:
    return cache_root() / "decoded"


def prep_dir(image_size: int, resize_mode: str) -> Path:
    return decoded_root() / f"v{PREPROCESS_VERSION}-{image_size}px-{resize_mode}"


# ---------------------------------------------------------------------------- records


@dataclass
class CachedSplit:
    part: str
    """The listing part its rows come from ('train', a manifest's 'val', 'test')."""
    index: list[int]
    """Row i is entry `index[i]` of that part."""
    images: np.ndarray
    """uint8 (N, S, S), memory-mapped read-only."""
    path: Path | None
    """The array file (None for an empty split)."""


@dataclass
class Cached:
    splits: dict[str, CachedSplit]
    failures: dict[str, dict[int, str]]
    """part -> entry index -> why it was skipped."""
    notes: list[str]
    decoded: int
    """Files decoded by PIL in this load (0 when the view was there)."""
    view: Path


SplitPlan = Callable[
    [dict[str, list[int]], dict[str, dict[int, str]]],
    tuple[dict[str, tuple[str, list[int]]], list[str]],
]
"""(readable entry indices per part, failures per part) -> ({split: (part, entry indices)},
notes). Raises ValueError for data no trial could train on; then nothing is published."""


# ---------------------------------------------------------------------------- content hashes


def _digest_files(entries: list[Entry], root: Path) -> tuple[list[str | None], dict[int, str]]:
    """Content hashes (blake2b-128), reusing a (size, mtime) index so warm loads read no pixels.

    A file that cannot be read now (vanished since listing, permission denied, a FIFO) gets no
    hash and a reason instead: it is skipped, never a crash."""
    index_path = decoded_root() / "index" / f"{sha256_hex(str(root.resolve()))[:32]}.json"
    try:
        index = json.loads(index_path.read_text())
    except (OSError, ValueError):
        index = {}
    digests: list[str | None] = []
    failures: dict[int, str] = {}
    changed = False
    for i, e in enumerate(entries):
        try:
            digest, record = _digest_one(e, index.get(e.rel))
        except OSError as err:
            digests.append(None)
            failures[i] = _unreadable(e.path, err)
            continue
        digests.append(digest)
        if record is not None:
            index[e.rel], changed = record, True
    if changed:
        atomic_write_text(index_path, json.dumps(index))
    return digests, failures


def _digest_one(e: Entry, known: list | None) -> tuple[str, list | None]:
    """(hash, new index record or None when the index already knew it)."""
    st = e.path.stat()
    if not stat.S_ISREG(st.st_mode):  # a FIFO would block open() forever
        raise OSError(f"{e.path} is not a regular file")
    if known and known[0] == st.st_size and known[1] == st.st_mtime_ns:
        return known[2], None
    h = hashlib.blake2b(digest_size=16)
    with open(e.path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest(), [st.st_size, st.st_mtime_ns, h.hexdigest()]


def _unreadable(path: Path, err: OSError) -> str:
    if isinstance(err, FileNotFoundError):
        return f"{path}: vanished after listing (or a dangling symlink)"
    if isinstance(err, PermissionError):
        return f"{path}: permission denied: not readable by this user"
    return f"{path}: cannot be read ({err})"


# ---------------------------------------------------------------------------- load or build


def load_or_build(
    parts: dict[str, list[Entry]],
    root: Path,
    image_size: int,
    resize_mode: str,
    settings: dict[str, Any],
    plan: SplitPlan,
) -> Cached:
    """The dataset setting's splits, memory-mapped: from its view when one exists, else decoded
    (each distinct file once, rows already decoded for another listing reused), split by `plan`
    and published. Concurrent loads of one setting build it once (a file lock)."""
    digests, unreadable = {}, {}
    for part, entries in parts.items():
        digests[part], unreadable[part] = _digest_files(entries, root)
    identity = {
        "root": str(root),
        "preprocess": [PREPROCESS_VERSION, image_size, resize_mode],
        "settings": settings,
        "parts": sorted(parts),
    }
    listing = {
        part: [
            [e.rel, e.label, e.patient, None if e.codes is None else list(e.codes), d]
            for e, d in zip(entries, digests[part], strict=True)
        ]
        for part, entries in parts.items()
    }
    view_id = sha256_hex(json.dumps([identity, listing], sort_keys=True))[:32]
    where = prep_dir(image_size, resize_mode)
    with file_lock(where / "locks" / f"{view_id}.lock"):  # one build per setting per node
        found = _open_view(where, view_id)
        decoded = 0
        if found is None:
            decoded = _build(where, view_id, identity, parts, digests, unreadable, plan)
            found = _open_view(where, view_id)
            if found is None:
                raise RuntimeError(f"decode cache {where}: view {view_id} vanished after writing")
    view, splits = found
    failures = {p: dict(unreadable[p]) for p in parts}
    for part, rows in view["failed"].items():
        for i, reason in rows.items():
            failures[part][int(i)] = reason.replace("{path}", str(parts[part][int(i)].path))
    return Cached(splits, failures, list(view["notes"]), decoded, where / "views" / view_id)


def _open_view(where: Path, view_id: str) -> tuple[dict, dict[str, CachedSplit]] | None:
    """The view and its arrays mapped, or None when it is missing or incomplete. Under the
    directory's lock, so `_publish` never deletes an array between the read and the map."""
    path = where / "views" / f"{view_id}.json"
    with file_lock(where / "locks" / "publish.lock"):
        try:
            view = json.loads(path.read_text())
            if view.get("version") != FORMAT_VERSION:
                return None
            splits = {
                name: CachedSplit(s["part"], s["index"], *_map(where, s["array"], len(s["index"])))
                for name, s in view["splits"].items()
            }
        except (OSError, ValueError, KeyError):
            return None  # absent, or an array gone: build again
        os.utime(path)  # "last used", for `cxr-tune cache list` and `prune --older-than`
    return view, splits


def _map(where: Path, key: str | None, rows: int) -> tuple[np.ndarray, Path | None]:
    if key is None:
        return np.zeros((0, 0, 0), np.uint8), None
    path = where / "arrays" / f"{key}.npy"
    if not path.with_suffix(".json").is_file():
        raise OSError(f"{path} has no marker")
    images = np.load(path, mmap_mode="r")
    if images.shape[0] != rows:
        raise ValueError(f"{path} holds {images.shape[0]} rows, the view {rows}")
    return images, path


def _build(
    where: Path,
    view_id: str,
    identity: dict,
    parts: dict[str, list[Entry]],
    digests: dict[str, list[str | None]],
    unreadable: dict[str, dict[int, str]],
    plan: SplitPlan,
) -> int:
    """Decode, split and write one view; returns the files decoded by PIL."""
    size = identity["preprocess"][1]
    wanted = {
        d: e.path for p in parts for e, d in zip(parts[p], digests[p], strict=True) if d is not None
    }
    with _Sources(where, size, wanted) as sources:
        decoded = sources.decode_missing(identity["preprocess"][2])
        failures = {p: dict(unreadable[p]) for p in parts}
        failed_here: dict[str, dict[str, str]] = {p: {} for p in parts}
        readable: dict[str, list[int]] = {}
        for p, ds in digests.items():
            readable[p] = []
            for i, d in enumerate(ds):
                if d is None:
                    continue
                if d in sources.failed:
                    failures[p][i] = sources.failed[d].replace("{path}", str(parts[p][i].path))
                    failed_here[p][str(i)] = sources.failed[d]
                else:
                    readable[p].append(i)
        splits, notes = plan(readable, failures)
        written = {
            name: (part, index, sources.write_split([digests[part][i] for i in index]))
            for name, (part, index) in splits.items()
        }
        view = {
            "version": FORMAT_VERSION,
            "identity": sha256_hex(json.dumps(identity, sort_keys=True))[:32],
            "dataset": identity,
            "splits": {
                n: {"part": p, "index": [int(i) for i in idx], "array": a.key if a else None}
                for n, (p, idx, a) in written.items()
            },
            "failed": failed_here,
            "notes": notes,
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        }
        arrays = [a for _, _, a in written.values() if a]
        _publish(where, view_id, view, arrays, sources.failed)
    return decoded


@dataclass
class _Written:
    key: str
    path: Path
    """The complete temporary file (renamed over an identical array if one exists)."""
    rows: list[str]
    """Content hash of each row."""


class _Sources:
    """Where each wanted content hash's pixels are: rows of arrays already in the cache (read
    with pread, never mapped into the driver), or a temporary pool file this build decodes into."""

    def __init__(self, where: Path, size: int, wanted: dict[str, Path]) -> None:
        self.where, self.size, self.wanted = where, size, wanted
        self.row_bytes = size * size
        self.rows: dict[str, tuple[int, int]] = {}  # hash -> (fd, byte offset)
        self.failed: dict[str, str] = {}  # hash -> reason with a {path} placeholder
        self.fds: list[int] = []
        self.temps: list[Path] = []

    def __enter__(self) -> _Sources:
        self._reuse()
        return self

    def __exit__(self, *exc: object) -> None:
        for fd in self.fds:
            os.close(fd)
        for tmp in self.temps:
            tmp.unlink(missing_ok=True)

    def temp(self, name: str) -> Path:
        """A temporary file named so `prune` can tell whether its build still runs (the pid)."""
        path = self.where / "arrays" / f".{name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
        path.parent.mkdir(parents=True, exist_ok=True)
        self.temps.append(path)
        return path

    def _reuse(self) -> None:
        """Rows already decoded for another listing (e.g. train when test is added)."""
        markers = sorted((self.where / "arrays").glob("*.json"), key=_mtime, reverse=True)
        for marker in markers[:_REUSE_SCAN]:
            if len(self.rows) + len(self.failed) == len(self.wanted):
                return
            try:
                record = json.loads(marker.read_text())
                for d, reason in record.get("failed", {}).items():
                    if d in self.wanted:
                        self.failed.setdefault(d, reason)
                hits = [(i, d) for i, d in enumerate(record["rows"]) if d in self.wanted]
                hits = [(i, d) for i, d in hits if d not in self.rows]
                if not hits:
                    continue
                fd = os.open(marker.with_suffix(".npy"), os.O_RDONLY)
            except (OSError, ValueError, KeyError):
                continue  # removed meanwhile, or foreign: decode instead
            self.fds.append(fd)
            start = _data_offset(fd)
            for i, d in hits:
                self.rows[d] = (fd, start + i * self.row_bytes)

    def decode_missing(self, resize_mode: str) -> int:
        """Decode every wanted hash not found, streaming the images into the pool file."""
        missing = sorted(d for d in self.wanted if d not in self.rows and d not in self.failed)
        if not missing:
            return 0
        pool = self.temp("pool")
        fd = os.open(pool, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        self.fds.append(fd)

        def work(d: str) -> np.ndarray | str:
            try:
                return decode_image(self.wanted[d], self.size, resize_mode)
            except ImageError as err:
                # Stored with a placeholder: the same bytes may sit at another path next time.
                return str(err).replace(str(self.wanted[d]), "{path}", 1)

        written = 0
        # The warning filter is process-wide; set once around the pool, not per thread.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with ThreadPoolExecutor(_DECODE_THREADS) as threads:
                for start in range(0, len(missing), _DECODE_CHUNK):
                    chunk = missing[start : start + _DECODE_CHUNK]
                    for d, out in zip(chunk, threads.map(work, chunk), strict=True):
                        if isinstance(out, str):
                            self.failed[d] = out
                            continue
                        offset = written * self.row_bytes
                        os.pwrite(fd, np.ascontiguousarray(out, np.uint8).tobytes(), offset)
                        self.rows[d] = (fd, offset)
                        written += 1
        return len(missing)

    def write_split(self, row_digests: Sequence[str]) -> _Written | None:
        """One split's array as a complete temporary file; None for an empty split."""
        if not row_digests:
            return None
        key = sha256_hex("\n".join(row_digests))[:32]
        tmp = self.temp(key)
        header = {
            "descr": "|u1",
            "fortran_order": False,
            "shape": (len(row_digests),) + (self.size, self.size),
        }
        with open(tmp, "wb") as fh:
            np.lib.format.write_array_header_1_0(fh, header)
            for chunk in _chunks(row_digests, _COPY_CHUNK):
                fh.write(b"".join(os.pread(*self._at(d)) for d in chunk))
            fh.flush()
            os.fsync(fh.fileno())
        return _Written(key, tmp, list(row_digests))

    def _at(self, d: str) -> tuple[int, int, int]:
        fd, offset = self.rows[d]
        return fd, self.row_bytes, offset


def _chunks(items: Sequence[str], n: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), n):
        yield items[start : start + n]


def _data_offset(fd: int) -> int:
    """Where an .npy file's data starts (after its magic and header)."""
    with os.fdopen(os.dup(fd), "rb") as fh:
        version = np.lib.format.read_magic(fh)
        read = {
            (1, 0): np.lib.format.read_array_header_1_0,
            (2, 0): np.lib.format.read_array_header_2_0,
        }
        if version not in read:
            raise ValueError(f"unsupported .npy version {version}")
        read[version](fh)
        return fh.tell()


def _publish(
    where: Path, view_id: str, view: dict, arrays: list[_Written], failed: dict[str, str]
) -> None:
    """Rename the arrays into place, write their markers, then the view (its presence means
    everything it names is complete), then drop this setting's older views and unused arrays."""
    with file_lock(where / "locks" / "publish.lock"):
        for a in arrays:
            final = where / "arrays" / f"{a.key}.npy"
            os.replace(a.path, final)  # a process mapping an identical older file keeps its own
            marker = {"version": FORMAT_VERSION, "rows": a.rows, "failed": failed}
            atomic_write_text(final.with_suffix(".json"), json.dumps(marker))
        atomic_write_text(where / "views" / f"{view_id}.json", json.dumps(view))
        for other in (where / "views").glob("*.json"):
            if other.stem != view_id and _read(other).get("identity") == view["identity"]:
                _drop_view(other)  # a stale version of this same setting
        _drop_unmapped(where)


def _drop_view(view_json: Path) -> None:
    view_json.unlink(missing_ok=True)
    view_json.with_suffix(RECORD_SUFFIX).unlink(missing_ok=True)


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _drop_unmapped(where: Path) -> int:
    """Delete the arrays no view maps and the records of views gone; returns the bytes freed."""
    for record in (where / "views").glob(f"*{RECORD_SUFFIX}"):
        if not record.with_suffix(".json").is_file():
            record.unlink(missing_ok=True)
    used = {
        s.get("array")
        for v in (where / "views").glob("*.json")
        for s in _read(v).get("splits", {}).values()
    }
    freed = 0
    for array in (where / "arrays").glob("*.npy"):
        if array.stem not in used:
            freed += _size(array)
            array.with_suffix(".json").unlink(missing_ok=True)  # the marker first
            array.unlink(missing_ok=True)
    return freed


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:  # removed meanwhile by someone cleaning the cache
        return 0.0


# ---------------------------------------------------------------------------- trials' records

RECORD_SUFFIX = ".npz"


@dataclass
class Record:
    """What a trial needs beside the pixels, stored with the view (`save_record`)."""

    meta: dict[str, Any]
    columns: Any
    """`numpy.load`'s NpzFile: a column is read from disk on first use."""
    images: dict[str, np.ndarray]
    """split -> uint8 (N, S, S), memory-mapped read-only."""


def save_record(
    view: Path, build: Callable[[], tuple[dict[str, Any], dict[str, np.ndarray]]]
) -> None:
    """Store `build()`'s meta (JSON) and per-row columns as ``views/<id>.npz`` beside the view,
    so a trial can map its splits without listing the files (`trainables.mapped`). The view's
    content decides them, so a record is built once (the first writer's stands) and a view gone
    meanwhile gets none."""
    path = view.with_suffix(RECORD_SUFFIX)
    if path.is_file():
        return
    meta, columns = build()
    splits = _read(view.with_suffix(".json")).get("splits", {})
    arrays = {n: [s["array"], len(s["index"])] for n, s in splits.items()}
    body = json.dumps({"version": FORMAT_VERSION, "arrays": arrays, "meta": meta})
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, record=np.array(body), **columns)
            fh.flush()
            os.fsync(fh.fileno())
        with file_lock(view.parent.parent / "locks" / "publish.lock"):
            if view.with_suffix(".json").is_file():
                os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def open_record(view: Path) -> Record | None:
    """A view's record with its splits mapped, or None when the view, its record or an array
    is gone (load the full way again). Under the directory's lock, like `_open_view`."""
    where = view.parent.parent
    with file_lock(where / "locks" / "publish.lock"):
        try:
            if not view.with_suffix(".json").is_file():
                return None
            columns = np.load(view.with_suffix(RECORD_SUFFIX), allow_pickle=False)
            body = json.loads(str(columns["record"]))
            if body.get("version") != FORMAT_VERSION:
                return None
            images = {n: _map(where, key, rows)[0] for n, (key, rows) in body["arrays"].items()}
        except (OSError, ValueError, KeyError):
            return None
        os.utime(view.with_suffix(".json"))
    return Record(body["meta"], columns, images)


# ---------------------------------------------------------------------------- list and prune


@dataclass
class CacheEntry:
    """One cached dataset setting, as `cxr-tune cache list` shows it."""

    view: Path
    root: str
    image_size: int
    resize_mode: str
    settings: dict[str, Any]
    images: dict[str, int]
    """split -> rows."""
    bytes: int
    """Of the arrays it maps (an array shared by two settings counts in both)."""
    last_used: float
    """Unix time of the last load."""

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "view": str(self.view)}


def list_caches() -> list[CacheEntry]:
    """Every complete dataset setting in the cache, most recently used first."""
    out = []
    for where in sorted(decoded_root().glob("v*-*px-*")):
        for path in (where / "views").glob("*.json"):
            view = _read(path)
            if view.get("version") != FORMAT_VERSION:
                continue
            splits = view.get("splits", {})
            arrays = {s["array"] for s in splits.values() if s.get("array")}
            _, size, mode = view["dataset"]["preprocess"]
            out.append(
                CacheEntry(
                    view=path,
                    root=view["dataset"]["root"],
                    image_size=size,
                    resize_mode=mode,
                    settings=view["dataset"]["settings"],
                    images={n: len(s["index"]) for n, s in splits.items()},
                    bytes=sum(_size(where / "arrays" / f"{a}.npy") for a in arrays),
                    last_used=_mtime(path),
                )
            )
    return sorted(out, key=lambda e: -e.last_used)


def cache_bytes() -> int:
    """Bytes of everything under the decode cache (arrays, views, temporary files, indexes)."""
    return sum(_size(p) for p in decoded_root().rglob("*") if p.is_file())


def prune(older_than_days: float | None = None, everything: bool = False) -> tuple[int, int]:
    """(files removed, bytes freed). Always: temporary files of builds no longer running,
    arrays without a marker or that no view maps, other format or preprocessing versions.
    `older_than_days`: also the settings not loaded for that long; `everything`: all of it."""
    root = decoded_root()
    if not root.is_dir():
        return 0, 0
    before_files = sum(1 for p in root.rglob("*") if p.is_file())
    before_bytes = cache_bytes()
    if everything:
        shutil.rmtree(root, ignore_errors=True)
    else:
        for item in root.iterdir():
            if item.name == "index":
                continue
            if not item.is_dir() or not item.name.startswith(f"v{PREPROCESS_VERSION}-"):
                _remove(item)  # another preprocessing version or the earlier file format
                continue
            _prune_dir(item, older_than_days)
    after_files = sum(1 for p in root.rglob("*") if p.is_file()) if root.is_dir() else 0
    return before_files - after_files, before_bytes - (cache_bytes() if root.is_dir() else 0)


def _prune_dir(where: Path, older_than_days: float | None) -> None:
    with file_lock(where / "locks" / "publish.lock"):
        for item in where.iterdir():
            if item.name not in ("arrays", "views", "locks"):
                _remove(item)  # the earlier format's <key>.npy/.json beside the folders
        cutoff = None if older_than_days is None else time.time() - older_than_days * 86400
        for view in (where / "views").glob("*.json"):
            if _read(view).get("version") != FORMAT_VERSION or (
                cutoff is not None and _mtime(view) < cutoff
            ):
                _drop_view(view)
        temps = [*(where / "arrays").glob(".*.tmp-*"), *(where / "views").glob(".*.tmp-*")]
        for item in temps:
            if not _builder_alive(item):
                item.unlink(missing_ok=True)
        for array in (where / "arrays").glob("*.npy"):
            if not array.with_suffix(".json").is_file():
                array.unlink(missing_ok=True)  # its build was killed before the marker
        _drop_unmapped(where)


def _builder_alive(temp: Path) -> bool:
    """Whether the process named in a temporary file's name (…tmp-<pid>-<random>) still runs."""
    try:
        pid = int(temp.name.rsplit("-", 2)[1])
        os.kill(pid, 0)
    except (ValueError, IndexError, ProcessLookupError):
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _remove(item: Path) -> None:
    if item.is_dir():
        shutil.rmtree(item, ignore_errors=True)
    else:
        item.unlink(missing_ok=True)


def format_size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def main(argv: Sequence[str] | None = None) -> int:
    from trainables.cli import cache_parser

    args = cache_parser().parse_args(argv)
    if args.action == "list":
        entries = list_caches()
        print(f"decode cache {decoded_root()}: {format_size(cache_bytes())} on disk")
        for e in entries:
            used = dt.datetime.fromtimestamp(e.last_used, dt.timezone.utc)
            images = ", ".join(f"{n} {k}" for k, n in e.images.items())
            settings = ", ".join(f"{k}={v!r}" for k, v in e.settings.items())
            print(
                f"  {e.root} | {e.image_size} px {e.resize_mode} | {images} | {settings} | "
                f"{format_size(e.bytes)} | last used {used:%Y-%m-%d %H:%M} UTC"
            )
        if not entries:
            print("  (no cached datasets)")
        return 0
    if args.older_than is not None and args.older_than < 0:
        print(f"error: --older-than must be >= 0 days, got {args.older_than}", file=sys.stderr)
        return 2
    files, freed = prune(args.older_than, args.all)
    print(f"pruned {files} file(s), {format_size(freed)} freed under {decoded_root()}")
    return 0
