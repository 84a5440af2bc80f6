"""MODEL_CARD.md of an exported bundle, rendered from its bundle.json (one source of truth).

What data the model saw, its validation metrics (and test metrics with 95 % intervals once
`analysis.report` has evaluated it), the TTA policy and calibration it is served with, the code
version that made it, the licence and its intended use: research only. Every value taken from
bundle.json or config.json goes in through `trainables.markdown`: the card shows a class
or path as spelled and no name can add a link, a tag or a heading to it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cxr_tune import PACKAGE
from trainables.markdown import md_cell, md_code, md_text
from trainables.selection import describe

MODEL_CARD_FILE = "MODEL_CARD.md"
LICENCE = "MIT (the LICENSE file of the cxr-tune repository)"
INTENDED_USE = (
    "Research use only. This model is not a medical device and must not be used for clinical "
    "decisions, diagnosis, triage or screening. It was trained and selected on the data named "
    "below only; its behaviour on other scanners, populations or image pipelines is unknown."
)


_METRIC_NAMES = {"acc": "accuracy", "precision": "macro precision"}


def _pct(value: Any) -> str:
    return "—" if not isinstance(value, (int, float)) else f"{100 * float(value):.1f} %"


def _metrics_lines(meta: dict[str, Any]) -> list[str]:
    source = meta.get("source", {})
    lines = []
    if source:
        experiment = Path(str(source.get("experiment"))).name
        lines.append(
            f"Selected by {md_code(source.get('metric'))} ({md_text(source.get('mode'))}) = "
            f"{md_text(source.get('value'))} on the validation split: trial "
            f"{md_code(source.get('trial_id'))}, {md_code(source.get('checkpoint'))} of "
            f"experiment {md_code(experiment)}."
        )
    selection = meta.get("selection")
    if selection:  # how the checkpoint was chosen: mean over seeds, or one seed's best epoch
        lines.append("")
        line = describe(selection)
        lines.append(md_text(line[:1].upper() + line[1:]) + ".")
    val = meta.get("metrics", {})
    shown = {k: v for k, v in val.items() if k.startswith("val_") and isinstance(v, float)}
    if shown:
        lines.append("")
        lines.append("| validation metric (selected epoch) | value |\n|---|---|")
        lines.extend(f"| {md_cell(k)} | {v:.4f} |" for k, v in sorted(shown.items()))
    test = meta.get("evaluation", {})
    if test:
        lines.append("")
        lines.append(
            f"Test split ({md_text(test.get('images'))} images of {md_code(test.get('data'))}, "
            "evaluated once by `analysis.report`), 95 % percentile-bootstrap intervals:"
        )
        lines.append("")
        lines.append("| test metric | TTA | value [95 % CI] |\n|---|---|---|")
        for row in test.get("metrics", []):
            name = _METRIC_NAMES.get(row["metric"], row["metric"])
            lines.append(
                f"| {md_cell(name)} | {md_cell(row['tta'])} | {_pct(row['value'])} "
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
    split = md_text(cal.get("fitted_on", "validation"))
    fitted = f"temperature scaling fitted on the {split} split{ece}"
    return f"{fitted}; {md_text(cal['decision'])}" if cal.get("decision") else fitted


SKIPPED_SHOWN = 20  # skipped files listed in the card; bundle.json `data` holds them all


def _data_report_lines(report: Any) -> list[str]:
    """The sweep's data report (a `trainables.data.DataReport` dict) as Markdown: where the
    data came from, images per class and split, and the files skipped with their reasons."""
    if not isinstance(report, dict):
        return [f"- {md_text(line)}" for line in str(report).strip().splitlines()]
    classes = [str(c) for c in report.get("classes", [])]
    lines = [
        f"Data report: {md_code(report.get('root'))} ({md_text(report.get('layout'))}), "
        f"{len(classes)} classes, {md_text(report.get('image_size'))} px "
        f"{md_text(report.get('resize_mode'))}; "
        + ("positive images per finding" if report.get("multilabel") else "images per class")
        + " and split:",
        "",
        "| split | " + " | ".join(map(md_cell, classes)) + " | total |",
        "|---" * (len(classes) + 2) + "|",
    ]
    for split, counts in (report.get("counts") or {}).items():
        values = [counts.get(c, 0) for c in classes]
        total = sum(v for v in values if isinstance(v, (int, float)))
        lines.append(f"| {md_cell(split)} | " + " | ".join(map(md_cell, [*values, total])) + " |")
    skipped = report.get("skipped") or []
    if skipped:
        lines += ["", f"{len(skipped)} file(s) skipped:", ""]
        lines += [
            f"- {md_code(s.get('path'))}: {md_text(s.get('reason'))}"
            for s in skipped[:SKIPPED_SHOWN]
            if isinstance(s, dict)
        ]
        if len(skipped) > SKIPPED_SHOWN:
            lines.append(f"- and {len(skipped) - SKIPPED_SHOWN} more (bundle.json `data`)")
    return lines


def _start_line(meta: dict[str, Any], config: dict[str, Any]) -> str:
    """Which weights the model started from and how it is rebuilt (their terms apply too)."""
    weights = meta.get("preprocessing", {}).get("weights", {}).get("name", "none")
    start = {
        "none": "random initialisation",
        "imagenet": "ImageNet-pretrained weights (torchvision or timm; their terms apply)",
        "cxr": "torchxrayvision's chest X-ray weights (Apache-2.0; inputs scaled to "
        "[-1024, 1024] inside the model)",
    }.get(weights, md_text(weights))
    source = meta.get("model_source", {})
    rebuilt = (
        f"the builder {md_code(source.get('model'))} of the plugin file "
        f"{md_code(source.get('plugin'))} (sha256 {md_text(str(source.get('sha256'))[:12])})"
        if source.get("kind") == "plugin"
        else md_code(config.get("model"))
    )
    return f"Started from {start}; the model is rebuilt from {rebuilt}."


def _output_text(meta: dict[str, Any]) -> str:
    if isinstance(meta.get("multilabel"), dict):
        return "probabilities are `sigmoid(logits)`, one independent probability per finding."
    return (
        f"probabilities are `softmax(logits / temperature)` with temperature "
        f"{_temperature(meta):.4g} ({_calibration(meta)})."
    )


def _multilabel_lines(meta: dict[str, Any]) -> list[str]:
    """A multi-label model: its findings, uncertainty policy and per-finding thresholds."""
    ml = meta.get("multilabel")
    if not isinstance(ml, dict):
        return []
    lines = [
        "",
        f"Multi-label: {len(ml.get('findings', []))} findings, one sigmoid output each; "
        f"uncertain labels trained with policy {md_code(ml.get('uncertainty'))}; label format "
        f"{md_code(ml.get('label_format'))}. Thresholds ({md_text(ml.get('threshold_rule'))}):",
        "",
        "| finding | threshold | val AUROC |",
        "|---|---|---|",
    ]
    aurocs = ml.get("val_auroc", {})
    for f, t in ml.get("thresholds", {}).items():
        a = aurocs.get(f)
        shown = "n/a" if not isinstance(a, (int, float)) else f"{a:.3f}"
        lines.append(f"| {md_cell(f)} | {md_cell(f'{t:.3f}')} | {shown} |")
    return lines


def render_model_card(meta: dict[str, Any], config: dict[str, Any]) -> str:
    """The model card's Markdown for a bundle's bundle.json (`meta`) and config.json."""
    prep = meta.get("preprocessing", {})
    tta = meta.get("tta", {})
    version = meta.get("code_version", {})
    data_report = meta.get("data") or meta.get("data_report")
    lines = [
        f"# Model card: {md_text(config.get('model'))} "
        f"({', '.join(map(md_text, meta.get('classes', [])))})",
        "",
        "## Intended use",
        "",
        INTENDED_USE,
        "",
        "## Data",
        "",
        f"Trained on {md_code(config.get('data'))} (validation: a seeded, stratified "
        f"{md_text(config.get('val_fraction'))} of train, split seed "
        f"{md_text(config.get('split_seed'))}, grouped "
        "by patient where ids exist). `phantom:*` data are synthetic chest X-ray phantoms, not "
        "patient images.",
    ]
    if data_report:
        lines += ["", *_data_report_lines(data_report)]
    lines += ["", "## Metrics", "", *_metrics_lines(meta), *_multilabel_lines(meta)]
    lines += [
        "",
        "## Serving",
        "",
        f"Input: `image` float32 (batch, 1, {md_text(prep.get('image_size'))}, "
        f"{md_text(prep.get('image_size'))}); "
        "the preprocessing steps are listed in `bundle.json` (`preprocessing.steps`) and "
        "reproduced by the README's reference snippet. Output: `logits`; " + _output_text(meta),
        "",
        f"TTA policy: {md_code(tta.get('policy', 'none'))} "
        f"({md_text(tta.get('chosen_by', 'not chosen'))}); "
        f"`cxr-tune predict BUNDLE IMAGE --tta` applies it.",
        "",
        "## Provenance",
        "",
        f"Code: {md_text(version.get('package', PACKAGE))} "
        f"{md_text(version.get('version') or '(version unknown)')}, git commit "
        f"{md_text(version.get('git_commit') or 'unknown')}. Config: `config.json`.",
        "",
        _start_line(meta, config),
        "",
        "## Licence",
        "",
        LICENCE + ".",
        "",
    ]
    return "\n".join(lines)
