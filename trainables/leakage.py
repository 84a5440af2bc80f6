"""Leakage between splits: patients in two splits, and near-duplicate images across splits.

- Patients: `Split.patients` holds the patient id of each image (from `metadata.csv` or a
  `person<ID>_` file name); a file without one is its own patient (its path), so it is counted
  but can never match another split.
- Near duplicates: a perceptual hash (pHash) of each decoded uint8 image (decoded at
  `HASH_IMAGE_SIZE` px): area-resized to 64 x 64, 2-D DCT-II (scipy.fft.dctn, orthonormal), the
  16 x 16 lowest frequencies, each bit set when its coefficient is above the median of the 255
  non-DC ones (a 256-bit hash; the classic 64-bit pHash cannot tell the phantom's patients
  apart: different patients came within 2 of 64 bits). Two images of different splits whose
  hashes differ in at most `NEAR_DUPLICATE_BITS` of 256 bits are counted, the closest
  `MAX_LISTED` listed. Measured on `phantom:small` at 64 px: a copy with brightness/contrast
  changed, Gaussian noise (sigma 6 grey levels) or resized down to 32 px and back differs in at
  most 20 bits; two images of different patients in different splits in at least 54. The
  search is `trainables.near_duplicates` (multi-index hashing, exact, better than quadratic).

The audit is a property of the data: `leakage_for_config(cfg)` loads the data `cfg` trains on
with its test split, keys the audit by the content of the splits (paths, patients and decoded
pixels of each) and the hash parameters, and keeps the result under
``cache_root()/leakage/<key>.json``, so it runs once per dataset. The driver's pre-flight runs
it and copies the result into the experiment (`LEAKAGE_FILE`, written and read here), where
summary.json and the report read it. The test split is read here for its file list, patient
ids and pixels only, never to score a model.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.fft import dctn

from trainables.cache import atomic_write_text, cache_root, file_lock
from trainables.config import TrialConfig
from trainables.data import DATASET_FIELDS, Dataset, Split, load_for_config
from trainables.near_duplicates import distances, find_close_pairs, pack

HASH_IMAGE_SIZE = 64  # pixels: the decoded size the hash is computed from
HASH_SIDE = 16  # bits per side of the hash: 256 bits
DCT_SIDE = 64  # pixels: the image is area-resized to this before the DCT
NEAR_DUPLICATE_BITS = 32  # of 256: at most this many differing bits is a near duplicate
MAX_LISTED = 200  # pairs listed in full; the count is always complete
HASH_CHUNK = 2048  # images hashed at once: 2048 x 64 x 64 float64 DCT, about 70 MB
SPLITS = ("train", "val", "test")
AUDIT_VERSION = 2  # of the cached audit: its rule and record; another version recomputes
AUDIT_FIELDS = tuple(name for name in DATASET_FIELDS if name != "image_size")
"""The `TrialConfig` fields that decide what is audited (the image size does not: the hash is
computed from a `HASH_IMAGE_SIZE` px decode)."""
LEAKAGE_FILE = "leakage.json"  # in the experiment: the pre-flight's audits
LEAKAGE_FILE_VERSION = 1
PROGRESS_EVERY = 2.0  # seconds between progress lines

Progress = Callable[[str], None]


def perceptual_hash(images: torch.Tensor | np.ndarray) -> np.ndarray:
    """256-bit DCT pHash per image: bool (N, 256) for uint8 images (N, 1, S, S) or (N, S, S)."""
    x = torch.as_tensor(images)
    if x.ndim == 3:
        x = x.unsqueeze(1)
    if x.ndim != 4 or x.shape[1] != 1 or x.dtype != torch.uint8:
        raise ValueError(f"pHash takes uint8 images (N, 1, S, S), got {x.dtype} {tuple(x.shape)}")
    if not len(x):
        return np.zeros((0, HASH_SIDE * HASH_SIDE), dtype=bool)
    small = F.interpolate(x.float(), size=(DCT_SIDE, DCT_SIDE), mode="area")[:, 0].numpy()
    coeffs = dctn(small, type=2, norm="ortho", axes=(1, 2))[:, :HASH_SIDE, :HASH_SIDE]
    flat = coeffs.reshape(len(coeffs), -1)
    median = np.median(flat[:, 1:], axis=1, keepdims=True)  # DC left out: it is brightness
    return flat > median


def hash_images(images: torch.Tensor | np.ndarray, progress: Progress | None = None) -> np.ndarray:
    """`perceptual_hash` of many images, `HASH_CHUNK` at a time (memory stays flat)."""
    out = np.zeros((len(images), HASH_SIDE * HASH_SIDE), dtype=bool)
    last = time.monotonic()
    for start in range(0, len(images), HASH_CHUNK):
        out[start : start + HASH_CHUNK] = perceptual_hash(images[start : start + HASH_CHUNK])
        if progress is not None and time.monotonic() - last >= PROGRESS_EVERY:
            last = time.monotonic()
            progress(f"hashed {min(start + HASH_CHUNK, len(images)):,} of {len(images):,} images")
    return out


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Differing bits between every hash of `a` (Na, 256) and of `b` (Nb, 256): int (Na, Nb)."""
    return distances(pack(a), pack(b).T.copy()).astype(np.int32)


