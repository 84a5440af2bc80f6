"""Leakage: planted duplicates across splits are found, a patient in two splits is reported, and
a clean folder (and the clean phantom) reports nothing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from image_folders import make_folder, noise
from PIL import Image
from scipy.fft import dct

from trainables.config import TrialConfig
from trainables.leakage import (
    DCT_SIDE,
    HASH_SIDE,
    NEAR_DUPLICATE_BITS,
    close_pairs,
    hamming,
    leakage_for_config,
    perceptual_hash,
)


def test_phash_matches_a_separable_dct_and_hamming_counts_bits():
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 256, (3, 1, DCT_SIDE, DCT_SIDE), dtype=np.uint8))
    got = perceptual_hash(images)
    # Independent: the 2-D DCT as two 1-D DCTs (rows, then columns), no resize at this size.
    x = images[:, 0].numpy().astype(np.float64)
    coeffs = dct(dct(x, axis=1, norm="ortho"), axis=2, norm="ortho")[:, :HASH_SIDE, :HASH_SIDE]
    flat = coeffs.reshape(3, -1)
    expected = flat > np.median(flat[:, 1:], axis=1, keepdims=True)
    assert (got == expected).all()
    dist = hamming(got, got)
    assert (np.diag(dist) == 0).all()
    assert dist[0, 1] == int(np.sum(got[0] != got[1]))


def test_close_pairs_in_blocks_of_rows_are_every_pair_within_the_bound():
    rng = np.random.default_rng(1)
    a = rng.random((23, 256)) < 0.5
    b = a[rng.integers(0, 23, 17)] ^ (rng.random((17, 256)) < 0.05)  # near copies, ~13 bits
    b[:5] = rng.random((5, 256)) < 0.5  # and some unrelated hashes
    # Independent: count differing bits pair by pair with an element-wise comparison.
    bits = (a[:, None, :] != b[None, :, :]).sum(axis=2)
    expected = {(i, j, int(bits[i, j])) for i, j in zip(*np.nonzero(bits <= 32), strict=True)}
    assert expected  # the near copies are within the bound
    for rows in (1, 4, 23, 512):  # blocks smaller than, dividing, equal to and beyond len(a)
        assert set(close_pairs(a, b, 32, rows=rows)) == expected


def _leakage(root):
    return leakage_for_config(TrialConfig(data=str(root), image_size=32))


def test_a_clean_folder_has_no_leakage(tmp_path, cold_cache):
    report = _leakage(make_folder(tmp_path / "data"))
    # Distinct noise images of distinct patients: no pair near, no patient shared.
    assert report["near_duplicate_count"] == 0 and report["patients_in_two_splits"] == []
    per = report["patients"]
    assert set(per) == {"train", "val", "test"}
    assert sum(p["images"] for p in per.values()) == 70 + 9
    # make_folder gives two images per patient: 35 train+val patients, test's 9 images -> 6.
    assert per["train"]["patients"] + per["val"]["patients"] == 35
    assert per["test"]["patients"] == 6
    assert report["pairs_checked"] > 0


def test_planted_duplicate_and_shared_patient_are_reported(tmp_path, cold_cache):
    root = make_folder(tmp_path / "data")
    source = root / "train" / "NORMAL" / "person1_normal_0.png"
    # A near duplicate in test under another patient: brighter, re-saved as JPEG.
    arr = np.asarray(Image.open(source), dtype=np.float64)
    copy = np.clip(arr * 0.9 + 20, 0, 255).astype(np.uint8)
    Image.fromarray(copy).save(root / "test" / "NORMAL" / "person900_normal_0.jpeg", quality=90)
    # Patient 2 (in train) also has an image in test: a different picture, the same person.
    noise(root / "test" / "NORMAL" / "person2_normal_9.png", seed=4242)
    report = _leakage(root)
    assert report["near_duplicate_count"] == 1
    pair = report["near_duplicates"][0]
    # The copy is found across splits, whichever of train/val the original landed in.
    assert pair["b_split"] == "test" and pair["b"].endswith("person900_normal_0.jpeg")
    assert pair["a"].endswith("person1_normal_0.png") and pair["a_split"] in ("train", "val")
    assert pair["bits"] <= NEAR_DUPLICATE_BITS
    shared = report["patients_in_two_splits"]
    assert len(shared) == 1 and shared[0]["patient"] == "2" and "test" in shared[0]["splits"]


@pytest.mark.slow
def test_the_clean_phantom_has_no_leakage():
    # The phantom keeps each patient in one split and renders every image afresh.
    report = _leakage("phantom:small")
    assert report["patients_in_two_splits"] == []
    assert report["near_duplicate_count"] == 0
