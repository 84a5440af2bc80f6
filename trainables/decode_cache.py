"""The decode cache: every image is decoded once per preprocessing setting, on any machine.

A consolidated ``.npy`` array per (file contents, preprocessing) lives under
``cache_root()/decoded/v<PREPROCESS_VERSION>-<size>px-<mode>/<key>.{npy,json}``, keyed by the
files' content hashes (blake2b), so the second load (and every epoch) never calls PIL. A
(size, mtime) index per data root under ``decoded/index/`` spares re-hashing unchanged files.
Arrays are built under a file lock and written atomically; the ``.json`` beside an array is
written last, so its presence means the array is complete.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from trainables.cache import atomic_write_bytes, atomic_write_text, cache_root, file_lock
from trainables.layouts import Entry
from trainables.preprocess import PREPROCESS_VERSION, ImageError, decode_image

_DECODE_THREADS = min(8, os.cpu_count() or 1)  # PIL releases the GIL while decoding


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _digest_files(entries: list[Entry], root: Path) -> tuple[list[str | None], dict[int, str]]:
    """Content hashes (blake2b-128), reusing a (size, mtime) index so warm loads read no pixels.

    A file that cannot be read now (vanished since listing, permission denied, a FIFO) gets no
    hash and a reason instead: it is skipped, never a crash."""
    index_path = cache_root() / "decoded" / "index" / f"{sha256_hex(str(root.resolve()))[:32]}.json"
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


def decode_cached(
    entries: list[Entry], root: Path, image_size: int, resize_mode: str
) -> tuple[np.ndarray, list[int], dict[int, str], int]:
    """(images of the readable entries, their indices, {index: failure}, files decoded now).

    One consolidated .npy per (content hashes, preprocessing); built under a lock, written
    atomically, so concurrent loads decode once and never see a partial file.
    """
    all_digests, unreadable = _digest_files(entries, root)
    readable = [i for i, d in enumerate(all_digests) if d is not None]
    entries = [entries[i] for i in readable]
    digests = [all_digests[i] for i in readable]
    prep_dir = cache_root() / "decoded" / f"v{PREPROCESS_VERSION}-{image_size}px-{resize_mode}"
    key = sha256_hex("\n".join(digests))[:32]
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
    kept, failures, index = [], dict(unreadable), []
    for j, d in enumerate(digests):  # j indexes the readable entries, readable[j] the caller's
        if d in rows:
            kept.append(readable[j])
            index.append(rows[d])
        else:
            failures[readable[j]] = meta["failed"][d].replace("{path}", str(entries[j].path))
    return images[np.array(index, dtype=np.int64)], kept, failures, decoded


def _build_cache(
    entries: list[Entry],
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
            return decode_image(todo[d], image_size, resize_mode)
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
