"""Regenerate the seed study's results section from a sweep on disk.

    python -m analysis.report EXPERIMENT_DIR [--out DIR] [--top-k K] [--device D] [--wandb]

Loads the trials (no live Ray), picks the best trial of each balance strategy, each
architecture and overall by the sweep's metric, evaluates each one's best checkpoint on the test
split without TTA, runs every TTA policy (and the one chosen on validation) on the overall best,
and writes `report.md`, a self-contained `report.html` (figures embedded as base64 PNG), the
figures as PNG and every table as CSV into `--out` (default `EXPERIMENT_DIR/report`).
"""

from __future__ import annotations

import argparse
import base64
import html
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from analysis import plots, tables
from analysis.load import Experiment, TrialRecord, load_experiment
from analysis.tables import Scored, TrialEval, display, to_markdown
from analysis.tta import (
    SEED_POLICIES,
    TTA_POLICIES,
    candidate_policies,
    evaluate_tta,
    select_policy,
)
from trainables.balance import BALANCES
from trainables.cache import atomic_write_text
from trainables.config import TrialConfig
from trainables.data import Dataset, load_for_config
from trainables.models import MODELS, count_parameters
from trainables.train import model_from_checkpoint

EVAL_BATCH = 128  # images per forward pass when evaluating


# --- evaluation -------------------------------------------------------------------------------


@dataclass
class Evaluator:
    """Evaluates trials' best checkpoints on validation and test, loading each dataset once."""

    device: str
    batch_size: int = EVAL_BATCH
    datasets: dict[tuple, Dataset] = field(default_factory=dict)
    evals: dict[str, TrialEval] = field(default_factory=dict)

    def dataset(self, cfg: TrialConfig) -> Dataset:
        key = (cfg.data, cfg.image_size, cfg.resize_mode, cfg.split_seed, cfg.val_fraction)
        if key not in self.datasets:
            self.datasets[key] = load_for_config(cfg, include_test=True)
        return self.datasets[key]

    def evaluate(self, trial: TrialRecord) -> TrialEval:
        if trial.trial_id in self.evals:
            return self.evals[trial.trial_id]
        if trial.best_checkpoint is None:
            raise ValueError(f"trial {trial.trial_id} has no checkpoint to evaluate")
        model, cfg, classes = model_from_checkpoint(trial.best_checkpoint)
        data = self.dataset(cfg)
        if list(classes) != list(data.classes):
            raise ValueError(
                f"trial {trial.trial_id}: checkpoint classes {classes} differ from the data's "
                f"{data.classes} ({cfg.data})"
            )
        model.to(self.device)
        val = self.score(model, cfg, data.val.images, data.val.labels, "none", classes)
        test = self.score(model, cfg, data.test.images, data.test.labels, "none", classes)
        ev = TrialEval(trial, list(classes), count_parameters(model), val, test)
        ev.test_paths, ev.data_root = list(data.test.paths), str(data.root)
        ev.tta["none"] = (TTA_POLICIES["none"], test)
        self.evals[trial.trial_id] = ev
        return ev

    def score(self, model, cfg, images, labels, policy, classes) -> Scored:
        result = evaluate_tta(model, images, labels, policy, self.device, self.batch_size, cfg)
        return Scored(labels.numpy(), result.preds, result.probs, classes, result.seconds)

    def add_tta(self, ev: TrialEval, policies: Sequence[str]) -> tuple[str, pd.DataFrame]:
        """Every named policy on test, plus the policy chosen on validation among the
        candidates; returns the chosen name and the validation selection table."""
        model, cfg, _ = model_from_checkpoint(ev.trial.best_checkpoint)
        model.to(self.device)
        data = self.dataset(cfg)
        chosen, selection = select_policy(
            model,
            data.val.images,
            data.val.labels.numpy(),
            candidate_policies(),
            self.device,
            self.batch_size,
            cfg,
        )
        for policy in [TTA_POLICIES[p] for p in policies] + [chosen]:
            if policy.name not in ev.tta:
                scored = self.score(
                    model, cfg, data.test.images, data.test.labels, policy, ev.classes
                )
                ev.tta[policy.name] = (policy, scored)
        return chosen.name, selection


# --- report document --------------------------------------------------------------------------


