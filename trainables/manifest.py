"""CSV manifests: a dataset as a table of files, for label files such as NIH ChestX-ray14's.

    path,label,patient_id,split
    images/00000001_000.png,Cardiomegaly,1,train
    images/00000013_005.png,No Finding,13,test

- `path` (required): the image file, relative to the CSV's folder (or absolute).
- `label`: one class per row; labels become classes by the rules of `trainables.classes`, as
  folder names do. A label joining findings (`Effusion|Infiltration`) is refused: multi-label
  data gives a `labels` / `Finding Labels` column (findings joined by `|`, `No Finding` for
  none) or one column per finding (1, 0, -1 uncertain, blank), read by `trainables.multilabel`.
- `patient_id` (optional): rows of one patient never fall into two splits.
- `split` (optional): `train`, `val`, `test` or empty. Empty rows are train. Without test rows,
  a seeded (`TEST_SPLIT_SEED`), stratified `TEST_FRACTION` of train is held out as test, grouped
  by patient, from the manifest alone (the test set never depends on which files exist or on
  `split_seed`). Without val rows the validation split is made from train as for folders.
- Any other column is kept in the data report's `columns`, not an error.

A manifest that cannot be read, names a column twice (also in another case or with spaces
around it), has a row with more values than columns, lacks a column, has an empty label or an
unknown split, lists a file twice, has one class, or puts a patient in two splits is refused,
naming its columns or rows; a row whose file is missing or unreadable is skipped and listed
like any bad file (`layouts`).
"""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path, PurePosixPath

import numpy as np

from trainables.layouts import SPLIT_NAMES, Entry, Layout
from trainables.multilabel import (
    DEFAULT_SEPARATOR,
    LabelFormat,
    detect_format,
    joined_text,
    row_codes,
    strata,
)
from trainables.splits import split_train_val

REQUIRED_COLUMNS = ("path",)
LABEL_COLUMNS = "'label', 'labels' / 'Finding Labels', or one column per finding"
OPTIONAL_COLUMNS = ("patient_id", "split")
TEST_FRACTION = 0.2  # of the train rows, held out as test when the manifest gives none
TEST_SPLIT_SEED = 0  # fixed: the held-out test set must not move with a trial's split_seed


def _rows_text(lines: list[int]) -> str:
    shown = ", ".join(map(str, lines[:8]))
    return f"rows {shown}" + (f" ... ({len(lines)} in all)" if len(lines) > 8 else "")


def read_rows(path: Path) -> tuple[list[dict[str, str]], list[str]]:
    """The manifest's rows (each with its line number under '_line') and its columns."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            _check_header(path, list(reader.fieldnames or []))
            columns = [c.strip() for c in reader.fieldnames or []]
            reader.fieldnames = columns
            rows, overlong = [], []
            for row in reader:
                if any((v or "").strip() for v in row.get(None, [])):  # csv's restkey
                    overlong.append(reader.line_num)
                rows.append({k: (v or "").strip() for k, v in row.items() if k is not None})
                rows[-1]["_line"] = str(reader.line_num)
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise ValueError(f"manifest {path} cannot be read: {err}") from None
    if overlong:
        raise ValueError(
            f"manifest {path}: {_rows_text(overlong)} have more values than the header's "
            f"{len(columns)} columns {columns}; which column each belongs to is ambiguous"
        )
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise ValueError(
            f"manifest {path} lacks the columns {missing} (it has {columns}); expected "
            f"{list(REQUIRED_COLUMNS)}, {LABEL_COLUMNS}, and optionally {list(OPTIONAL_COLUMNS)}"
        )
    if not rows:
        raise ValueError(f"manifest {path} has no rows")
    return rows, columns


def _check_header(path: Path, header: list[str]) -> None:
    """Each column named once: a repeated name, or names that differ only in case or surrounding
    spaces (`label`, ` Label`), would leave which value counts to the reader's order. Read from
    the raw header (pandas would rename a repeat to `label.1`)."""
    seen: dict[str, list[int]] = defaultdict(list)
    for i, name in enumerate(header, start=1):
        if name.strip():
            seen[name.strip().casefold()].append(i)
    repeated = [places for places in seen.values() if len(places) > 1]
    if repeated:
        named = "; ".join(
            " and ".join(f"{header[i - 1]!r} (column {i})" for i in places) for places in repeated
        )
        raise ValueError(
            f"manifest {path}: the header names a column more than once: {named}; name each "
            f"column once (names that differ only in case or spaces count as the same)"
        )


def _check_rows(path: Path, rows: list[dict[str, str]], fmt: LabelFormat) -> None:
    """Refuse empty labels, unknown splits, repeated files, one class; rows named."""
    problems = {
        "have an empty label": [r for r in rows if fmt.column and not r[fmt.column]],
        "have an empty path": [r for r in rows if not r["path"]],
        f"have a split other than {list(SPLIT_NAMES)} or empty": [
            r for r in rows if r.get("split", "") not in ("", *SPLIT_NAMES)
        ],
    }
    seen: dict[str, str] = {}
    problems["repeat a path listed earlier (one label per file)"] = [
        r for r in rows if seen.setdefault(r["path"], r["_line"]) != r["_line"]
    ]
    for what, bad in problems.items():
        if bad:
            found = sorted({r.get("split", "") for r in bad}) if "split other" in what else []
            raise ValueError(
                f"manifest {path}: {_rows_text([int(r['_line']) for r in bad])} {what}"
                + (f" (found {found})" if found else "")
            )
    labels = {r["label"] for r in rows} if fmt.kind == "single" else set()
    if fmt.kind == "single" and len(labels) < 2:
        raise ValueError(
            f"manifest {path}: the label column has one class {sorted(labels)} "
            f"({_rows_text([int(r['_line']) for r in rows])}); need two"
        )


def _check_patients(path: Path, rows: list[dict[str, str]]) -> None:
    """A patient's rows must share one split (an empty split counts as train)."""
    splits: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r.get("patient_id"):
            splits[r["patient_id"]][r.get("split") or "train"].append(int(r["_line"]))
    for patient, by_split in splits.items():
        if len(by_split) > 1:
            where = "; ".join(f"{s}: {_rows_text(lines)}" for s, lines in sorted(by_split.items()))
            raise ValueError(
                f"manifest {path}: patient {patient!r} is in two splits ({where}); a patient's "
                "images must share one split"
            )


