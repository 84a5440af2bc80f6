"""Multi-seed re-runs of the top configurations (`search.rerun`): mean ± 95 % CI per
configuration and whether the sweep's ranking of them holds across seeds.

The scores, means and intervals come from `trainables.selection`, the rule the export selects
its model by (each re-run trial scored by its best validation epoch; Student's t interval of the
mean over seeds). The ranking holds when the configurations' order by mean equals the sweep's order;
it is also said whether the first configuration's interval lies clear of the second's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from analysis.document import Document
from analysis.load import Experiment
from trainables import experiment as files
from trainables.experiment import RerunPlan
from trainables.markdown import md_code, md_text
from trainables.selection import (  # the one rule, shared with the export
    RerunScores,
    load_rerun,
    separated,
    t_interval,
)

__all__ = ["RerunScores", "load_rerun", "ranking_holds", "separated", "t_interval", "verdict"]

SHOWN_PARAMS = ("model", "balance", "augment", "lr", "weight_decay", "frozen_depth")


def ranking_holds(scores: Sequence[RerunScores], mode: str) -> bool:
    """Whether the order by mean over seeds is the sweep's order (configs without scores fail)."""
    means = [s.interval.value for s in scores]
    if any(math.isnan(m) for m in means):
        return False
    order = sorted(range(len(scores)), key=lambda i: -means[i] if mode == "max" else means[i])
    return [scores[i].rank for i in order] == sorted(s.rank for s in scores)


def rerun_table(plan: RerunPlan, scores: Sequence[RerunScores]) -> pd.DataFrame:
    rows = []
    for s in scores:
        iv = s.interval
        row = {"sweep_rank": s.rank, "trial_id": s.trial_id}
        row.update({k: s.params.get(k) for k in SHOWN_PARAMS if k in s.params})
        row.update(
            {
                f"sweep_{plan.metric}": s.sweep_value,
                "seeds": len(s.values),
                "mean": iv.value,
                "ci95_lower": iv.low,  # not *_low: the display folds those into percent
                "ci95_upper": iv.high,
                "std": float(np.std(s.values, ddof=1)) if len(s.values) > 1 else math.nan,
                "per_seed": ", ".join(f"{v:.4f}" for v in s.values),
            }
        )
        rows.append(row)
    return pd.DataFrame(rows)


def verdict(plan: RerunPlan, scores: Sequence[RerunScores]) -> str:
    """The report's sentence on the ranking across seeds."""
    if len(scores) < 2:
        return "Only one configuration was re-run, so there is no ranking to check."
    holds = ranking_holds(scores, plan.mode)
    words = "holds" if holds else "does not hold"
    clear = separated(scores[0], scores[1], plan.mode)
    gap = (
        "and the first configuration's 95 % interval lies clear of the second's"
        if clear
        else "but the first two configurations' 95 % intervals overlap, so their order is "
        "not established at this number of seeds"
        if holds
        else "so the sweep's single-seed ranking of these configurations was noise"
    )
    return (
        f"Across seeds {plan.seeds} the sweep's ranking of its top {len(scores)} "
        f"configurations by mean {md_code(plan.metric)} {words}, {gap}."
    )


def rerun_section(doc: Document, exp: Experiment, t: dict[str, pd.DataFrame]) -> None:
    """The report's section on every re-run of `exp` (nothing when it has none)."""
    folders = files.rerun_dirs(exp.path)
    if not folders:
        return
    doc.heading("6. Multi-seed re-runs of the top configurations")
    doc.text(
        "One seed's ranking can be noise at this data scale (Zech et al. 2019). Each "
        "configuration below was trained again with new seeds (`python -m search.rerun`), every "
        "epoch, and scored by its best validation epoch as in the sweep; mean and Student's t "
        "95 % interval over seeds."
    )
    for folder in folders:
        try:
            plan, scores = load_rerun(folder)
        except ValueError as err:
            doc.text(f"Re-run {md_code(folder.name)} not read: {md_text(err)}.")
            continue
        name = f"rerun_{plan.name}"
        t[name] = rerun_table(plan, scores)
        caption = f"Re-run {md_code(plan.name)}: {md_code(plan.metric)} over seeds {plan.seeds}"
        doc.table(name, caption, t[name])
        doc.text(verdict(plan, scores))