@dataclass
class Document:
    """Headings, paragraphs, tables and figures, rendered as Markdown and as one HTML file."""

    out: Path
    blocks: list[tuple[str, object]] = field(default_factory=list)
    csvs: list[Path] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)

    def heading(self, text: str, level: int = 2) -> None:
        self.blocks.append(("heading", (level, text)))

    def text(self, text: str) -> None:
        self.blocks.append(("text", text))

    def table(self, name: str, caption: str, table: pd.DataFrame) -> None:
        path = self.out / f"{name}.csv"
        atomic_write_text(path, table.to_csv(index=False))
        self.csvs.append(path)
        self.blocks.append(("table", (caption, display(table), path.name)))

    def csv(self, name: str, table: pd.DataFrame) -> Path:
        """A table written as CSV only (too long for the page)."""
        path = self.out / f"{name}.csv"
        atomic_write_text(path, table.to_csv(index=False))
        self.csvs.append(path)
        return path

    def figure(self, path: Path, caption: str) -> None:
        self.figures.append(path)
        self.blocks.append(("figure", (caption, path)))

    def markdown(self) -> str:
        parts = []
        for kind, value in self.blocks:
            if kind == "heading":
                level, text = value
                parts.append("#" * level + " " + text)
            elif kind == "text":
                parts.append(str(value))
            elif kind == "table":
                caption, frame, csv = value
                parts.append(f"{to_markdown(frame)}\n\n*{caption}* ([{csv}]({csv}))")
            else:
                caption, path = value
                parts.append(f"![{caption}]({path.name})\n\n*{caption}*")
        return "\n\n".join(parts) + "\n"

    def html(self, title: str) -> str:
        body = []
        for kind, value in self.blocks:
            if kind == "heading":
                level, text = value
                body.append(f"<h{level}>{_inline_html(text)}</h{level}>")
            elif kind == "text":
                body.append(f"<p>{_inline_html(str(value))}</p>")
            elif kind == "table":
                caption, frame, csv = value
                table = frame.to_html(index=False, border=0, classes="t", escape=True)
                body.append(
                    f"<figure>{table}<figcaption>{html.escape(caption)} "
                    f"(<a href='{csv}'>{csv}</a>)</figcaption></figure>"
                )
            else:
                caption, path = value
                data = base64.b64encode(path.read_bytes()).decode("ascii")
                body.append(
                    f"<figure><img alt='{html.escape(caption)}' "
                    f"src='data:image/png;base64,{data}'>"
                    f"<figcaption>{html.escape(caption)}</figcaption></figure>"
                )
        return _HTML.format(title=html.escape(title), body="\n".join(body))


_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 72rem; margin: 2rem auto; padding: 0 1rem;
       line-height: 1.45; color: #222; }}
table.t {{ border-collapse: collapse; font-size: 0.85rem; margin: 0.5rem 0; }}
table.t th, table.t td {{ border-bottom: 1px solid #ddd; padding: 0.25rem 0.6rem;
                          text-align: right; white-space: nowrap; }}