def _splits(dataset: Dataset) -> dict[str, Split]:
    parts = {"train": dataset.train, "val": dataset.val, "test": dataset.test}
    return {name: split for name, split in parts.items() if split is not None}


def patient_overlap(splits: dict[str, Split]) -> dict[str, Any]:
    """Patients per split (with and without an id) and every patient id found in two splits."""
    where: dict[str, set[str]] = {}
    counts = {}
    for name, split in splits.items():
        ids = {p for p, path in zip(split.patients, split.paths, strict=True) if p != path}
        counts[name] = {
            "images": len(split),
            "patients": len(ids),
            "images_without_patient_id": sum(
                p == path for p, path in zip(split.patients, split.paths, strict=True)
            ),
        }
        for pid in ids:
            where.setdefault(pid, set()).add(name)
    shared = [
        {"patient": pid, "splits": [s for s in SPLITS if s in names]}
        for pid, names in sorted(where.items())
        if len(names) > 1
    ]
    return {"per_split": counts, "in_two_splits": shared}


def near_duplicates(
    splits: dict[str, Split],
    max_bits: int = NEAR_DUPLICATE_BITS,
    progress: Progress | None = None,
    method: str = "auto",
) -> dict[str, Any]:
    """Image pairs of two different splits within `max_bits` of each other: their count and
    the closest `MAX_LISTED`, ordered by (bits, a's split in train/val/test order, a, b)."""
    names = [s for s in SPLITS if s in splits]
    paths, groups, hashes = [], [], []
    for g, name in enumerate(names):
        split = splits[name]
        order = np.argsort(np.array(split.paths, dtype=object), kind="stable")
        hashes.append(hash_images(split.images, progress)[order])
        paths += [split.paths[i] for i in order]
        groups.append(np.full(len(order), g, dtype=np.int64))
    bits = np.concatenate(hashes) if hashes else np.zeros((0, HASH_SIDE**2), bool)
    group = np.concatenate(groups) if groups else np.zeros(0, np.int64)

    def searching(fraction: float, text: str) -> None:
        if progress is not None:
            progress(f"searching {fraction:.0%} ({text})")

    found = find_close_pairs(bits, group, max_bits, MAX_LISTED, searching, method)
    pairs = [
        {"a_split": names[group[i]], "a": paths[i], "b_split": names[group[j]], "b": paths[j],
         "bits": int(b)}
        for i, j, b in found.pairs.tolist()
    ]  # fmt: skip
    return {
        "count": found.count,
        "pairs": pairs,
        "pairs_checked": found.checked,
        "method": found.method,
    }


def leakage_report(
    dataset: Dataset, max_bits: int = NEAR_DUPLICATE_BITS, progress: Progress | None = None
) -> dict[str, Any]:
    """summary.json's `leakage` record for a loaded dataset (pass one loaded with its test)."""
    splits = _splits(dataset)
    patients = patient_overlap(splits)
    started = time.monotonic()
    duplicates = near_duplicates(splits, max_bits, progress)
    return {
        "splits": [s for s in SPLITS if s in splits],
        "patients": patients["per_split"],
        "patients_in_two_splits": patients["in_two_splits"],
        "near_duplicates": duplicates["pairs"],
        "near_duplicate_count": duplicates["count"],
        "pairs_checked": duplicates["pairs_checked"],
        "search": duplicates["method"],
        "seconds": round(time.monotonic() - started, 1),
        "rule": (
            f"pHash: the decoded {dataset.train.images.shape[-1]} px image area-resized to "
            f"{DCT_SIDE}x{DCT_SIDE}, 2-D DCT-II, the {HASH_SIDE}x{HASH_SIDE} lowest frequencies "
            f"above their median (DC excluded); near duplicate = at most {max_bits} of "
            f"{HASH_SIDE * HASH_SIDE} bits differ, between two splits"
        ),
        "max_bits": max_bits,
    }


