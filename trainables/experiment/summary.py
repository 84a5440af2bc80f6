"""The end-of-sweep summary, `NAME/summary.json` (search.summary builds its content)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from trainables.cache import atomic_write_text

SUMMARY_FILE = "summary.json"


def write_summary(experiment_dir: Path, summary: Mapping[str, Any]) -> Path:
    path = Path(experiment_dir) / SUMMARY_FILE
    atomic_write_text(path, json.dumps(summary, indent=2, default=str) + "\n")
    return path


def read_summary_rows(experiment_dir: Path) -> dict[str, dict[str, Any]]:
    """summary.json's per-trial rows by trial id; {} when absent or unreadable (it is optional:
    an interrupted driver never wrote it)."""
    try:
        summary = json.loads((Path(experiment_dir) / SUMMARY_FILE).read_text())
        return {str(r["trial_id"]): r for r in summary.get("trial_rows", []) if "trial_id" in r}
    except (OSError, json.JSONDecodeError, TypeError, AttributeError, KeyError):
        return {}
