"""CSV manifests: relative paths, extra columns, missing files, given and made splits, and the
manifests that are refused, naming their rows."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from image_folders import S, noise

from trainables.data import load_dataset

pytestmark = pytest.mark.usefixtures("cold_cache")
LABELS = ("No Finding", "Effusion", "Cardiomegaly")


def write_manifest(path: Path, rows: list[dict], columns: list[str] | None = None) -> Path:
    columns = columns or list(rows[0])
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def image_rows(base: Path, patients: int = 45, split=lambda p: "") -> list[dict]:
    """One or two images per patient under base/images/, label by patient, a `view` and an
    `age` column the loader does not use."""
    rows = []
    for p in range(patients):
        for k in range(1 + p % 2):
            rel = f"images/p{p:03d}_{k}.png"
            noise(base / rel, 100 * p + k)
            rows.append(
                {
                    "path": rel,
                    "label": LABELS[p % 3],
                    "patient_id": f"P{p}",
                    "split": split(p),
                    "view": "PA",
                    "age": str(20 + p),
                }
            )
    return rows


def test_manifest_with_given_splits_relative_paths_extra_columns_and_a_missing_file(tmp_path):
    base = tmp_path / "nih"
    rows = image_rows(base, split=lambda p: ("train", "train", "train", "val", "test")[p % 5])
    rows.append({**rows[0], "path": "images/gone.png", "patient_id": "P0"})  # no such file
    manifest = write_manifest(base / "labels.csv", rows)
    ds = load_dataset(str(manifest), image_size=S, include_test=True)
    assert ds.report.layout == "manifest" and ds.root == base
    assert ds.classes == ["Cardiomegaly", "Effusion", "No Finding"]
    by_split = {s: sorted(r["path"] for r in rows if r["split"] == s) for s in ("val", "test")}
    # The given val and test rows are the splits, exactly (no split of our own).
    assert sorted(ds.val.paths) == by_split["val"]
    assert sorted(ds.test.paths) == by_split["test"]
    assert {s["path"]: s["reason"] for s in ds.report.skipped} == {
        "images/gone.png": "missing file"
    }
    # Extra columns are kept in the report, not an error.
    assert ds.report.columns == ["path", "label", "patient_id", "split", "view", "age"]
    assert any("['view', 'age']" in n for n in ds.report.notes)
    train_only = load_dataset(str(manifest), image_size=S)
    assert train_only.test is None and train_only.split_record["hash"] == ds.split_record["hash"]


def test_manifest_without_splits_holds_out_test_by_patient_whatever_the_split_seed(tmp_path):
    base = tmp_path / "m"
    rows = [{k: v for k, v in r.items() if k != "split"} for r in image_rows(base)]
    manifest = write_manifest(base / "all.csv", rows)
    ds = load_dataset(str(manifest), image_size=S, include_test=True)
    patient = {r["path"]: r["patient_id"] for r in rows}
    splits = {
        name: {patient[p] for p in split.paths}
        for name, split in (("train", ds.train), ("val", ds.val), ("test", ds.test))
    }
    # Test and validation are made as for folders: grouped by patient, every class present.
    assert not (splits["train"] & splits["test"] or splits["val"] & splits["test"])
    assert not splits["train"] & splits["val"]
    assert all(n > 0 for n in ds.report.counts["test"].values())
    assert len(ds.train) + len(ds.val) + len(ds.test) == len(rows)
    other = load_dataset(str(manifest), image_size=S, include_test=True, split_seed=7)
    assert sorted(other.test.paths) == sorted(ds.test.paths)  # test never moves
    assert sorted(other.val.paths) != sorted(ds.val.paths)  # val follows split_seed


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda rows: [{**r, "label": "No Finding"} for r in rows], r"one class \['No Finding'\]"),
        (
            lambda rows: [{**r, "split": "test"} if i == 2 else r for i, r in enumerate(rows)],
            r"patient 'P1' is in two splits \(test: rows 4; train: rows 3\)",
        ),
        (
            lambda rows: [{**r, "split": "holdout"} if i == 1 else r for i, r in enumerate(rows)],
            r"rows 3 have a split other than \['train', 'val', 'test'\] or empty "
            r"\(found \['holdout'\]\)",
        ),
        (lambda rows: rows + [dict(rows[0])], r"rows \d+ repeat a path listed earlier"),
        (
            lambda rows: [{**r, "label": ""} if i == 0 else r for i, r in enumerate(rows)],
            "rows 2 have an empty label",
        ),
    ],
    ids=["one_class", "patient_in_two_splits", "bad_split", "repeated_path", "empty_label"],
)
def test_bad_manifests_are_refused_naming_the_rows(tmp_path, change, message):
    base = tmp_path / "m"
    rows = image_rows(base, patients=12, split=lambda p: "train")
    manifest = write_manifest(base / "labels.csv", change(rows))
    with pytest.raises(ValueError, match=message) as err:
        load_dataset(str(manifest), image_size=S)
    assert str(manifest) in str(err.value)  # names the file


def test_unreadable_manifests_name_the_file_and_the_expected_columns(tmp_path):
    wrong = write_manifest(tmp_path / "a.csv", [{"file": "x.png", "finding": "Mass"}])
    with pytest.raises(
        ValueError, match=r"lacks the columns \['path'\].*\['file', 'finding'\].*'label'"
    ):
        load_dataset(str(wrong), image_size=S)
    garbage = tmp_path / "b.csv"
    garbage.write_bytes(b"path,label\n\xff\xfe\x00bad")
    with pytest.raises(ValueError, match=f"manifest {garbage} cannot be read"):
        load_dataset(str(garbage), image_size=S)


@pytest.mark.parametrize(
    "header, named",
    [
        ("path,label,label", "'label' (column 2) and 'label' (column 3)"),
        ("path,label, Label ", "'label' (column 2) and ' Label ' (column 3)"),
        ("Path,path,label", "'Path' (column 1) and 'path' (column 2)"),
    ],
    ids=["repeated", "case_and_spaces", "path_twice"],
)
def test_a_header_naming_a_column_twice_is_refused_naming_the_columns(tmp_path, header, named):
    # csv.DictReader would keep the last 'label' silently (pandas renames it 'label.1').
    manifest = tmp_path / "labels.csv"
    rows = "".join(f"images/{i}.png,NORMAL,VIRAL\n" for i in range(4))
    manifest.write_text(f"{header}\n{rows}")
    with pytest.raises(ValueError, match="names a column more than once") as err:
        load_dataset(str(manifest), image_size=S)
    assert str(manifest) in str(err.value) and named in str(err.value)


def test_a_row_with_more_values_than_columns_is_refused(tmp_path):
    base = tmp_path / "m"
    rows = image_rows(base, patients=12, split=lambda p: "train")
    manifest = write_manifest(base / "labels.csv", rows)
    text = manifest.read_text().splitlines()
    text[3] += ",VIRAL"  # line 4: one value more than the header names
    manifest.write_text("\n".join(text) + "\n")
    with pytest.raises(ValueError, match=r"rows 4 have more values than the header's 6 columns"):
        load_dataset(str(manifest), image_size=S)


def test_the_files_hash_follows_the_files_not_the_row_order(tmp_path):
    # The resume's check of "same data": same counts from other files is other data.
    base = tmp_path / "m"
    rows = image_rows(base)
    first = load_dataset(str(write_manifest(base / "a.csv", rows)), image_size=S).report
    again = load_dataset(str(write_manifest(base / "b.csv", rows[::-1])), image_size=S).report
    assert len(first.files_sha256) == 64 and again.files_sha256 == first.files_sha256
    (base / "images" / "renamed.png").write_bytes((base / rows[0]["path"]).read_bytes())
    renamed = [{**rows[0], "path": "images/renamed.png"}, *rows[1:]]
    other = load_dataset(str(write_manifest(base / "c.csv", renamed)), image_size=S).report
    assert other.counts == first.counts and other.files_sha256 != first.files_sha256
