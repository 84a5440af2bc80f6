"""The shortcut audit's error rates: false alarms on the clean phantom, detections on the
confounded one, over seeds and model qualities.

    python -m bench.audit_rates [--seeds 5] [--epochs 1 5] [--json PATH]

For each seed, each phantom (`phantom:small` clean, and with the planted confounder: a bright
tag on 80% of VIRAL train images, 25% of every class's test images) and each training length
(an undertrained and a trained model), one `simple_cnn_10m` at 64 px is trained on the CPU and
audited exactly as the report audits the best trial (`analysis.audit.audit`, 20 test images per
class). Printed per arm: the flag rate of the rule in force (`Audit.flagged`), the rate of the
rule it replaced (more than 10% of images with over half of their occlusion saliency outside the
body), the share of models reported too weak to audit, the share of images whose prediction
rests on the outside, and the models' balanced accuracy (scikit-learn) on the audited images;
for the confounded phantom also that share on tagged and untagged images (the tag: the pixels
where the confounded phantom differs from the clean one).

A flag on a clean-phantom model is a false alarm; on a confounded-phantom model a detection.
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import balanced_accuracy_score

from analysis.audit import PER_CLASS_AUDITED, audit, sample_per_class
from trainables.config import TrialConfig
from trainables.data import load_for_config
from trainables.phantom import ensure_phantom
from trainables.train import train_model

OLD_IMAGE_OUTSIDE, OLD_FLAG_SHARE = 0.5, 0.10  # the rule before this benchmark


def tagged_images(cfg: TrialConfig, test_images: torch.Tensor) -> np.ndarray:
    """Per test image of the confounded phantom: does it carry the tag (where it differs from
    the clean phantom, whose other pixels are identical)."""
    clean = load_for_config(replace(cfg, data=str(ensure_phantom("small"))), include_test=True)
    clean = clean.test
    return ((test_images.int() - clean.images.int()).abs().amax(dim=(1, 2, 3)) > 30).numpy()


def one_model(seed: int, confounder: bool, epochs: int) -> dict:
    root = ensure_phantom("small", confounder=confounder)
    cfg = TrialConfig(
        model="simple_cnn_10m", image_size=64, epochs=epochs, lr=1e-4, data=str(root), seed=seed
    )
    data = load_for_config(cfg, include_test=True)
    model = train_model(cfg, dataset=data, device="cpu")
    labels = data.test.labels.numpy()
    picks = sample_per_class(labels, PER_CLASS_AUDITED)
    result = audit(model, data.test.images, labels, "cpu", cfg, picks)
    row = {
        "seed": seed,
        "confounder": confounder,
        "epochs": epochs,
        "flagged": bool(result.flagged),
        "too_weak": bool(result.too_weak),
        "outside_share": result.outside_share,
        "top_class_share": result.top_class_share,
        "balanced_acc": float(balanced_accuracy_score(result.labels, result.targets)),
        "old_rule_flagged": bool(np.mean(result.outside > OLD_IMAGE_OUTSIDE) > OLD_FLAG_SHARE),
        "ablated_drop": result.ablated_drop.round(4).tolist(),
    }
    if confounder:
        tagged = tagged_images(cfg, data.test.images)[result.indices]
        row["tagged_share"] = float(tagged.mean())
        row["outside_share_tagged"] = float(result.rests_outside[tagged].mean())
        row["outside_share_untagged"] = float(result.rests_outside[~tagged].mean())
    return row


def summarize(rows: list[dict]) -> list[dict]:
    out = []
    for confounder, epochs in sorted({(r["confounder"], r["epochs"]) for r in rows}):
        arm = [r for r in rows if (r["confounder"], r["epochs"]) == (confounder, epochs)]
        means = {
            key: statistics.mean(r[key] for r in arm)
            for key in arm[0]
            if key not in ("seed", "confounder", "epochs", "ablated_drop")
        }
        out.append(
            {"phantom": "confounded" if confounder else "clean", "epochs": epochs}
            | {"models": len(arm)}
            | {("flag_rate" if k == "flagged" else k): v for k, v in means.items()}
        )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=5, help="models per arm (seeds 0..N-1)")
    p.add_argument("--epochs", type=int, nargs="+", default=[1, 5], help="training lengths")
    p.add_argument("--json", type=Path, help="also write every model's figures here")
    args = p.parse_args(argv)
    rows = [
        one_model(seed, confounder, epochs)
        for epochs in args.epochs
        for confounder in (False, True)
        for seed in range(args.seeds)
    ]
    table = summarize(rows)
    for arm in table:
        what = "false_alarm" if arm["phantom"] == "clean" else "detection"
        print(
            f"RATIO audit_rates.{arm['phantom']}.{arm['epochs']}ep.{what} = {arm['flag_rate']:.2f}"
            f" | old rule {arm['old_rule_flagged']:.2f}, too weak {arm['too_weak']:.2f}, images "
            f"resting outside {arm['outside_share']:.3f}, balanced acc {arm['balanced_acc']:.3f},"
            f" {arm['models']} models",
            flush=True,
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"arms": table, "models": rows}, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
