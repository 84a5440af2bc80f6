"""Regenerate the seed study's results section from a sweep on disk.

    python -m analysis.report EXPERIMENT_DIR [--out DIR] [--top-k K] [--device D] [--wandb]

Loads the trials (no live Ray), picks the best trial of each balance strategy, each
architecture and overall by the sweep's metric, evaluates each one's best checkpoint on the test
split without TTA, runs every TTA policy (and the one chosen on validation) on the overall best,
and writes `report.md`, a self-contained `report.html` (figures embedded as base64 PNG), the
figures as PNG and every table as CSV into `--out` (default `EXPERIMENT_DIR/report`).

The evaluation is `analysis.evaluate`, the document and its rendering `analysis.document`, the
sections' words `analysis.prose`; this module puts them together and holds the CLI.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from cxr_tune import exit_status, prog
from trainables.experiment import DEFAULT_WANDB_PROJECT, WANDB_MODES
from trainables.experiment import wandb_mode as resolve_wandb_mode

if TYPE_CHECKING:  # the evaluation stack (torch, pandas, matplotlib) loads when a report runs
    import pandas as pd

    from analysis.document import Document
    from analysis.load import Experiment


def build_report(
    exp: Experiment,
    out: Path,
    top_k: int = 3,
    device: str | None = None,
    resamples: int = 1000,
) -> tuple[Document, dict[str, pd.DataFrame]]:
    """Evaluate, tabulate and plot; returns the document (not yet written) and the tables."""
    import torch

    from analysis import audit, calibration, leakage, prose, reruns, tables
    from analysis.document import Document
    from analysis.evaluate import Evaluator
    from analysis.multilabel import is_multilabel, multilabel_report
    from analysis.tta import TTA_POLICIES
    from trainables.balance import BALANCES
    from trainables.markdown import md_code
    from trainables.models import MODELS

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    best = exp.best_trial()
    if best is None:
        reasons = "; ".join(exp.missing) or "no trial reported a checkpoint"
        raise ValueError(f"experiment {exp.path} has no trial with a usable checkpoint: {reasons}")
    if is_multilabel(best):  # per-finding AUROC tables instead of the seed study's sections
        return multilabel_report(exp, out, device, resamples)
    evaluator = Evaluator(device)
    started = time.perf_counter()
    balances, models = list(BALANCES), list(MODELS)
    by_balance = prose.best_by(exp, "balance", balances)
    by_model = prose.best_by(exp, "model", models)
    best_eval = evaluator.evaluate(best)
    ev_balance = {g: evaluator.evaluate(t) if t else None for g, t in by_balance.items()}
    ev_model = {g: evaluator.evaluate(t) if t else None for g, t in by_model.items()}
    chosen, selection = evaluator.add_tta(best_eval, [p for p in TTA_POLICIES if p != "none"])
    classes = best_eval.classes

    t = {
        "table1_balance": tables.balance_table(exp, ev_balance, balances),
        "table2_balance_per_class": tables.balance_class_table(exp, ev_balance, balances, classes),
        "table3_architectures": tables.architecture_table(exp, ev_model, models, classes),
    }
    t["table4_tta"], t["table4_tta_flips"] = tables.tta_table(best_eval, chosen)
    t["table5_cnn_size"] = tables.size_table(exp, ev_model, classes)
    t["tta_selection_val"] = selection
    t["trials"] = tables.trials_table(exp)
    t["headline"] = prose.headline_table(best_eval, chosen)

    doc = Document(out)
    prose.intro_section(doc, exp, best_eval, device, chosen)
    prose.data_section(doc, exp)
    prose.balance_section(doc, t)
    prose.architecture_section(doc, t)
    prose.tta_section(doc, t, best_eval, chosen)
    t["calibration"] = calibration.calibration_section(doc, exp, evaluator, best_eval).table()
    audit.audit_section(doc, evaluator, best_eval)
    t.update(leakage.leakage_section(doc, best_eval.trial.config, exp.path))
    prose.figures_section(doc, exp, evaluator, best_eval, chosen, top_k)
    prose.sweep_section(doc, exp, t)
    reruns.rerun_section(doc, exp, t)
    doc.text(f"Evaluation took {time.perf_counter() - started:.0f} s on {md_code(device)}.")
    return doc, t


def record_in_bundle(exp: Experiment, t: dict[str, pd.DataFrame], report_dir: Path) -> str:
    """Write the TTA policy chosen on validation and the test metrics (95 % intervals) into the
    experiment's exported bundle (bundle.json `tta` and `evaluation`, and its model card), when
    that bundle holds the report's best trial; returns what was done, for the console."""
    from trainables.bundle import read_bundle_meta, update_bundle_meta
    from trainables.experiment import EXPORT_DIR

    bundle_dir = exp.path / EXPORT_DIR
    try:
        meta = read_bundle_meta(bundle_dir)
    except ValueError:
        return f"no bundle at {bundle_dir} to record the chosen TTA policy in"
    head = t["headline"]
    trial = str(head["trial"].iloc[0])
    if meta.get("source", {}).get("trial_id") != trial:
        return (
            f"bundle {bundle_dir} holds another trial than the report's best ({trial}); unchanged"
        )
    tta4 = t["table4_tta"]
    chosen = str(tta4.loc[tta4["chosen_on_val"].astype(bool), "policy"].iloc[0])
    selection = t["tta_selection_val"].set_index("policy")
    metrics = [
        {"metric": m, "tta": row["TTA policy"], **{k: float(row[f"test_{m}{s}"]) for k, s in _CI}}
        for row in head.to_dict("records")
        for m in ("acc", "precision")
    ]
    update_bundle_meta(
        bundle_dir,
        {
            "tta": {
                "policy": chosen,
                "chosen_by": f"analysis.report: highest validation accuracy of "
                f"{len(selection)} candidates, ties to the cheapest",
                "val_acc": float(selection.loc[chosen, "val_acc"]),
            },
            "evaluation": {
                "split": "test",
                "data": next(
                    (r.config.data for r in exp.trials if r.trial_id == trial and r.config), None
                ),
                "images": int(head["test images"].iloc[0]),
                "interval": "95 % percentile bootstrap over test images",
                "report": str(report_dir / "report.html"),
                "metrics": metrics,
            },
        },
    )
    return f"recorded TTA policy {chosen} and the test metrics in {bundle_dir}"


