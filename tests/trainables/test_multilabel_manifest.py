"""Multi-label manifests: a joined label without the declaration is refused, NIH's joined column
and CheXpert's one column per finding read as their datasets mean them, and the data report
counts positives, negatives, uncertain and unmentioned labels per finding and split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from image_folders import S, noise
from test_manifest import write_manifest

from trainables.data import load_dataset
from trainables.multilabel import NEGATIVE, POSITIVE, UNCERTAIN, UNMENTIONED

pytestmark = pytest.mark.usefixtures("cold_cache")
FINDINGS = ("Atelectasis", "Effusion", "Edema")


def chexpert_cells(p: int) -> dict[str, str]:
    """Patient p's cells: each finding positive, negative, uncertain or blank in a fixed cycle."""
    cycle = ("1", "0", "", "1.0", "-1", "0.0", "")
    return {f: cycle[(p + 2 * j) % len(cycle)] for j, f in enumerate(FINDINGS)}


def joined(cells: dict[str, str]) -> str:
    return "|".join(f for f, v in cells.items() if v in ("1", "1.0")) or "No Finding"


def rows_for(base: Path, style: str, patients: int = 40) -> list[dict]:
    rows = []
    for p in range(patients):
        rel = f"images/p{p:03d}.png"
        noise(base / rel, p)
        cells = chexpert_cells(p)
        row = {"path": rel, "patient_id": f"P{p}", "Sex": "Female", "Age": str(30 + p)}
        if style == "joined":
            row["Finding Labels"] = joined(cells)
        elif style == "label":
            row["label"] = joined(cells)
        else:
            row.update(cells)
        rows.append(row)
    return rows


def test_a_label_joining_findings_is_refused_with_the_way_to_declare_multi_label(tmp_path):
    manifest = write_manifest(tmp_path / "nih.csv", rows_for(tmp_path, "label"))
    # Today's bug: 'Atelectasis|Edema' must never become a class of its own.
    with pytest.raises(ValueError, match=r"'labels'.*Finding Labels.*one column per finding"):
        load_dataset(str(manifest), image_size=S)


def test_nih_joined_column_reads_findings_and_no_finding_as_none(tmp_path):
    rows = rows_for(tmp_path, "joined")
    ds = load_dataset(str(write_manifest(tmp_path / "nih.csv", rows)), image_size=S)
    assert ds.multilabel and ds.report.label_format == "joined"
    assert ds.classes == sorted(FINDINGS)  # findings from the data, sorted
    by_path = {r["path"]: r["Finding Labels"] for r in rows}
    for path, codes in zip(ds.train.paths, ds.train.labels.tolist(), strict=True):
        expected = [POSITIVE if f in by_path[path].split("|") else NEGATIVE for f in ds.classes]
        assert codes == expected  # 'No Finding' rows are all negative
    assert "Age" in ds.report.columns and "Sex" not in ds.classes  # metadata stays metadata


def test_chexpert_columns_read_one_zero_minus_one_and_blank_as_chexpert_means(tmp_path):
    rows = rows_for(tmp_path, "columns")
    ds = load_dataset(str(write_manifest(tmp_path / "chexpert.csv", rows)), image_size=S)
    assert ds.multilabel and ds.report.label_format == "columns"
    assert ds.classes == list(FINDINGS)  # the manifest's column order
    meaning = {"1": POSITIVE, "1.0": POSITIVE, "0": NEGATIVE, "0.0": NEGATIVE}
    meaning.update({"-1": UNCERTAIN, "": UNMENTIONED})
    cells = {r["path"]: r for r in rows}
    for split in (ds.train, ds.val):
        for path, codes in zip(split.paths, split.labels.tolist(), strict=True):
            assert codes == [meaning[cells[path][f]] for f in FINDINGS]
    # The report counts each kind per finding and split, and they add up to the split's images.
    for name, split in (("train", ds.train), ("val", ds.val)):
        counts = ds.report.finding_counts[name]
        labels = split.labels.numpy()
        for j, f in enumerate(FINDINGS):
            assert counts[f]["uncertain"] == int(np.sum(labels[:, j] == UNCERTAIN))
            assert counts[f]["unmentioned"] == int(np.sum(labels[:, j] == UNMENTIONED))
            assert sum(counts[f].values()) == len(split)
    text = ds.report.format()
    assert "multi-label (columns)" in text and "+/-/?/blank" in text


def test_patients_stay_in_one_split_for_multi_label_data(tmp_path):
    rows = rows_for(tmp_path, "columns")
    for r in rows[1::2]:  # two images for every other patient
        extra = dict(r, path=r["path"].replace(".png", "_b.png"))
        noise(tmp_path / extra["path"], hash(extra["path"]) % 1000)
        rows.append(extra)
    ds = load_dataset(str(write_manifest(tmp_path / "c.csv", rows)), image_size=S)
    assert not set(ds.train.patients) & set(ds.val.patients)


@pytest.mark.parametrize(
    ("cells", "match"),
    [
        ({"Effusion": "2"}, r"column 'Effusion' holds finding values .* except in rows"),
        ({"Finding Labels": "Effusion||Edema"}, r"empty finding"),
        ({"Finding Labels": "No Finding|Edema"}, r"'No Finding' with findings"),
    ],
)
def test_malformed_multi_label_rows_are_refused_naming_the_row(tmp_path, cells, match):
    style = "joined" if "Finding Labels" in cells else "columns"
    rows = rows_for(tmp_path, style)
    rows[3].update(cells)
    with pytest.raises(ValueError, match=match):
        load_dataset(str(write_manifest(tmp_path / "m.csv", rows)), image_size=S)


def test_a_custom_separator_and_class_map_refusal(tmp_path):
    rows = rows_for(tmp_path, "joined")
    for r in rows:
        r["Finding Labels"] = r["Finding Labels"].replace("|", ";")
    manifest = str(write_manifest(tmp_path / "semi.csv", rows))
    ds = load_dataset(manifest, image_size=S, label_separator=";")
    assert ds.classes == sorted(FINDINGS)
    with pytest.raises(ValueError, match="multi-label data"):
        load_dataset(manifest, image_size=S, label_separator=";", class_map="Edema=X")
