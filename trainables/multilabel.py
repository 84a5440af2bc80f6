"""Multi-label chest X-ray data: the label formats, the uncertainty policies, loss and metrics.

A manifest (`trainables.manifest`) gives its labels in one of three shapes, decided here:

- `single`: a `label` column, one class per row. A label holding the separator (`|` unless
  `label_separator` says otherwise) is refused with the way to declare multi-label data, never
  read as a class of its own.
- `joined` (NIH ChestX-ray14): a `labels` or `Finding Labels` column, findings joined by the
  separator (`Effusion|Infiltration`), `No Finding` for none. The column's name declares it.
- `columns` (CheXpert, MIMIC-CXR-JPG): no label column, one column per finding holding `1`
  (positive), `0` (negative), `-1` (uncertain) or blank (unmentioned). A column is a finding
  when every value is one of those (the shape says so); other columns are kept as metadata.

Each image's labels become one code per finding (`POSITIVE`, `NEGATIVE`, `UNCERTAIN`,
`UNMENTIONED`). Training reads them through `train_targets` (unmentioned counts as negative, as
CheXpert's baselines treat it; uncertain by the trial's `uncertainty` policy), metrics through
`eval_targets` (uncertain labels are left out of a finding's AUROC). Only this module knows
the codes and the policies.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from trainables.vocab import UNCERTAINTY_POLICIES, check_label_separator, class_key

DEFAULT_SEPARATOR = "|"
NO_FINDING = "No Finding"
JOINED_COLUMNS = ("labels", "Finding Labels")
"""Label columns whose name declares findings joined by the separator (NIH's own header)."""
POSITIVE, NEGATIVE, UNCERTAIN, UNMENTIONED = 1, 0, -1, -2
CELL_CODES = {"1": 1, "1.0": 1, "0": 0, "0.0": 0, "-1": -1, "-1.0": -1, "": -2}
"""A one-column-per-finding manifest's cell values and their codes."""
CODE_NAMES = {POSITIVE: "positive", NEGATIVE: "negative", UNCERTAIN: "uncertain"}
CODE_NAMES[UNMENTIONED] = "unmentioned"
FINDING_SHARE = 0.9  # of a column's non-blank cells valid: below, metadata; above, a finding
MULTILABEL_BALANCES = {"original": "no loss weights", "class_weights": "per-finding pos_weight"}
DEFAULT_METRIC, DEFAULT_MODE = "val_mean_auroc", "max"

HOW_TO_DECLARE = (
    "for multi-label data name the column 'labels' (or NIH's 'Finding Labels'): findings "
    "joined by '{sep}', 'No Finding' for none (--label-separator sets another separator); or "
    "give one column per finding holding 1, 0, -1 (uncertain) or blank (README, Multi-label data)"
)


def _rows_text(lines: Sequence[int]) -> str:
    shown = ", ".join(map(str, lines[:8]))
    return f"rows {shown}" + (f" ... ({len(lines)} in all)" if len(lines) > 8 else "")


@dataclass
class LabelFormat:
    """How a manifest gives its labels."""

    kind: str
    """'single', 'joined' or 'columns'."""
    column: str = ""
    """The label column ('single', 'joined')."""
    findings: list[str] = field(default_factory=list)
    """Finding names in output order (empty for 'single')."""
    separator: str = DEFAULT_SEPARATOR

    @property
    def multilabel(self) -> bool:
        return self.kind != "single"

    def describe(self) -> str:
        if self.kind == "joined":
            return f"multi-label: column {self.column!r} joined by {self.separator!r}"
        if self.kind == "columns":
            return f"multi-label: one column per finding ({len(self.findings)} findings)"
        return "single-label"


def detect_format(
    path: Path, columns: list[str], rows: list[dict[str, str]], separator: str, fixed: Sequence[str]
) -> LabelFormat:
    """The manifest's label format from its columns (`fixed`: path, patient_id, split)."""
    check_label_separator(separator)
    joined = [c for c in JOINED_COLUMNS if c in columns]
    if "label" in columns and joined:
        raise ValueError(
            f"manifest {path} has both a 'label' column and {joined[0]!r}; keep 'label' for "
            f"one class per row or {joined[0]!r} for multi-label findings, not both"
        )
    if "label" in columns:
        _refuse_joined_labels(path, rows, separator)
        return LabelFormat("single", "label", separator=separator)
    if joined:
        return _joined_format(path, rows, joined[0], separator)
    findings = _finding_columns(path, columns, rows, fixed)
    if not findings:
        raise ValueError(
            f"manifest {path} has no label column and no finding columns (it has {columns}); "
            f"expected 'label' (one class per row), 'labels' / 'Finding Labels' (findings "
            f"joined by {separator!r}) or one column per finding holding 1, 0, -1 or blank"
        )
    return LabelFormat("columns", findings=findings, separator=separator)


def _refuse_joined_labels(path: Path, rows: list[dict[str, str]], separator: str) -> None:
    seps = dict.fromkeys([separator, DEFAULT_SEPARATOR])
    bad = [r for r in rows if any(s in r.get("label", "") for s in seps)]
    if bad:
        lines = [int(r["_line"]) for r in bad]
        raise ValueError(
            f"manifest {path}: {_rows_text(lines)} have labels joining findings "
            f"(e.g. {bad[0]['label']!r}), which a 'label' column (one class per row) cannot "
            f"hold; " + HOW_TO_DECLARE.format(sep=separator)
        )


def _joined_format(
    path: Path, rows: list[dict[str, str]], column: str, separator: str
) -> LabelFormat:
    names: set[str] = set()
    for r in rows:
        parts = [p.strip() for p in r[column].split(separator)]
        if not r[column] or "" in parts:
            raise ValueError(
                f"manifest {path}: row {r['_line']} has an empty finding in {column} "
                f"({r[column]!r}); write 'No Finding' for an image without findings"
            )
        if NO_FINDING in parts and len(parts) > 1:
            raise ValueError(
                f"manifest {path}: row {r['_line']} joins 'No Finding' with findings "
                f"({r[column]!r}); an image has findings or 'No Finding', not both"
            )
        names.update(p for p in parts if p != NO_FINDING)
    if not names:
        raise ValueError(f"manifest {path}: every row of {column} is 'No Finding'; need findings")
    return LabelFormat("joined", column, sorted(names), separator)


def _finding_columns(
    path: Path, columns: list[str], rows: list[dict[str, str]], fixed: Sequence[str]
) -> list[str]:
    """Columns whose cells are all 1, 0, -1 or blank (some not blank); a column that nearly is
    (a typo among findings) is refused, naming its rows."""
    findings = []
    for c in columns:
        if c in fixed:
            continue
        filled = [r for r in rows if r.get(c, "")]
        bad = [r for r in filled if r[c] not in CELL_CODES]
        if filled and not bad:
            findings.append(c)
        elif filled and len(bad) <= (1 - FINDING_SHARE) * len(filled):
            raise ValueError(
                f"manifest {path}: column {c!r} holds finding values (1, 0, -1, blank) except "
                f"in {_rows_text([int(r['_line']) for r in bad])} (e.g. {bad[0][c]!r})"
            )
    return findings


def row_codes(fmt: LabelFormat, row: dict[str, str]) -> tuple[int, ...]:
    """One code per finding of `fmt` for a manifest row (already checked by `detect_format`)."""
    if fmt.kind == "joined":
        present = {p.strip() for p in row[fmt.column].split(fmt.separator)}
        return tuple(POSITIVE if f in present else NEGATIVE for f in fmt.findings)
    return tuple(CELL_CODES[row.get(f, "")] for f in fmt.findings)


def joined_text(codes: Sequence[int], findings: Sequence[str], separator: str = "|") -> str:
    """A row's positive findings joined (`No Finding` for none): its stratum and its label."""
    names = [f for f, c in zip(findings, codes, strict=True) if c == POSITIVE]
    return separator.join(names) or NO_FINDING


# ------------------------------------------------------------------------------ counts, splits


def code_counts(codes: np.ndarray, findings: Sequence[str]) -> dict[str, dict[str, int]]:
    """finding -> {'positive', 'negative', 'uncertain', 'unmentioned'} image counts."""
    codes = np.asarray(codes).reshape(-1, len(findings))
    return {
        f: {name: int((codes[:, j] == code).sum()) for code, name in CODE_NAMES.items()}
        for j, f in enumerate(findings)
    }


def strata(codes: np.ndarray) -> np.ndarray:
    """A stratum per image for scikit-learn's single-label stratification: the image's rarest
    positive finding (frequencies over these images), or one more stratum for none. Rare
    findings are what a split can lose, so they are what is kept in proportion."""
    codes = np.asarray(codes)
    positive = codes == POSITIVE
    frequency = positive.sum(0).astype(np.float64)
    rank = np.where(positive, frequency[None, :], np.inf)
    return np.where(positive.any(1), rank.argmin(1), codes.shape[1]).astype(np.int64)


# ------------------------------------------------------------------------------ training


def check_balance(balance: str) -> None:
    """Over- and undersampling draw by class, which multi-label images do not have."""
    if balance not in MULTILABEL_BALANCES:
        raise ValueError(
            f"balance {balance!r} resamples images by class, which multi-label images (several "
            f"findings each) do not have; expected one of {sorted(MULTILABEL_BALANCES)} "
            "('class_weights' weighs each finding's positives by its negatives / positives)"
        )


def check_policy(policy: str) -> None:
    if policy not in UNCERTAINTY_POLICIES:
        raise ValueError(
            f"unknown uncertainty {policy!r}; expected one of {sorted(UNCERTAINTY_POLICIES)}"
        )


def train_targets(codes: torch.Tensor, policy: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(targets, mask), float: positive 1, negative and unmentioned 0; uncertain 1 (`ones`),
    0 (`zeros`) or left out of the loss with mask 0 (`ignore`)."""
    check_policy(policy)
    targets = (codes == POSITIVE).float()
    mask = torch.ones_like(targets)
    uncertain = codes == UNCERTAIN
    if policy == "ones":
        targets = torch.where(uncertain, torch.ones_like(targets), targets)
    elif policy == "ignore":
        mask = (~uncertain).float()
    return targets, mask


def pos_weights(codes: torch.Tensor, policy: str) -> torch.Tensor:
    """Per finding: counted negatives / counted positives of the training labels (torch's
    `BCEWithLogitsLoss(pos_weight=...)` recipe); 1 for a finding without positives."""
    targets, mask = train_targets(codes, policy)
    positives = (targets * mask).sum(0)
    negatives = ((1 - targets) * mask).sum(0)
    return torch.where(
        positives > 0, negatives / positives.clamp_min(1), torch.ones_like(positives)
    )


def multilabel_loss(
    logits: torch.Tensor, codes: torch.Tensor, policy: str, pos_weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Binary cross-entropy with logits, averaged over the labels the policy counts."""
    targets, mask = train_targets(codes, policy)
    per_label = F.binary_cross_entropy_with_logits(
        logits.float(), targets, pos_weight=pos_weight, reduction="none"
    )
    return (per_label * mask).sum() / mask.sum().clamp_min(1.0)


def epoch_order(n: int, generator: torch.Generator) -> torch.Tensor:
    """Every training image once per epoch, shuffled (the multi-label 'original' order)."""
    return torch.randperm(n, generator=generator)


# ------------------------------------------------------------------------------ metrics


def eval_targets(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(truth 0/1, counted): uncertain labels are left out of every metric."""
    codes = np.asarray(codes)
    return (codes == POSITIVE).astype(np.int64), codes != UNCERTAIN


def finding_scores(
    codes: np.ndarray, probs: np.ndarray, ap: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Per-finding AUROC and average precision (scikit-learn; AP NaN when not `ap`, which a
    bootstrap saves); NaN where the counted labels hold one class only."""
    truth, counted = eval_targets(codes)
    aurocs, aps = [], []
    for j in range(truth.shape[1]):
        y, p = truth[counted[:, j], j], np.asarray(probs)[counted[:, j], j]
        if len(np.unique(y)) < 2:
            aurocs.append(np.nan)
            aps.append(np.nan)
            continue
        aurocs.append(roc_auc_score(y, p))
        aps.append(average_precision_score(y, p) if ap else np.nan)
    return np.array(aurocs, dtype=np.float64), np.array(aps, dtype=np.float64)


def multilabel_metrics(
    codes: np.ndarray, probs: np.ndarray, findings: Sequence[str], prefix: str
) -> dict[str, float]:
    """`{prefix}_mean_auroc`, `_mean_ap` (over the findings with both classes), per finding
    `_auroc_<key>` / `_ap_<key>` (NaN with one class), `_scored_findings` and `_label_acc`
    (share of counted labels right at 0.5)."""
    aurocs, aps = finding_scores(codes, probs)
    truth, counted = eval_targets(codes)
    scored = ~np.isnan(aurocs)
    out = {
        f"{prefix}_mean_auroc": float(aurocs[scored].mean()) if scored.any() else float("nan"),
        f"{prefix}_mean_ap": float(aps[scored].mean()) if scored.any() else float("nan"),
        f"{prefix}_scored_findings": float(scored.sum()),
        f"{prefix}_label_acc": float(((probs >= 0.5) == truth)[counted].mean()),
    }
    for name, auroc, ap in zip(findings, aurocs, aps, strict=True):
        out[f"{prefix}_auroc_{class_key(name)}"] = float(auroc)
        out[f"{prefix}_ap_{class_key(name)}"] = float(ap)
    return out


def metric_keys(findings: Sequence[str], prefix: str = "val") -> list[str]:
    """Every validation metric a multi-label trial reports (besides `val_loss`)."""
    keys = [f"{prefix}_{k}" for k in ("mean_auroc", "mean_ap", "label_acc", "loss")]
    for f in findings:
        keys += [f"{prefix}_auroc_{class_key(f)}", f"{prefix}_ap_{class_key(f)}"]
    return keys


def youden_thresholds(codes: np.ndarray, probs: np.ndarray) -> list[float]:
    """Per finding, the probability threshold maximising Youden's J (sensitivity + specificity
    - 1) on these (validation) labels; 0.5 for a finding with one class."""
    truth, counted = eval_targets(codes)
    out = []
    for j in range(truth.shape[1]):
        y, p = truth[counted[:, j], j], np.asarray(probs)[counted[:, j], j]
        if len(np.unique(y)) < 2:
            out.append(0.5)
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UndefinedMetricWarning)
            fpr, tpr, thresholds = roc_curve(y, p)
        best = int(np.argmax(tpr - fpr))
        out.append(float(min(thresholds[best], 1.0)))
    return out
