"""Evaluate trials' best checkpoints on validation and test, with and without TTA.

Each dataset is loaded once per (data, size, resize, split) and each trial is evaluated once,
however many report sections use it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd

from analysis.load import TrialRecord
from analysis.tables import Scored, TrialEval
from analysis.tta import TTA_POLICIES, evaluate_tta, select_policy_on_validation
from trainables.config import TrialConfig
from trainables.data import Dataset, dataset_key, load_for_config
from trainables.device import EVAL_BATCH
from trainables.models import count_parameters
from trainables.train import model_from_checkpoint


@dataclass
class Evaluator:
    """Evaluates trials' best checkpoints on validation and test, loading each dataset once."""

    device: str
    batch_size: int = EVAL_BATCH
    datasets: dict[tuple, Dataset] = field(default_factory=dict)
    evals: dict[str, TrialEval] = field(default_factory=dict)

    def dataset(self, cfg: TrialConfig) -> Dataset:
        key = dataset_key(cfg)
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
        chosen, selection = select_policy_on_validation(
            model, data, self.device, self.batch_size, cfg
        )
        for policy in [TTA_POLICIES[p] for p in policies] + [chosen]:
            if policy.name not in ev.tta:
                scored = self.score(
                    model, cfg, data.test.images, data.test.labels, policy, ev.classes
                )
                ev.tta[policy.name] = (policy, scored)
        return chosen.name, selection
