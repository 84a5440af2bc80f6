"""Leakage: planted duplicates across splits are found, a patient in two splits is reported, a
clean folder (and the clean phantom) reports nothing, and the audit is cached with the data."""

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
    find_audit,
    hamming,
    leakage_file_text,
    leakage_for_config,
    parse_leakage_file,
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


def _leakage(root, image_size=32):
    return leakage_for_config(TrialConfig(data=str(root), image_size=image_size))


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


def test_the_audit_is_cached_by_content_and_reused(tmp_path, cold_cache, monkeypatch):
    root = make_folder(tmp_path / "data")
    first = _leakage(root)
    assert first["from_cache"] is False and first["pairs_checked"] > 0
    # The second audit of the same content is read back: searching again would fail here.
    import trainables.leakage as leakage

    def no_search(*args, **kwargs):
        raise AssertionError("the cached audit was recomputed")

    monkeypatch.setattr(leakage, "find_close_pairs", no_search)
    again = _leakage(root, image_size=96)  # the image size does not change what is audited
    assert again["from_cache"] is True
    assert {k: v for k, v in again.items() if k not in ("from_cache", "settings")} == {
        k: v for k, v in first.items() if k not in ("from_cache", "settings")
    }
    # Changed content (one test image rewritten) is a new key: audited afresh.
    noise(root / "test" / "NORMAL" / "person1_normal_0.png", seed=777)
    with pytest.raises(AssertionError, match="recomputed"):
        _leakage(root)


def test_the_experiment_file_holds_audits_found_by_their_settings(tmp_path, cold_cache):
    audit = _leakage(make_folder(tmp_path / "data"))
    audits = parse_leakage_file(leakage_file_text([audit]), "x/leakage.json")
    cfg = TrialConfig(data=str(tmp_path / "data"), image_size=128)
    assert find_audit(audits, cfg) == audit
    assert find_audit(audits, TrialConfig(data=str(tmp_path / "data"), split_seed=3)) is None
    with pytest.raises(ValueError, match="x/leakage.json: expected version 1"):
        parse_leakage_file('{"audits": []}', "x/leakage.json")
