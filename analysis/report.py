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
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch

from analysis import prose, reruns, tables
from analysis.document import Document, write_report
from analysis.evaluate import Evaluator
from analysis.load import Experiment, load_experiment
from analysis.tta import TTA_POLICIES
from trainables.balance import BALANCES
from trainables.experiment import DEFAULT_WANDB_PROJECT
from trainables.models import MODELS


def build_report(
    exp: Experiment, out: Path, top_k: int = 3, device: str | None = None
) -> tuple[Document, dict[str, pd.DataFrame]]:
    """Evaluate, tabulate and plot; returns the document (not yet written) and the tables."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    best = exp.best_trial()
    if best is None:
        reasons = "; ".join(exp.missing) or "no trial reported a checkpoint"
        raise ValueError(f"experiment {exp.path} has no trial with a usable checkpoint: {reasons}")
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
    t["trials"] = exp.summary()

    doc = Document(out)
    prose.intro_section(doc, exp, best_eval, device)
    prose.balance_section(doc, t)
    prose.architecture_section(doc, t)
    prose.tta_section(doc, t, best_eval, chosen)
    prose.figures_section(doc, exp, evaluator, best_eval, chosen, top_k)
    prose.sweep_section(doc, exp, t)
    reruns.rerun_section(doc, exp, t)
    doc.text(f"Evaluation took {time.perf_counter() - started:.0f} s on `{device}`.")
    return doc, t


def log_to_wandb(exp: Experiment, doc: Document, t: dict[str, pd.DataFrame]) -> str:
    """Log every table and figure to the sweep's W&B project (offline unless WANDB_MODE says
    otherwise); returns the run's local directory."""
    import wandb

    project = exp.record.wandb_project if exp.record else DEFAULT_WANDB_PROJECT
    run = wandb.init(
        project=project,
        name=f"report-{exp.name}",
        group=exp.name,
        job_type="analysis",
        dir=str(doc.out),
        mode=os.environ.get("WANDB_MODE", "offline"),
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
) -> tuple[Experiment, Document, dict[str, pd.DataFrame]]:
    """Everything `python -m analysis.report` does; returns the loaded experiment, the written
    document and its tables."""
    if top_k < 1:
        raise ValueError(f"--top-k must be at least 1, got {top_k}")
    exp = load_experiment(experiment)
    out = Path(out) if out else exp.path / "report"
    out.mkdir(parents=True, exist_ok=True)
    print(
        f"{exp.name}: {len(exp.trials)} trials, {len(exp.usable())} with checkpoints; "
        f"metric {exp.metric} ({exp.mode})"
    )
    for note in exp.missing:
        print(f"  missing: {note}")
    doc, t = build_report(exp, out, top_k, device)
    md, page = write_report(doc, f"cxr-tune results: {exp.name}")
    print(f"wrote {md}, {page}, {len(doc.csvs)} tables (CSV) and {len(doc.figures)} figures")
    if wandb:
        print(f"logged to W&B: {log_to_wandb(exp, doc, t)}")
    return exp, doc, t


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m analysis.report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("experiment", help="the sweep's STORAGE/NAME directory")
    parser.add_argument("--out", help="output directory (default EXPERIMENT/report)")
    parser.add_argument("--top-k", type=int, default=3, help="trials in the curves figure")
    parser.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--wandb", action="store_true", help="also log to the sweep's W&B project")
    args = parser.parse_args(argv)
    try:
        run_report(args.experiment, args.out, args.top_k, args.device, args.wandb)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