table.t th {{ background: #f3f3f3; }}
figure {{ margin: 1rem 0 1.5rem; overflow-x: auto; }}
figcaption {{ font-style: italic; font-size: 0.9rem; color: #555; }}
img {{ max-width: 100%; }}
code {{ background: #f3f3f3; padding: 0 0.2rem; }}
</style></head>
<body>
{body}
</body></html>
"""


def _inline_html(text: str) -> str:
    """Escape, then render the only Markdown the report's prose uses: `code`, **bold**, lists."""
    escaped = html.escape(text)
    parts = escaped.split("`")
    escaped = "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))
    parts = escaped.split("**")
    escaped = "".join(f"<strong>{p}</strong>" if i % 2 else p for i, p in enumerate(parts))
    lines = escaped.split("\n")
    if all(line.startswith("- ") for line in lines):
        return "<ul>" + "".join(f"<li>{line[2:]}</li>" for line in lines) + "</ul>"
    return "<br>".join(lines)


# --- the report -------------------------------------------------------------------------------


def _num(value: object) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _pct(value: float) -> str:
    return f"{100 * value:.1f} %"


def best_by(exp: Experiment, key: str, groups: Sequence[str]) -> dict[str, TrialRecord | None]:
    return {g: exp.best_trial([t for t in exp.trials if t.params.get(key) == g]) for g in groups}


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
    by_balance = best_by(exp, "balance", balances)
    by_model = best_by(exp, "model", models)
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
    _intro(doc, exp, best_eval, device)
    _balance_section(doc, t)
    _architecture_section(doc, t)
    _tta_section(doc, t, best_eval, chosen)
    _figures_section(doc, exp, evaluator, best_eval, chosen, top_k)
    _sweep_section(doc, exp, t)
    doc.text(f"Evaluation took {time.perf_counter() - started:.0f} s on `{device}`.")
    return doc, t


def _intro(doc: Document, exp: Experiment, best: TrialEval, device: str) -> None:
    counts = pd.Series([t.status for t in exp.trials]).value_counts()
    statuses = ", ".join(f"{n} {s}" for s, n in counts.items())
    ci = best.test.intervals["acc"]
    cfg = best.trial.params
    doc.heading(f"Results: experiment `{exp.name}`", 1)
    doc.text(
        f"The sweep ran {len(exp.trials)} trials ({statuses}), ranked by `{exp.metric}` "
        f"({exp.mode}) at each trial's best checkpoint. The best trial, `{best.trial.trial_id}` "
        f"(`{cfg.get('model')}`, balance `{cfg.get('balance')}`, augment "
        f"`{cfg.get('augment', 'none')}`, lr {_num(cfg.get('lr'))}), reached {exp.metric} "
        f"{best.trial.best_score:.4f} at epoch {best.trial.best_epoch} and scores "
        f"**{ci.format()} %** test accuracy without TTA on {len(best.test.labels)} test images."
    )
    doc.text(
        "Every accuracy is shown as `value [low, high]`: the 95 % percentile-bootstrap interval "
        "over test images (2,000 seeded resamples). Precision is macro-averaged over the three "
        "classes, as the seed reports it; per-class accuracy is the recall of that class."
    )
    if exp.missing:
        doc.heading("What this report cannot cover", 3)
        doc.text("\n".join(f"- {m}" for m in exp.missing))


def _best_row(table: pd.DataFrame, key: str) -> pd.Series | None:
    done = table[table["status"] == tables.EVALUATED]
    return None if done.empty else done.loc[done["test_acc"].idxmax()]


def _missing(table: pd.DataFrame, key: str) -> str:
    gone = table[table["status"] != tables.EVALUATED][key].tolist()
    return f" Not covered by this sweep: {', '.join(f'`{g}`' for g in gone)}." if gone else ""


def _balance_section(doc: Document, t: dict[str, pd.DataFrame]) -> None:
    doc.heading("1. Class balance (seed section 3.2.1)")
    top = _best_row(t["table1_balance"], "balance")
    line = (
        "The best trial of each balance strategy, chosen by the sweep's metric on validation, "
        "evaluated once on test."
    )
    if top is not None:
        line += (
            f" Highest test accuracy: `{top['balance']}` with {_pct(top['test_acc'])} "
            f"(95 % CI {_pct(top['test_acc_low'])} to {_pct(top['test_acc_high'])}); a gap "
            "smaller than the intervals are wide is no evidence that one strategy is better."
        )
    doc.text(line + _missing(t["table1_balance"], "balance"))
    doc.table("table1_balance", "Table 1: results per balance strategy", t["table1_balance"])
    doc.table(
        "table2_balance_per_class",
        "Table 2: per-class test accuracy per balance strategy",
        t["table2_balance_per_class"],
    )


def _architecture_section(doc: Document, t: dict[str, pd.DataFrame]) -> None:
    doc.heading("2. Architectures (seed sections 3.3 and 5)")
    top = _best_row(t["table3_architectures"], "model")
    line = "The best trial of each architecture in the model registry."
    if top is not None:
        line += f" Highest test accuracy: `{top['model']}` with {_pct(top['test_acc'])}."
    doc.text(line + _missing(t["table3_architectures"], "model"))
    doc.table("table3_architectures", "Table 3: architectures compared", t["table3_architectures"])
    doc.table(
        "table5_cnn_size",
        "Table 5: the 134M SimpleCNN against the 10M SimpleCNN",
        t["table5_cnn_size"],
    )


def _tta_section(doc: Document, t: dict[str, pd.DataFrame], best: TrialEval, chosen: str) -> None:
    doc.heading("3. Test-time augmentation (seed section 4)")
    table = t["table4_tta"]
    lines = []
    for _, row in table[table["policy"] != "none"].iterrows():
        gain = row["test_acc"] - table.loc[table["policy"] == "none", "test_acc"].iloc[0]
        lines.append(
            f"- `{row['policy']}` ({row['cost']} passes per image): test accuracy "
            f"{100 * gain:+.1f} points against no TTA, {row['wrong_to_right']} predictions fixed "
            f"and {row['right_to_wrong']} broken; McNemar: {row['verdict']}."
        )
    doc.text(
        f"All policies run on the best trial `{best.trial.trial_id}`. `tta1` and `tta2` are the "
        "seed's (the plain image averaged with one draw of each of two views). The policy chosen "
        f"on the validation split among {len(t['tta_selection_val'])} candidates is "
        f"`{chosen}`; the test split was not used to choose it."
    )
    doc.text("\n".join(lines))
    shown = chosen if chosen != "none" else SEED_POLICIES[-1]
    path = doc.csv("predictions", tables.predictions_table(best, shown))
    doc.text(
        f"Every test image's class and probabilities without TTA and with `{shown}` are in "
        f"[{path.name}]({path.name}) (paths relative to `{best.data_root}`)."
    )
    doc.table("table4_tta", "Table 4: no TTA against each TTA policy", table)
    doc.table(
        "table4_tta_flips",
        "Test predictions each policy turned right to wrong and wrong to right, per class",
        t["table4_tta_flips"],
    )
    doc.table(
        "tta_selection_val",
        "TTA candidates scored on the validation split (the chosen one has the highest "
        "accuracy, ties to the cheapest)",
        t["tta_selection_val"],
    )


def _figures_section(
    doc: Document,
    exp: Experiment,
    evaluator: Evaluator,
    best: TrialEval,
    chosen: str,
    top_k: int,
) -> None:
    doc.heading("4. Figures")
    base = best.tta["none"][1]
    # Without and with the policy chosen on validation (the seed's TTA2 when none was chosen).
    shown = chosen if chosen != "none" else SEED_POLICIES[-1]
    preds = {"no TTA": base.preds, f"TTA {shown}": best.tta[shown][1].preds}
    path = plots.confusion_figure(base.labels, preds, best.classes, doc.out / "confusion.png")
    doc.figure(path, "Test confusion matrices of the best trial without and with TTA")
    top = exp.ranked()[: max(1, top_k)]
    path = plots.curves_figure(top, doc.out / "curves.png")
    doc.figure(path, f"Training and validation curves of the top {len(top)} trials")
    model, cfg, _ = model_from_checkpoint(best.trial.best_checkpoint)
    data = evaluator.dataset(cfg)
    splits = {
        "train": (data.train.images, data.train.labels.numpy()),
        "test": (data.test.images, data.test.labels.numpy()),
    }
    path = plots.tsne_figure(model, splits, best.classes, evaluator.device, doc.out / "tsne.png")
    doc.figure(path, "t-SNE of the best model's penultimate features on train and test")


def _sweep_section(doc: Document, exp: Experiment, t: dict[str, pd.DataFrame]) -> None:
    doc.heading("5. The sweep")
    rungs = plots.rungs(exp)
    doc.text(
        f"ASHA milestones at epochs {rungs or 'n/a'} of {exp.max_epochs or '?'}: a trial below "
        "the top share of its rung stops there."
    )
    path = plots.asha_figure(exp, doc.out / "asha.png")
    doc.figure(path, "ASHA: each trial's metric per epoch and where it ended")
    try:
        importance = plots.importance_table(exp)
    except (ValueError, RuntimeError) as err:
        doc.text(f"Parameter importance not computed: {err}.")
    else:
        t["importance"] = importance
        path = plots.importance_figure(importance, exp.metric, doc.out / "importance.png")
        doc.figure(path, f"fANOVA importance of the searched parameters for {exp.metric}")
        doc.table("importance", "Parameter importance (Optuna fANOVA)", importance)
    doc.table("trials", "All trials", t["trials"])


def write_report(doc: Document, title: str) -> tuple[Path, Path]:
    md, page = doc.out / "report.md", doc.out / "report.html"
    atomic_write_text(md, doc.markdown())
    atomic_write_text(page, doc.html(title))
    return md, page


def log_to_wandb(exp: Experiment, doc: Document, t: dict[str, pd.DataFrame]) -> str:
    """Log every table and figure to the sweep's W&B project (offline unless WANDB_MODE says
    otherwise); returns the run's local directory."""
    import wandb

    args = exp.meta.get("args") if isinstance(exp.meta.get("args"), dict) else {}
    project = args.get("wandb_project") or "cxr-tune"  # search.run's --wandb-project
    run = wandb.init(
        project=str(project),
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
