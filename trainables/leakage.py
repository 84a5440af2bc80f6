"""Leakage between splits: patients in two splits, and near-duplicate images across splits.

- Patients: `Split.patients` holds the patient id of each image (from `metadata.csv` or a
  `person<ID>_` file name); a file without one is its own patient (its path), so it is counted
  but can never match another split.
- Near duplicates: a perceptual hash (pHash) of each decoded uint8 image (decoded at
  `HASH_IMAGE_SIZE` px): area-resized to 64 x 64, 2-D DCT-II (scipy.fft.dctn, orthonormal), the
  16 x 16 lowest frequencies, each bit set when its coefficient is above the median of the 255
  non-DC ones (a 256-bit hash; the classic 64-bit pHash cannot tell the phantom's patients
  apart: different patients came within 2 of 64 bits). Two images of different splits whose
  hashes differ in at most `NEAR_DUPLICATE_BITS` of 256 bits are listed. Measured on
  `phantom:small` at 64 px: a copy with brightness/contrast changed, Gaussian noise (sigma 6 grey
  levels) or resized down to 32 px and back differs in at most 20 bits; two images of different
  patients in different splits in at least 54.

The test split is read here for its file list, patient ids and pixels only, never to score a
model. `leakage_report(dataset)` works on a loaded `Dataset`; `leakage_for_config(cfg)` loads
one with its test split (search.run calls it for summary.json; analysis shows it).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.fft import dctn

from trainables.config import TrialConfig
from trainables.data import Dataset, Split, load_for_config

HASH_IMAGE_SIZE = 64  # pixels: the decoded size the hash is computed from
HASH_SIDE = 16  # bits per side of the hash: 256 bits
DCT_SIDE = 64  # pixels: the image is area-resized to this before the DCT
NEAR_DUPLICATE_BITS = 32  # of 256: at most this many differing bits is a near duplicate
MAX_LISTED = 200  # pairs listed in full; the count is always complete
CHUNK_ROWS = 512  # hashes compared at once: 512 x 100,000 distances, about 0.6 GB in all
SPLITS = ("train", "val", "test")


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


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Differing bits between every hash of `a` (Na, 256) and of `b` (Nb, 256): int (Na, Nb).

    A float32 matrix product (BLAS; exact, the counts are at most 256); callers pass `a` a
    block of rows at a time (`close_pairs`) so the matrix stays small on large datasets."""
    a, b = np.asarray(a, dtype=np.float32), np.asarray(b, dtype=np.float32)
    return (a @ (1 - b).T + (1 - a) @ b.T).round().astype(np.int32)


def close_pairs(a: np.ndarray, b: np.ndarray, max_bits: int, rows: int = CHUNK_ROWS):
    """(i, j, bits) for every hash pair of `a` x `b` within `max_bits`, computed `rows` hashes
    of `a` at a time (memory: rows x len(b) distances, not len(a) x len(b))."""
    for start in range(0, len(a), rows):
        dist = hamming(a[start : start + rows], b)
        for i, j in zip(*np.nonzero(dist <= max_bits), strict=True):
            yield start + int(i), int(j), int(dist[i, j])


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
    splits: dict[str, Split], max_bits: int = NEAR_DUPLICATE_BITS
) -> dict[str, Any]:
    """Image pairs of two different splits within `max_bits` of each other (closest first)."""
    hashes = {name: perceptual_hash(split.images) for name, split in splits.items()}
    names = [s for s in SPLITS if s in splits]
    pairs, count, checked = [], 0, 0
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            checked += len(hashes[first]) * len(hashes[second])
            for a, b, bits in close_pairs(hashes[first], hashes[second], max_bits):
                count += 1
                pairs.append(
                    {
                        "a_split": first,
                        "a": splits[first].paths[a],
                        "b_split": second,
                        "b": splits[second].paths[b],
                        "bits": bits,
                    }
                )
                if len(pairs) >= 4 * MAX_LISTED:  # keep the closest only: memory stays flat
                    pairs = _closest(pairs)
    return {"count": count, "pairs": _closest(pairs), "pairs_checked": checked}


def _closest(pairs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    pairs.sort(key=lambda p: (p["bits"], p["a_split"], p["a"], p["b"]))
    return pairs[:MAX_LISTED]


def leakage_report(dataset: Dataset, max_bits: int = NEAR_DUPLICATE_BITS) -> dict[str, Any]:
    """summary.json's `leakage` record for a loaded dataset (pass one loaded with its test)."""
    splits = _splits(dataset)
    patients = patient_overlap(splits)
    duplicates = near_duplicates(splits, max_bits)
    return {
        "splits": [s for s in SPLITS if s in splits],
        "patients": patients["per_split"],
        "patients_in_two_splits": patients["in_two_splits"],
        "near_duplicates": duplicates["pairs"],
        "near_duplicate_count": duplicates["count"],
        "pairs_checked": duplicates["pairs_checked"],
        "rule": (
            f"pHash: the decoded {dataset.train.images.shape[-1]} px image area-resized to "
            f"{DCT_SIDE}x{DCT_SIDE}, 2-D DCT-II, the {HASH_SIDE}x{HASH_SIDE} lowest frequencies "
            f"above their median (DC excluded); near duplicate = at most {max_bits} of "
            f"{HASH_SIDE * HASH_SIDE} bits differ, between two splits"
        ),
        "max_bits": max_bits,
    }


def leakage_for_config(cfg: TrialConfig, max_bits: int = NEAR_DUPLICATE_BITS) -> dict[str, Any]:
    """`leakage_report` of the data `cfg` trains on, test split included, decoded at
    `HASH_IMAGE_SIZE` px (the split does not depend on the image size)."""
    dataset = load_for_config(replace(cfg, image_size=HASH_IMAGE_SIZE), include_test=True)
    return leakage_report(dataset, max_bits)
