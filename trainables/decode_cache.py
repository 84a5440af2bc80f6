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


def _digest_files(entries: list[Entry], root: Path) -> list[str]:
    """Content hashes (blake2b-128), reusing a (size, mtime) index so warm loads read no pixels."""
    index_path = cache_root() / "decoded" / "index" / f"{sha256_hex(str(root.resolve()))[:32]}.json"
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


def decode_cached(
    entries: list[Entry], root: Path, image_size: int, resize_mode: str
) -> tuple[np.ndarray, list[int], dict[int, str], int]:
    """(images of the readable entries, their indices, {index: failure}, files decoded now).

    One consolidated .npy per (content hashes, preprocessing); built under a lock, written
    atomically, so concurrent loads decode once and never see a partial file.
    """
    digests = _digest_files(entries, root)
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
    kept, failures = [], {}
    for i, d in enumerate(digests):
        if d in rows:
            kept.append(i)
        else:
            failures[i] = meta["failed"][d].replace("{path}", str(entries[i].path))
    index = np.array([rows[digests[i]] for i in kept], dtype=np.int64)
    return images[index], kept, failures, decoded


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