def manifest_layout(path: Path, separator: str = DEFAULT_SEPARATOR) -> Layout:
    """The manifest's entries per split (no file is opened: missing ones are skipped later).
    `separator` joins findings in a `labels` / `Finding Labels` column."""
    rows, columns = read_rows(path)
    fmt = detect_format(path, columns, rows, separator, REQUIRED_COLUMNS + OPTIONAL_COLUMNS)
    _check_rows(path, rows, fmt)
    _check_patients(path, rows)
    root = path.parent
    by_split: dict[str, list[Entry]] = {s: [] for s in SPLIT_NAMES}
    for r in rows:
        rel = PurePosixPath(r["path"]).as_posix()
        codes = row_codes(fmt, r) if fmt.multilabel else None
        label = joined_text(codes, fmt.findings) if codes is not None else r["label"]
        entry = Entry(rel, root / rel, label, r.get("patient_id") or None, codes)
        by_split[r.get("split") or "train"].append(entry)
    used = (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS, fmt.column, *fmt.findings)
    extra = [c for c in columns if c not in used]
    notes = [f"manifest {path.name}: {len(rows)} rows, columns {columns}, {fmt.describe()}"]
    if extra:
        notes.append(f"extra manifest columns {extra} kept in the report, not used")
    if not by_split["test"]:
        by_split["train"], by_split["test"], how = _hold_out_test(by_split["train"])
        notes.append(f"no test rows in the manifest: held out {how}")
    if not by_split["val"]:
        del by_split["val"]
    why = (
        f"the CSV manifest {path.name} ("
        + ", ".join(f"{s} {len(e)}" for s, e in by_split.items())
        + " rows)"
    )
    return Layout("manifest", root, {}, why, by_split, columns, notes, fmt.findings, fmt.kind)


def _hold_out_test(train: list[Entry]) -> tuple[list[Entry], list[Entry], str]:
    names = sorted({e.label for e in train})
    if train and train[0].codes is not None:  # multi-label: the rarest positive finding
        labels = strata(np.array([e.codes for e in train], dtype=np.int64))
        names = []  # a stratum is a finding, not a label: named by its index
    else:
        labels = np.array([names.index(e.label) for e in train], dtype=np.int64)
    folders = [str(e.path.parent) for e in train]
    keep, held, how = split_train_val(
        labels, [e.patient for e in train], TEST_SPLIT_SEED, TEST_FRACTION, names, folders
    )
    what = f"{len(held)} rows ({TEST_FRACTION:.0%}, {how}, seed {TEST_SPLIT_SEED})"
    return [train[i] for i in keep], [train[i] for i in held], what
