"""The validation split: a seeded, stratified share of train, grouped by patient.

`split_train_val` chooses the indices (scikit-learn); `split_hash` names the result, so a
checkpoint can tell whether it was trained on the same split.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Sequence

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, train_test_split


def split_train_val(
    labels: np.ndarray,
    groups: list[str | None],
    split_seed: int,
    val_fraction: float,
    names: Sequence[str] = (),
    folders: Sequence[str] = (),
) -> tuple[np.ndarray, np.ndarray, str]:
    """Sorted indices (train, val) of a seeded, stratified split, and how they were chosen.

    Grouped by patient (`StratifiedGroupKFold`, one fold held out) when any image has a patient
    id; a plain stratified shuffle split otherwise. `val_fraction` above 0.5 swaps the roles.
    `names` (class names by label) and `folders` (each image's folder) name a class too small
    to split.
    """
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
    _check_two_per_class(labels, names, folders, val_fraction)
    try:
        train_idx, val_idx = train_test_split(
            idx, test_size=val_fraction, random_state=split_seed, stratify=labels
        )
    except ValueError as err:
        raise ValueError(
            f"cannot split train stratified with val_fraction={val_fraction}: {err}"
        ) from None
    return np.sort(train_idx), np.sort(val_idx), "stratified shuffle split (no patient ids)"


def _check_two_per_class(
    labels: np.ndarray, names: Sequence[str], folders: Sequence[str], val_fraction: float
) -> None:
    """A stratified split puts each class on both sides: refuse a class of one image, naming the
    class and its folder (scikit-learn would name only the label's index)."""
    counts = np.bincount(labels) if len(labels) else np.zeros(0, dtype=np.int64)
    for label in np.flatnonzero(counts == 1):
        name = names[label] if label < len(names) else f"label {label}"
        where = ""
        if folders:
            where = f" (in {folders[int(np.flatnonzero(labels == label)[0])]})"
        raise ValueError(
            f"class {name!r} has 1 image{where}: a stratified split ({val_fraction:.0%} held "
            f"out) needs at least 2 images of each class; add images of that class, or merge it "
            f"into another with --class-map"
        )


def split_hash(train: list[str], val: list[str]) -> str:
    body = json.dumps({"train": sorted(train), "val": sorted(val)}, separators=(",", ":"))
    return hashlib.sha256(body.encode()).hexdigest()
