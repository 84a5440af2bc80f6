"""The report's calibration section: top-label ECE and a reliability diagram on test, before and
after temperature scaling fitted on the validation split only (`trainables.calibration`).

The temperature is refitted here from the best checkpoint's validation logits with the same
function `search.export` uses, so the report does not depend on an export; when the experiment's
exported bundle holds the same checkpoint, its stored temperature is shown beside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from analysis.document import Document  # noqa: E402
from analysis.evaluate import Evaluator  # noqa: E402
from analysis.load import Experiment  # noqa: E402
from analysis.plots import _save  # noqa: E402
from analysis.tables import TrialEval  # noqa: E402
from trainables.bundle import calibration_of, read_bundle_meta  # noqa: E402
from trainables.calibration import (  # noqa: E402
    ECE_BINS,
    expected_calibration_error,
    fit_temperature,
    nll,
    reliability_bins,
    scaled_probs,
)
from trainables.config import TrialConfig  # noqa: E402
from trainables.data import Dataset  # noqa: E402
from trainables.experiment import EXPORT_DIR  # noqa: E402
from trainables.markdown import md_code  # noqa: E402
from trainables.train import model_from_checkpoint, predict_logits  # noqa: E402


@dataclass
class Calibration:
    """Temperature fitted on validation, and the test split's logits and labels."""

    temperature: float
    val_logits: np.ndarray
    val_labels: np.ndarray
    test_logits: np.ndarray
    test_labels: np.ndarray

    def table(self) -> pd.DataFrame:
        """One row per split and scaling: ECE and NLL with T = 1 and with the fitted T."""
        rows = []
        for split, logits, labels in (
            ("val", self.val_logits, self.val_labels),
            ("test", self.test_logits, self.test_labels),
        ):
            for name, t in (("none", 1.0), ("temperature", self.temperature)):
                rows.append(
                    {
                        "split": split,
                        "scaling": name,
                        "temperature": t,
                        "ece": expected_calibration_error(scaled_probs(logits, t), labels),
                        "nll": nll(logits, labels, t),
                        "accuracy": float(np.mean(logits.argmax(axis=1) == labels)),
                        "images": len(labels),
                    }
                )
        return pd.DataFrame(rows)


def calibrate_model(
    model: torch.nn.Module, cfg: TrialConfig, data: Dataset, device: str
) -> Calibration:
    """Fit T on `data.val` only; `data.test` is scored, never used to fit."""
    if data.test is None:
        raise ValueError("calibration on test needs a dataset loaded with include_test=True")
    model.to(device)
    val = predict_logits(model, data.val.images, device, cfg=cfg).numpy()
    test = predict_logits(model, data.test.images, device, cfg=cfg).numpy()
    val_y, test_y = data.val.labels.numpy(), data.test.labels.numpy()
    return Calibration(fit_temperature(val, val_y), val, val_y, test, test_y)


def reliability_figure(cal: Calibration, path: Path, bins: int = ECE_BINS) -> Path:
    """Test reliability diagrams before and after scaling: accuracy per confidence bin (bars)
    against the diagonal, with the bin's gap and the ECE in the title."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.2), sharey=True)
    panels = (("before (T = 1)", 1.0), (f"after (T = {cal.temperature:.2f})", cal.temperature))
    for ax, (title, t) in zip(axes, panels, strict=True):
        probs = scaled_probs(cal.test_logits, t)
        table = reliability_bins(probs, cal.test_labels, bins)
        full = table["count"] > 0
        width = 1.0 / bins
        centers = table["lower"] + width / 2
        ax.bar(centers[full], table["accuracy"][full], width=width * 0.95, label="accuracy")
        acc, conf = table["accuracy"][full], table["confidence"][full]
        ax.bar(
            centers[full],
            np.abs(conf - acc),  # from the lower of the two to the higher
            bottom=np.minimum(acc, conf),
            width=width * 0.95,
            color="tab:red",
            alpha=0.35,
            edgecolor="tab:red",
            hatch="//",
            label="gap to mean confidence",
        )
        ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
        ece = expected_calibration_error(probs, cal.test_labels, bins)
        ax.set_title(f"{title}: test ECE {ece:.3f}")
        ax.set_xlabel("confidence (top-class probability)")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
    axes[0].set_ylabel("accuracy in the bin")
    axes[0].legend(loc="upper left", fontsize=8)
    return _save(fig, path)


def _bundle_temperature(exp: Experiment, best: TrialEval) -> float | None:
    """The exported bundle's temperature when it holds this trial's best checkpoint."""
    try:
        meta = read_bundle_meta(exp.path / EXPORT_DIR)
        record = calibration_of(meta)
    except ValueError:
        return None
    source = meta.get("source", {})
    same = source.get("trial") == best.trial.path.name and (
        source.get("checkpoint") == best.trial.best_checkpoint.name
    )
    return float(record["temperature"]) if record and same else None


def calibration_section(
    doc: Document, exp: Experiment, evaluator: Evaluator, best: TrialEval
) -> Calibration:
    """Adds the calibration section for the best trial; returns the fit."""
    model, cfg, _ = model_from_checkpoint(best.trial.best_checkpoint)
    cal = calibrate_model(model, cfg, evaluator.dataset(cfg), evaluator.device)
    table = cal.table()
    test = table[table["split"] == "test"].set_index("scaling")["ece"]
    doc.heading("Calibration")
    exported = _bundle_temperature(exp, best)
    stored = (
        f" The exported bundle stores T = {exported:.3f} (`bundle.json` `calibration`), which "
        "`analysis.predict` and the ONNX output `probabilities` apply."
        if exported is not None
        else ""
    )
    doc.text(
        f"Temperature scaling of the best trial {md_code(best.trial.trial_id)}: one scalar T "
        "divides "
        f"the logits; T = {cal.temperature:.3f} minimises the negative log-likelihood on the "
        f"{len(cal.val_labels)} validation images (the test split is not used to fit it). "
        f"Expected calibration error (top-label, {ECE_BINS} equal-width confidence bins, "
        "weighted by the images in each bin) on test: "
        f"**{test['none']:.3f} before, {test['temperature']:.3f} after**. Scaling never changes "
        f"a predicted class, only its confidence.{stored}"
    )
    doc.table("calibration", "ECE and NLL before and after temperature scaling", table)
    path = reliability_figure(cal, doc.out / "reliability.png")
    doc.figure(path, "Test reliability diagrams before and after temperature scaling")
    return cal