_CI = (("value", ""), ("low", "_low"), ("high", "_high"))


def log_to_wandb(
    exp: Experiment, doc: Document, t: dict[str, pd.DataFrame], mode: str | None = None
) -> str:
    """Log every table and figure as a `report` run in the sweep's W&B group, next to the
    trials' runs (EXPERIMENT/wandb/, so one `wandb sync` uploads all); the mode is W&B's own
    rule (`trainables.experiment.wandb_mode`). Returns the run's local directory."""
    import wandb

    record = exp.record
    run = wandb.init(
        project=record.wandb_project if record else DEFAULT_WANDB_PROJECT,
        name=f"report-{exp.name}",
        group=exp.name,
        job_type="report",
        tags=["report"],
        dir=str(exp.path),
        mode=resolve_wandb_mode(mode),
        config={"experiment": record.wandb_config()} if record else {},
    )
    try:
        for name, table in t.items():
            run.log({name: wandb.Table(dataframe=table.astype(object).where(table.notna(), None))})
        for path in doc.figures:
            run.log({path.stem: wandb.Image(str(path))})
        return str(run.dir)
    finally:
        run.finish()
        # finish() can return before W&B's service has written the run file; teardown waits
        # for it, so the offline run is complete when the command ends.
        wandb.teardown()


def run_report(
    experiment: str | Path,
    out: str | Path | None = None,
    top_k: int = 3,
    device: str | None = None,
    wandb: bool = False,
    wandb_mode: str | None = None,
    resamples: int = 1000,
) -> tuple[Experiment, Document, dict[str, pd.DataFrame]]:
    """Everything `python -m analysis.report` does; returns the loaded experiment, the written
    document and its tables."""
    from analysis.document import write_report
    from analysis.load import load_experiment

    if top_k < 1:
        raise ValueError(f"--top-k must be at least 1, got {top_k}")
    if resamples < 100:
        raise ValueError(f"--resamples must be at least 100, got {resamples}")
    if wandb:
        resolve_wandb_mode(wandb_mode)  # a bad WANDB_MODE fails before the evaluation runs
    exp = load_experiment(experiment)
    out = Path(out) if out else exp.path / "report"
    out.mkdir(parents=True, exist_ok=True)
    print(
        f"{exp.name}: {len(exp.trials)} trials, {len(exp.usable())} with checkpoints; "
        f"metric {exp.metric} ({exp.mode})"
    )
    for note in exp.missing:
        print(f"  missing: {note}")
    doc, t = build_report(exp, out, top_k, device, resamples)
    md, page = write_report(doc, f"cxr-tune results: {exp.name}")
    print(f"wrote {md}, {page}, {len(doc.csvs)} tables (CSV) and {len(doc.figures)} figures")
    if "ml_auroc" in t:
        from analysis import multilabel

        print(multilabel.record_in_bundle(exp, t, out))
    else:
        print(record_in_bundle(exp, t, out))
    if wandb:
        print(f"logged to W&B: {log_to_wandb(exp, doc, t, wandb_mode)}")
    return exp, doc, t


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=prog("analysis.report"),
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("experiment", help="the sweep's STORAGE/NAME directory")
    parser.add_argument("--out", help="output directory (default EXPERIMENT/report)")
    parser.add_argument("--top-k", type=int, default=3, help="trials in the curves figure")
    parser.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    parser.add_argument(
        "--resamples",
        type=int,
        default=1000,
        help="bootstrap resamples of a multi-label report's per-finding AUROC intervals",
    )
    parser.add_argument(
        "--wandb", action="store_true", help="also log to the sweep's W&B group, as a report run"
    )
    parser.add_argument(
        "--wandb-mode",
        choices=WANDB_MODES,
        help="implies --wandb; default: WANDB_MODE, else online when a W&B key is configured "
        "(WANDB_API_KEY or `wandb login`), else offline",
    )
    args = parser.parse_args(argv)
    try:
        run_report(
            args.experiment,
            args.out,
            args.top_k,
            args.device,
            args.wandb or bool(args.wandb_mode),
            args.wandb_mode,
            args.resamples,
        )
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(exit_status(main))
