"""The synthetic chest X-ray phantom: layout, metadata, determinism, cache, confounder, CLI."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from trainables import phantom
from trainables.phantom import CLASSES, PRESETS, Preset, ensure_phantom, generate
from trainables.vocab import PHANTOM_PRESETS

REQUIRED_COLUMNS = {
    "split",
    "path",
    "label",
    "class",
    "patient_id",
    "severity",
    "subgroup",
    "width",
    "height",
    "mode",
    "format",
    "rotation_deg",
    "shift_x",
    "shift_y",
    "zoom",
    "contrast",
    "brightness",
    "gamma",
    "noise_sigma",
    "wires",
    "marker",
    "arrows",
    "confounder",
}


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("phantom") / "small", preset="small", seed=0)


@pytest.fixture(scope="module")
def meta(small) -> pd.DataFrame:
    return pd.read_csv(small / "metadata.csv", keep_default_na=False)


@pytest.fixture
def tiny_preset(monkeypatch) -> str:
    """A 24-image preset so cache tests stay well under a second per generation."""
    monkeypatch.setitem(
        PRESETS, "tiny", Preset({"train": (4, 6, 4), "test": (3, 4, 3)}, (64, 80), 96)
    )
    return "tiny"


def test_small_preset_has_the_planned_class_counts_per_split(meta):
    counts = meta.groupby(["split", "class"]).size()
    for split in ("train", "test"):
        # The preset's counts are what tests and training rely on; test has its own mix.
        assert [counts[(split, c)] for c in CLASSES] == list(PRESETS["small"].counts[split])


def test_every_listed_file_exists_opens_and_matches_its_metadata(small, meta):
    assert REQUIRED_COLUMNS <= set(meta.columns), REQUIRED_COLUMNS - set(meta.columns)
    # Every file on disk is listed once, and every listed file exists (no orphans either way).
    on_disk = {str(p.relative_to(small)) for p in small.glob("*/*/*")}
    assert on_disk == set(meta["path"])
    for row in meta.to_dict("records"):
        with Image.open(small / row["path"]) as im:
            im.load()
            # Size and mode in the CSV are what the file really holds.
            assert (im.width, im.height, im.mode) == (row["width"], row["height"], row["mode"])
        split, cls, name = row["path"].split("/")
        assert (split, cls) == (row["split"], row["class"])
        assert name.startswith(f"person{row['patient_id']}_")
        assert name.endswith(f".{row['format']}")
    assert meta["label"].tolist() == [CLASSES.index(c) for c in meta["class"]]


def test_images_mix_modes_formats_sizes_and_nuisances(meta):
    # The seed study's nuisances: several file modes including 16-bit, JPEG and PNG files.
    assert {"L", "RGB", "I;16"} <= set(meta["mode"])
    assert set(meta["format"]) == {"png", "jpg"}
    assert set(meta.loc[meta["format"] == "jpg", "mode"]) <= {"L", "RGB"}
    # Mixed sizes and aspect ratios, both orientations, within the small preset's bounds.
    aspect = meta["width"] / meta["height"]
    assert aspect.min() < 0.85 and aspect.max() > 1.15
    assert (
        meta[["width", "height"]].min().min() >= 96 and meta[["width", "height"]].max().max() <= 192
    )
    assert meta["rotation_deg"].abs().max() > 5 and meta["contrast"].std() > 0.1
    assert (meta["wires"] > 0).any() and (meta["arrows"] > 0).any()
    assert set(meta["marker"]) == {"", "L", "R"}


def test_severity_and_subgroups_follow_the_class(meta):
    assert (meta.loc[meta["class"] == "NORMAL", "severity"] == 0).all()
    sick = meta[meta["class"] != "NORMAL"]
    # Severity spans mild (overlapping NORMAL) to severe.
    assert sick["severity"].min() < 0.15 and sick["severity"].max() > 0.85
    assert set(meta.loc[meta["class"] == "VIRAL", "subgroup"]) == {"viral", "covid_like"}
    assert set(meta.loc[meta["class"] == "BACTERIA", "lesion_zone"]) == {"upper", "middle", "lower"}


def test_patients_with_several_images_stay_in_one_class_and_split(meta):
    per_patient = meta.groupby("patient_id").agg(
        n=("path", "size"), classes=("class", "nunique"), splits=("split", "nunique")
    )
    # Patient-grouped splitting only matters if some patients have several images.
    assert (per_patient["n"] >= 2).sum() >= 20 and per_patient["n"].max() <= 3
    assert (per_patient["classes"] == 1).all() and (per_patient["splits"] == 1).all()


@pytest.mark.slow
def test_same_seed_gives_byte_identical_files_with_any_process_count(small, tmp_path):
    again = generate(tmp_path / "again", preset="small", seed=0, processes=2)
    # Determinism down to the bytes, CSV included, even when rendered by a worker pool.
    assert _hashes(again) == _hashes(small)


def test_a_different_seed_gives_different_images():
    spec = phantom.plan("small", 0)[0]
    a, _ = phantom._render(0, spec, "small", False)
    b, _ = phantom._render(1, spec, "small", False)
    assert a.tobytes() != b.tobytes()
    assert phantom.plan("small", 0) != phantom.plan("small", 1)


def test_generate_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty"):
        generate(tmp_path, preset="small")


def test_unknown_preset_is_refused_with_the_choices(tmp_path):
    with pytest.raises(ValueError, match=r"unknown phantom preset 'huge'.*\['full', 'small'\]"):
        generate(tmp_path / "x", preset="huge")


def test_ensure_phantom_generates_once_then_reuses(tmp_path, monkeypatch, tiny_preset):
    monkeypatch.setenv("CXR_TUNE_CACHE", str(tmp_path))
    calls = []
    real = phantom.generate
    monkeypatch.setattr(phantom, "generate", lambda *a, **k: calls.append(k) or real(*a, **k))
    first = ensure_phantom(tiny_preset, seed=3)
    assert first == tmp_path / "phantom" / "tiny-seed3"
    assert (first / "metadata.csv").is_file()
    before = _hashes(first)
    second = ensure_phantom(tiny_preset, seed=3)
    # The second call finds the finished folder: no new generation, same files.
    assert second == first and len(calls) == 1 and _hashes(second) == before
    # The confounder variant is a separate folder.
    assert ensure_phantom(tiny_preset, seed=3, confounder=True).name == "tiny-seed3-confounder"
    assert len(calls) == 2


def test_ensure_phantom_regenerates_a_phantom_from_an_older_generator(
    tmp_path, monkeypatch, tiny_preset
):
    monkeypatch.setenv("CXR_TUNE_CACHE", str(tmp_path))
    path = ensure_phantom(tiny_preset)
    (path / "phantom.json").write_text('{"version": 0}')
    (path / "stray.txt").write_text("old")
    # A stale cache is replaced as a whole, not reused or mixed with new files.
    assert ensure_phantom(tiny_preset) == path
    assert (
        not (path / "stray.txt").exists()
        and '"version": 0' not in (path / "phantom.json").read_text()
    )


@pytest.mark.slow
def test_confounder_tag_tracks_viral_in_train_only(small, tmp_path):
    tagged = generate(tmp_path / "conf", preset="small", seed=0, confounder=True)
    meta = pd.read_csv(tagged / "metadata.csv", keep_default_na=False)
    rate = meta.groupby(["split", "class"])["confounder"].mean()
    # Train: the tag marks most VIRAL images and few others (the planted shortcut).
    assert rate[("train", "VIRAL")] > 0.65
    assert rate[("train", "NORMAL")] < 0.15 and rate[("train", "BACTERIA")] < 0.15
    # Test: the tag no longer predicts the class.
    test = meta[meta["split"] == "test"]
    assert 0.05 < test["confounder"].mean() < 0.5
    assert (
        abs(rate[("test", "VIRAL")] - test.loc[test["class"] != "VIRAL", "confounder"].mean()) < 0.3
    )
    # Untagged images are byte-identical to the plain phantom: the tag is the only difference.
    plain, conf = _hashes(small), _hashes(tagged)
    for path in meta.loc[meta["confounder"] == 0, "path"]:
        assert conf[path] == plain[path], path
    assert all(conf[p] != plain[p] for p in meta.loc[meta["confounder"] == 1, "path"])


def load_pixels(root: Path, split: str, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Raw pixels of one split, padded to a square and downsampled: (N, size*size) in [0, 1]."""
    meta = pd.read_csv(Path(root) / "metadata.csv")
    meta = meta[meta["split"] == split]
    rows = []
    for rel in meta["path"]:
        with Image.open(Path(root) / rel) as im:
            arr = np.asarray(im.convert("I") if im.mode == "I;16" else im.convert("L"), float)
        arr = arr / (65535.0 if arr.max() > 255 else 255.0)
        h, w = arr.shape
        s = max(h, w)
        square = np.zeros((s, s))
        square[(s - h) // 2 : (s - h) // 2 + h, (s - w) // 2 : (s - w) // 2 + w] = arr
        small = Image.fromarray(square.astype(np.float32), mode="F").resize((size, size))
        rows.append(np.asarray(small).ravel())
    return np.stack(rows), meta["label"].to_numpy()


def pixel_baseline(root: Path, size: int = 32) -> dict[str, float]:
    """Train/test accuracy of a logistic regression on raw downsampled pixels (scikit-learn)."""
    x_train, y_train = load_pixels(root, "train", size)
    x_test, y_test = load_pixels(root, "test", size)
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.01, max_iter=2000))
    # One BLAS thread: this fit is tiny, and extra threads only fight over shared cores.
    with threadpool_limits(1):
        model.fit(x_train, y_train)
    return {"train_acc": model.score(x_train, y_train), "test_acc": model.score(x_test, y_test)}


@pytest.mark.slow
def test_raw_pixel_logistic_regression_is_well_below_perfect(small):
    scores = pixel_baseline(small, size=32)
    # A linear model on raw pixels must not solve the task (the phantom needs spatial features),
    # but it should beat guessing the majority class on train, where it is fitted.
    assert scores["test_acc"] < 0.8, scores
    assert scores["train_acc"] > 0.5, scores


def test_every_preset_name_has_one_spec():
    # TrialConfig and the CLIs accept vocab's names; each needs a spec here, in the same order.
    assert tuple(PRESETS) == PHANTOM_PRESETS


def test_cli_rejects_a_bad_preset_naming_the_flag_and_choices(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "trainables.phantom",
            "--out",
            str(tmp_path / "x"),
            "--preset",
            "big",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "--preset" in proc.stderr and "full, small" in proc.stderr, proc.stderr
    assert not (tmp_path / "x").exists()  # nothing written for bad input


def test_cli_help_describes_presets_and_confounder(capsys):
    with pytest.raises(SystemExit) as exit_info:
        phantom.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "--preset" in text and "small" in text and "full" in text and "--confounder" in text
