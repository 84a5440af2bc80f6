"""The report's leakage section: patients per split, patients found in two splits, and
near-duplicate images across train / validation / test (`trainables.leakage`). It reads the
audit the sweep's pre-flight kept in the experiment (the one summary.json holds under
`leakage`); only an experiment without one is audited here (once: the result is cached with
the data), with progress lines on stderr."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pandas as pd

from analysis.document import Document
from trainables.config import TrialConfig
from trainables.leakage import LEAKAGE_FILE, find_audit, leakage_for_config, parse_leakage_file

SHOWN = 20  # pairs listed in the report (all of them go to the CSV)


def leakage_tables(leakage: dict[str, Any]) -> dict[str, pd.DataFrame]:
    """Patients per split, shared patients and near-duplicate pairs as tables."""
    per = pd.DataFrame([{"split": s, **v} for s, v in leakage["patients"].items()])
    shared = pd.DataFrame(
        [{"patient": p["patient"], "splits": ", ".join(p["splits"])} for p in
         leakage["patients_in_two_splits"]],
        columns=["patient", "splits"],
    )  # fmt: skip
    pairs = pd.DataFrame(
        leakage["near_duplicates"], columns=["a_split", "a", "b_split", "b", "bits"]
    )
    return {"leakage_patients": per, "leakage_shared": shared, "leakage_pairs": pairs}


def saved_audit(experiment_dir: Path, cfg: TrialConfig) -> dict[str, Any] | None:
    """The pre-flight's audit of `cfg`'s data kept in the experiment, or None (none kept, or
    it failed then)."""
    path = Path(experiment_dir) / LEAKAGE_FILE
    if not path.is_file():
        return None
    audit = find_audit(parse_leakage_file(path.read_text(), str(path)), cfg)
    return audit if audit is not None and "error" not in audit else None


def leakage_section(
    doc: Document, cfg: TrialConfig | None, experiment_dir: Path
) -> dict[str, pd.DataFrame]:
    """Adds the leakage section for the data `cfg` trains on; returns its tables."""
    doc.heading("Leakage between splits")
    if cfg is None:
        doc.text("Leakage not checked: the best trial's params.json is not a valid config.")
        return {}
    leakage = saved_audit(experiment_dir, cfg)
    if leakage is None:
        print(f"leakage audit of {cfg.data} (not in {LEAKAGE_FILE})", file=sys.stderr)
        leakage = leakage_for_config(
            cfg, progress=lambda text: print(f"  leakage audit: {text}", file=sys.stderr)
        )
    t = leakage_tables(leakage)
    shared, pairs = len(t["leakage_shared"]), leakage["near_duplicate_count"]
    no_ids = sum(v["images_without_patient_id"] for v in leakage["patients"].values())
    ids = (
        f"{no_ids} images have no patient id (each counts as its own patient). "
        if no_ids
        else "Every image has a patient id. "
    )
    doc.text(
        f"{ids}Patients found in two splits: **{shared}**"
        + (" (no patient id is in two splits)." if not shared else " (listed below).")
        + f" Near-duplicate image pairs across splits: **{pairs:,}** of "
        f"{leakage['pairs_checked']:,} cross-split pairs (an exact search: every pair within "
        f"the rule is counted). Rule: {leakage['rule']}."
    )
    doc.table("leakage_patients", "Images and patients per split", t["leakage_patients"])
    if shared:
        doc.table("leakage_shared", "Patients in two splits", t["leakage_shared"])
    if pairs:
        doc.table(
            "leakage_pairs",
            f"Near-duplicate pairs across splits (closest {SHOWN}; the closest "
            f"{len(t['leakage_pairs'])} of {pairs:,} in the CSV)",
            t["leakage_pairs"].head(SHOWN),
        )
        doc.csv("leakage_pairs_all", t["leakage_pairs"])
    return t