def audit_settings(cfg: TrialConfig) -> dict[str, Any]:
    """The `AUDIT_FIELDS` of `cfg`: which audit in `LEAKAGE_FILE` belongs to a config."""
    return {name: getattr(cfg, name) for name in AUDIT_FIELDS}


def audit_key(splits: dict[str, Split], max_bits: int) -> str:
    """The cache key of an audit: the hash parameters and, per split, its paths, patients and
    decoded pixels (blake2b, reading the images in place)."""
    h = hashlib.blake2b(digest_size=16)
    rule = [AUDIT_VERSION, HASH_IMAGE_SIZE, DCT_SIDE, HASH_SIDE, max_bits, MAX_LISTED]
    h.update(json.dumps(rule).encode())
    for name in SPLITS:
        if name in splits:
            split = splits[name]
            h.update(json.dumps([name, split.paths, split.patients]).encode())
            h.update(np.ascontiguousarray(split.images.numpy()).data)
    return h.hexdigest()


def leakage_for_config(
    cfg: TrialConfig, max_bits: int = NEAR_DUPLICATE_BITS, progress: Progress | None = None
) -> dict[str, Any]:
    """The audit of the data `cfg` trains on, test split included, decoded at
    `HASH_IMAGE_SIZE` px (the split does not depend on the image size): read from the cache
    when this content was audited before, else computed (with `progress` lines) and cached.
    The record says which (`from_cache`) and carries `audit_settings(cfg)`."""
    dataset = load_for_config(replace(cfg, image_size=HASH_IMAGE_SIZE), include_test=True)
    key = audit_key(_splits(dataset), max_bits)
    path = cache_root() / "leakage" / f"{key}.json"
    with file_lock(path.with_suffix(".lock")):
        record, from_cache = _read_cached(path), True
        if record is None:
            record, from_cache = {**leakage_report(dataset, max_bits, progress), "key": key}, False
            atomic_write_text(path, json.dumps({"version": AUDIT_VERSION, **record}))
    return {**record, "settings": audit_settings(cfg), "from_cache": from_cache}


def _read_cached(path: Path) -> dict[str, Any] | None:
    """A cached audit, or None when absent, unreadable or of another version (recomputed)."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.pop("version", None) != AUDIT_VERSION:
        return None
    return record


def describe_audit(audit: dict[str, Any]) -> str:
    """The console line for an audit (the pre-flight's and the summary's)."""
    if "error" in audit:
        return f"leakage: not checked ({audit['error']})"
    how = "from the cache" if audit.get("from_cache") else f"{audit.get('seconds', 0):.1f} s"
    return (
        f"leakage: {len(audit['patients_in_two_splits'])} patients in two splits, "
        f"{audit['near_duplicate_count']:,} near-duplicate image pairs across splits "
        f"(of {audit['pairs_checked']:,} pairs; {how})"
    )


def leakage_file_text(audits: list[dict[str, Any]]) -> str:
    """`LEAKAGE_FILE`'s text: the pre-flight's audits (one per `audit_settings`)."""
    return json.dumps({"version": LEAKAGE_FILE_VERSION, "audits": audits}, indent=1) + "\n"


def parse_leakage_file(text: str, where: str = LEAKAGE_FILE) -> list[dict[str, Any]]:
    """The audits in `LEAKAGE_FILE`'s text; ValueError naming `where` when it is not one."""
    try:
        values = json.loads(text)
    except ValueError as err:
        raise ValueError(f"{where}: not JSON ({err})") from err
    if not isinstance(values, dict) or values.get("version") != LEAKAGE_FILE_VERSION:
        raise ValueError(f"{where}: expected version {LEAKAGE_FILE_VERSION} with 'audits'")
    audits = values.get("audits")
    if not isinstance(audits, list) or not all(isinstance(a, dict) for a in audits):
        raise ValueError(f"{where}: 'audits' must be a list of records")
    return audits


def find_audit(audits: list[dict[str, Any]], cfg: TrialConfig) -> dict[str, Any] | None:
    """The audit of `cfg`'s data among `audits` (matched by `audit_settings`), or None."""
    settings = audit_settings(cfg)
    return next((a for a in audits if a.get("settings") == settings), None)
