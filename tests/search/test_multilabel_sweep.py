"""One tiny real sweep on the multi-label phantom (CheXpert-style manifest: 1, 0, -1, blank):
searched on mean AUROC with per-finding keys in results and Optuna, exported with one sigmoid
probability per finding (ONNX and predict agree), reported with per-finding AUROC intervals
that an independent bootstrap and scikit-learn reproduce."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from trainables.experiment import read_results, trial_dirs

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
RESAMPLES = 200  # bootstrap resamples in the report test (the report's default is 1000)
FINDINGS = ["Consolidation", "Interstitial", "Cardiomegaly", "Effusion", "Nodule"]


@pytest.fixture(scope="module")
def swept(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("multilabel")
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0"}
    args = ["--space", "tests/search/space_multilabel.py", "--data", "phantom:multilabel_chexpert"]
    args += ["--storage", str(base / "runs"), "--name", "ml", "--max-concurrent", "2"]
    proc = subprocess.run(
        [sys.executable, "-m", "search.run", *args, "--wandb-mode", "disabled"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {"proc": proc, "exp": base / "runs" / "ml", "base": base}


def test_the_sweep_reports_and_ranks_by_mean_auroc_with_per_finding_keys(swept):
    record = json.loads((swept["exp"] / "cxr_tune.json").read_text())
    assert (record["metric"], record["mode"]) == ("val_mean_auroc", "max")
    keys = {f"val_auroc_{f.lower()}" for f in FINDINGS} | {"val_mean_auroc", "val_mean_ap"}
    trials = trial_dirs(swept["exp"])
    assert len(trials) == 2
    for trial in trials:
        rows = read_results(trial).rows
        assert len(rows) == 2 and all(keys <= set(r) for r in rows)
    # The data report counts uncertain and unmentioned labels per finding (pre-flight output).
    assert "multi-label (columns): 5 findings" in swept["proc"].stdout


def test_optuna_records_per_finding_auroc(swept):
    import optuna

    from search.optuna_pruned import journal_storage
    from trainables.experiment import journal_path

    study = optuna.load_study(study_name="ml", storage=journal_storage(journal_path(swept["exp"])))
    finished = [t for t in study.trials if t.state.is_finished()]
    assert len(finished) == 2 and all("val_auroc_nodule" in t.user_attrs for t in finished)


def test_export_and_predict_give_one_probability_per_finding(swept, capsys):
    import onnxruntime as ort
    import torch

    from analysis.predict import main as predict
    from trainables.bundle import load_bundle
    from trainables.phantom_multilabel import ensure_multilabel_phantom

    bundle_dir = swept["exp"] / "export"
    meta = json.loads((bundle_dir / "bundle.json").read_text())
    ml = meta["multilabel"]
    assert meta["classes"] == FINDINGS and ml["findings"] == FINDINGS
    assert ml["uncertainty"] in ("ones", "zeros") and set(ml["thresholds"]) == set(FINDINGS)
    assert "Multi-label: 5 findings" in (bundle_dir / "MODEL_CARD.md").read_text()
    image = next((ensure_multilabel_phantom() / "images").iterdir())
    assert predict([str(bundle_dir), str(image), "--json", "--device", "cpu"]) == 0
    (row,) = json.loads(capsys.readouterr().out)["predictions"]
    assert list(row["probabilities"]) == FINDINGS  # independent probabilities, not a softmax
    # ONNX's `probabilities` are sigmoid(logits), equal to the bundle's PyTorch model.
    bundle = load_bundle(bundle_dir)
    x = torch.rand(3, 1, 32, 32) * 2 - 1
    session = ort.InferenceSession(str(bundle_dir / "model.onnx"))
    logits, probs = session.run(["logits", "probabilities"], {"image": x.numpy()})
    assert probs.shape == (3, 5)
    with torch.no_grad():
        expected = torch.sigmoid(bundle.model(x)).numpy()
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    assert predict([str(bundle_dir), str(image), "--tta", "tta1"]) == 2  # refused, one line
    assert "multi-label bundle predicts without TTA" in capsys.readouterr().err


def independent_bootstrap(codes, p, patients, n, seed):
    """Patients drawn with replacement (all their images kept, uncertain labels dropped after
    the draw), resamples with one class skipped, 2.5 and 97.5 percentiles."""
    ids = sorted(set(patients))
    rows = {k: [i for i, q in enumerate(patients) if q == k] for k in ids}
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n):
        idx = [i for k in rng.integers(len(ids), size=len(ids)) for i in rows[ids[k]]]
        idx = [i for i in idx if codes[i] != -1]
        y = (codes[idx] == 1).astype(int)
        if len(set(y)) == 2:
            values.append(roc_auc_score(y, p[idx]))
    return np.percentile(values, 2.5), np.percentile(values, 97.5)


def test_the_report_gives_per_finding_auroc_with_patient_bootstrap_intervals(swept, tmp_path):
    from analysis import multilabel
    from analysis.load import load_experiment
    from analysis.report import run_report

    _, _, tables = run_report(swept["exp"], tmp_path / "report", device="cpu", resamples=RESAMPLES)
    auroc = tables["ml_auroc"].set_index("finding")
    assert list(auroc.index) == [*FINDINGS, "mean"]
    assert "ml_paired" in tables and "ml_confusion" in tables
    # Recompute the best model's test probabilities and check the table against scikit-learn
    # and a bootstrap written here.
    best = multilabel._predictions(load_experiment(swept["exp"]).ranked()[0], "cpu")
    codes, probs = best["data"].test.labels.numpy(), best["test"]
    patients = best["data"].test.patients
    for j, f in enumerate(FINDINGS):
        counted = codes[:, j] != -1
        y = (codes[counted, j] == 1).astype(int)
        p = probs[counted, j]
        assert auroc.loc[f, "auroc"] == pytest.approx(roc_auc_score(y, p))
    # Each finding's interval, from the same seeded patient draws, written independently.
    for j, f in enumerate(FINDINGS):
        low, high = independent_bootstrap(
            codes[:, j], probs[:, j], patients, RESAMPLES, multilabel.SEED
        )
        assert auroc.loc[f, "auroc_low"] == pytest.approx(low)
        assert auroc.loc[f, "auroc_high"] == pytest.approx(high)
    meta = json.loads((swept["exp"] / "export" / "bundle.json").read_text())
    assert meta["evaluation"]["metrics"][0]["metric"] == f"auroc_{FINDINGS[0]}"
