"""The driver's pre-flight data reports, `NAME/data_report.json` (schema `DATA_REPORT_VERSION`).

One `trainables.data.DataReport.to_dict()` per dataset the sweep's space can load (one per
preprocessing setting), the first being the run's own; plain dicts here so this module stays
free of torch (`DataReport.from_dict` types them). search.plan writes `data_report_json`'s text
through search.storage (a local folder or a URI)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

DATA_REPORT_FILE = "data_report.json"
DATA_REPORT_VERSION = 1


def data_report_json(reports: Iterable[Mapping[str, Any]]) -> str:
    body = {"schema_version": DATA_REPORT_VERSION, "datasets": [dict(r) for r in reports]}
    return json.dumps(body, indent=2, default=str) + "\n"


def parse_data_report(text: str, where: str = DATA_REPORT_FILE) -> list[dict[str, Any]]:
    try:
        body = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{where} is not valid JSON: {err}") from None
    if not isinstance(body, dict) or not isinstance(body.get("datasets"), list):
        raise ValueError(f"{where} must hold an object with a 'datasets' list")
    if body.get("schema_version", 1) > DATA_REPORT_VERSION:
        raise ValueError(f"{where}: schema_version {body['schema_version']!r} is newer than this")
    return [d for d in body["datasets"] if isinstance(d, dict)]


def read_data_report(experiment_dir: Path) -> list[dict[str, Any]]:
    """The saved data reports; [] when the experiment has none (written before it existed)."""
    path = Path(experiment_dir) / DATA_REPORT_FILE
    if not path.is_file():
        return []
    return parse_data_report(path.read_text(), str(path))
