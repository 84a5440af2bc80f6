"""MODEL_CARD.md of an exported bundle, rendered from its bundle.json (one source of truth).

What data the model saw, its validation metrics (and test metrics with 95 % intervals once
`analysis.report` has evaluated it), the TTA policy and calibration it is served with, the code
version that made it, the licence and its intended use: research only.
"""

from __future__ import annotations

import json
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

MODEL_CARD_FILE = "MODEL_CARD.md"
PACKAGE = "cxr-tune"
LICENCE = "MIT (the LICENSE file of the cxr-tune repository)"
INTENDED_USE = (
    "Research use only. This model is not a medical device and must not be used for clinical "
    "decisions, diagnosis, triage or screening. It was trained and selected on the data named "
    "below only; its behaviour on other scanners, populations or image pipelines is unknown."
)


def code_version() -> dict[str, str | None]:
    """The installed package version and, when this source tree is a git checkout, its commit
    (with '-dirty' when it has uncommitted changes); None where unknown."""
    try:
        version: str | None = metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        version = None
    root = Path(__file__).resolve().parents[1]
    try:
        commit = _git(root, "rev-parse", "HEAD")
        dirty = _git(root, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        commit, dirty = None, ""
    if commit and dirty:
        commit += "-dirty"
    return {"package": PACKAGE, "version": version, "git_commit": commit}


def _git(root: Path, *args: str) -> str:
    proc = subprocess.run(
        ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=5, check=True
    )
    return proc.stdout.strip()


_METRIC_NAMES = {"acc": "accuracy", "precision": "macro precision"}


def _pct(value: Any) -> str:
    return "—" if not isinstance(value, (int, float)) else f"{100 * float(value):.1f} %"


def _metrics_lines(meta: dict[str, Any]) -> list[str]:
    source = meta.get("source", {})
    lines = []
    if source:
        experiment = Path(str(source.get("experiment"))).name
        lines.append(
            f"Selected by `{source.get('metric')}` ({source.get('mode')}) = "
            f"{source.get('value')} on the validation split: trial `{source.get('trial_id')}`, "
            f"`{source.get('checkpoint')}` of experiment `{experiment}`."
        )
    val = meta.get("metrics", {})
    shown = {k: v for k, v in val.items() if k.startswith("val_") and isinstance(v, float)}
    if shown:
        lines.append("")
        lines.append("| validation metric (selected epoch) | value |\n|---|---|")
        lines.extend(f"| `{k}` | {v:.4f} |" for k, v in sorted(shown.items()))
    test = meta.get("evaluation", {})
    if test:
        lines.append("")
        lines.append(
            f"Test split ({test.get('images')} images of `{test.get('data')}`, evaluated once by "
            f"`analysis.report`), 95 % percentile-bootstrap intervals:"
        )
        lines.append("")
        lines.append("| test metric | TTA | value [95 % CI] |\n|---|---|---|")
        for row in test.get("metrics", []):
            name = _METRIC_NAMES.get(row["metric"], row["metric"])
            lines.append(
                f"| {name} | `{row['tta']}` | {_pct(row['value'])} "
                f"[{_pct(row['low'])}, {_pct(row['high'])}] |"
            )
    else:
        lines.append("")
        lines.append(
            "No test-split metrics yet: `python -m analysis.report EXPERIMENT` evaluates the "
            "model on test (with 95 % intervals) and records them here."
        )
    return lines


def _temperature(meta: dict[str, Any]) -> float:
    cal = meta.get("calibration")
    return float(cal.get("temperature", 1.0)) if isinstance(cal, dict) else 1.0


def _calibration(meta: dict[str, Any]) -> str:
    cal = meta.get("calibration")
    if not isinstance(cal, dict):
        return "no calibration fitted: 1.0 leaves the softmax unchanged"
    before, after = cal.get("ece_before"), cal.get("ece_after")
    ece = (
        f"; validation ECE {before:.3f} before, {after:.3f} after"
        if isinstance(before, (int, float)) and isinstance(after, (int, float))
        else ""
    )
    fitted = f"temperature scaling fitted on the {cal.get('fitted_on', 'validation')} split{ece}"
    return f"{fitted}; {cal['decision']}" if cal.get("decision") else fitted


def render_model_card(meta: dict[str, Any], config: dict[str, Any]) -> str:
    """The model card's Markdown for a bundle's bundle.json (`meta`) and config.json."""
    prep = meta.get("preprocessing", {})
    tta = meta.get("tta", {})
    version = meta.get("code_version", {})
    data_report = meta.get("data") or meta.get("data_report")
    lines = [
        f"# Model card: {config.get('model')} ({', '.join(meta.get('classes', []))})",
        "",
        "## Intended use",
        "",
        INTENDED_USE,
        "",
        "## Data",
        "",
        f"Trained on `{config.get('data')}` (validation: a seeded, stratified "
        f"{config.get('val_fraction')} of train, split seed {config.get('split_seed')}, grouped "
        "by patient where ids exist). `phantom:*` data are synthetic chest X-ray phantoms, not "
        "patient images.",
    ]
    if data_report:
        lines += ["", "Data report (images per class and split, skipped files):", ""]
        text = data_report if isinstance(data_report, str) else json.dumps(data_report, indent=1)
        lines += ["```", text.strip(), "```"]
    lines += ["", "## Metrics", "", *_metrics_lines(meta)]
    lines += [
        "",
        "## Serving",
        "",
        f"Input: `image` float32 (batch, 1, {prep.get('image_size')}, {prep.get('image_size')}); "
        "the preprocessing steps are listed in `bundle.json` (`preprocessing.steps`) and "
        "reproduced by the README's reference snippet. Output: `logits`; probabilities are "
        f"`softmax(logits / temperature)` with temperature {_temperature(meta):.4g} "
        f"({_calibration(meta)}).",
        "",
        f"TTA policy: `{tta.get('policy', 'none')}` ({tta.get('chosen_by', 'not chosen')}); "
        f"`cxr-tune predict BUNDLE IMAGE --tta` applies it.",
        "",
        "## Provenance",
        "",
        f"Code: {version.get('package', PACKAGE)} {version.get('version') or '(version unknown)'}"
        f", git commit {version.get('git_commit') or 'unknown'}. Config: `config.json`.",
        "",
        "## Licence",
        "",
        LICENCE + ".",
        "",
    ]
    return "\n".join(lines)
