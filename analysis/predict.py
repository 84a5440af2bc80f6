"""Classify chest X-ray image files with an exported bundle (no Ray, no sweep needed).

    python -m analysis.predict BUNDLE IMAGE... [--tta [POLICY]] [--json] [--device D]

The bundle's own preprocessing (`bundle.json`: image size, pad or crop, grayscale, and the
deterministic ops such as histogram equalization its model was trained on) is applied to each
file, so images of any size and mode work, DICOM files included (`trainables.dicom`: modality
LUT, VOI LUT or first window, MONOCHROME1 inverted; a file that is no single-frame grayscale
image, or whose transfer syntax no installed plugin decodes, is refused naming the reason).
Prints the predicted class and every class's probability per image, as a table or as JSON.
Probabilities are softmax(logits / temperature) with the temperature T fitted on validation at
export (`bundle.json` `calibration.temperature`; 1 when the bundle has none), under every TTA
view.

--tta POLICY takes a registered policy (none, tta1, tta2, mirror) or a variant NAME:vKxD as the
report prints it (the first K views of NAME, D draws each); a bare --tta uses the policy recorded
in the bundle (`tta.policy`, which `analysis.report` sets to the one it chose on validation).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cxr_tune import prog

if TYPE_CHECKING:  # torch and the model code load when a prediction runs (fast --help)
    import torch

    from trainables.bundle import Bundle


def _preprocessing(bundle: Bundle) -> tuple[int, str]:
    from trainables.bundle import BUNDLE_META_FILE

    prep = bundle.preprocessing
    try:
        size, mode = int(prep["image_size"]), str(prep["resize_mode"])
    except (KeyError, TypeError, ValueError):
        raise ValueError(
            f"{bundle.path / BUNDLE_META_FILE}: preprocessing needs image_size and resize_mode, "
            f"got {prep!r}"
        ) from None
    if (size, mode) != (bundle.cfg.image_size, bundle.cfg.resize_mode):
        raise ValueError(
            f"{bundle.path}: {BUNDLE_META_FILE} preprocessing ({size} px, {mode}) disagrees with "
            f"config.json ({bundle.cfg.image_size} px, {bundle.cfg.resize_mode})"
        )
    return size, mode


def preprocessing_ops_of(bundle: Bundle) -> tuple[str, ...]:
    """The deterministic ops (e.g. equalize) the bundle's model was trained and validated on,
    as bundle.json records them; checked against config.json's augment set."""
    from trainables.augment import DETERMINISTIC_OPS, preprocessing_ops
    from trainables.bundle import BUNDLE_META_FILE

    meta = bundle.path / BUNDLE_META_FILE
    # Bundles exported before the field existed were validated on unprocessed pixels.
    ops = bundle.preprocessing.get("ops", [])
    if not isinstance(ops, list) or not all(isinstance(op, str) for op in ops):
        raise ValueError(f"{meta}: preprocessing.ops must be a list of op names, got {ops!r}")
    unknown = [op for op in ops if op not in DETERMINISTIC_OPS]
    if unknown:
        raise ValueError(
            f"{meta}: preprocessing.ops {unknown} are not deterministic preprocessing ops; "
            f"expected names from {sorted(DETERMINISTIC_OPS)}"
        )
    expected = preprocessing_ops(bundle.cfg.augment)
    if "ops" in bundle.preprocessing and tuple(ops) != expected:
        raise ValueError(
            f"{meta}: preprocessing.ops {ops} disagrees with config.json's augment "
            f"{bundle.cfg.augment!r} (preprocessing {list(expected)})"
        )
    return tuple(ops)


BUNDLE_POLICY = "bundle"  # what a bare --tta means: the policy bundle.json records


def bundle_policy(bundle: Bundle) -> str:
    """The TTA policy name bundle.json records (`tta.policy`; 'none' when absent), checked."""
    from analysis.tta import get_policy
    from trainables.bundle import BUNDLE_META_FILE

    tta = bundle.extra.get("tta", {})
    name = tta.get("policy", "none") if isinstance(tta, dict) else tta
    try:
        get_policy(str(name))
    except ValueError as err:
        raise ValueError(f"{bundle.path / BUNDLE_META_FILE}: tta.policy: {err}") from None
    return str(name)


def predict_files(
    bundle: Bundle,
    images: Sequence[str | Path],
    policy: str = "none",
    device: str | torch.device = "cpu",
) -> list[dict[str, Any]]:
    """One dict per image: `image`, `class`, `probabilities` {class: p} (merged under `policy`;
    'bundle' is the policy the bundle records)."""
    import numpy as np
    import torch

    from analysis.tta import evaluate_tta, get_policy
    from trainables.bundle import multilabel_of, temperature_of
    from trainables.device import EVAL_BATCH
    from trainables.preprocess import decode_file

    policy_obj = get_policy(bundle_policy(bundle) if policy == BUNDLE_POLICY else policy)
    if not images:
        raise ValueError("no image files given")
    size, mode = _preprocessing(bundle)
    ops = preprocessing_ops_of(bundle)
    missing = [str(p) for p in images if not Path(p).is_file()]
    if missing:
        raise ValueError(f"image files not found: {missing}")
    pixels = np.stack([decode_file(p, size, mode) for p in images])
    batch = torch.from_numpy(pixels).unsqueeze(1)  # (N, 1, S, S) uint8
    model = bundle.model.eval().to(device)
    if multilabel_of(bundle) is not None:
        return _predict_findings(bundle, model, batch, images, policy_obj.name, ops, device)
    # Probabilities are calibrated with the temperature fitted on validation at export.
    result = evaluate_tta(
        model,
        batch,
        None,
        policy_obj,
        device,
        EVAL_BATCH,
        cfg=bundle.cfg,
        preprocess=ops,
        temperature=temperature_of(bundle),
    )
    out = []
    for path, probs, pred in zip(images, result.probs, result.preds, strict=True):
        out.append(
            {
                "image": str(path),
                "class": bundle.classes[int(pred)],
                "probabilities": {c: float(p) for c, p in zip(bundle.classes, probs, strict=True)},
            }
        )
    return out


def _predict_findings(
    bundle: Bundle,
    model: torch.nn.Module,
    batch: torch.Tensor,
    images: Sequence[str | Path],
    policy: str,
    ops: tuple[str, ...],
    device: str | torch.device,
) -> list[dict[str, Any]]:
    """A multi-label bundle: one sigmoid probability per finding, and the findings at or over
    their validation thresholds (`class`, joined by '|'; 'No Finding' for none)."""
    from trainables.bundle import multilabel_of
    from trainables.multilabel import NO_FINDING
    from trainables.train import predict_proba

    if policy != "none":
        raise ValueError(
            f"TTA policy {policy!r} merges softmax views of one class per image; a multi-label "
            "bundle predicts without TTA (--tta none)"
        )
    thresholds = multilabel_of(bundle).get("thresholds", {})
    probs = predict_proba(model, batch, device, cfg=bundle.cfg, preprocess=ops, multilabel=True)
    out = []
    for path, row in zip(images, probs.numpy(), strict=True):
        p = {c: float(v) for c, v in zip(bundle.classes, row, strict=True)}
        found = [c for c in bundle.classes if p[c] >= thresholds.get(c, 0.5)]
        out.append(
            {
                "image": str(path),
                "class": "|".join(found) or NO_FINDING,
                "findings": found,
                "probabilities": p,
            }
        )
    return out


def format_table(rows: list[dict[str, Any]], classes: Sequence[str]) -> str:
    width = max(len("image"), *(len(r["image"]) for r in rows))
    name_w = max(10, *(len(c) for c in classes))  # the data's class names, any length
    cols = [max(9, len(c)) for c in classes]
    head = f"{'image':<{width}}  {'class':<{name_w}}" + "".join(
        f"  {c:>{w}}" for c, w in zip(classes, cols, strict=True)
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        probs = "".join(
            f"  {r['probabilities'][c]:>{w}.4f}" for c, w in zip(classes, cols, strict=True)
        )
        lines.append(f"{r['image']:<{width}}  {r['class']:<{name_w}}{probs}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=prog("analysis.predict"),
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("bundle", help="an exported bundle directory (STORAGE/NAME/export)")
    parser.add_argument(
        "images", nargs="*", help="image files (PNG, JPEG, DICOM, any size or mode)"
    )
    parser.add_argument(
        "--tta",
        nargs="?",
        default="none",
        const=BUNDLE_POLICY,
        metavar="POLICY",
        help="test-time augmentation: a policy of analysis.tta (none, tta1, tta2, mirror) or "
        "NAME:vKxD (first K views, D draws, as the report names them); bare --tta: the policy "
        "in bundle.json (default: none)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    args = parser.parse_args(argv)
    import torch

    from analysis.tta import TTA_POLICIES, get_policy
    from trainables.bundle import load_bundle, temperature_of

    if args.tta not in TTA_POLICIES and Path(args.tta).is_file():
        # `--tta IMAGE ...`: a bare --tta followed by the images, not a policy named IMAGE.
        args.images, args.tta = [args.tta, *args.images], BUNDLE_POLICY
    if not args.images:
        parser.error("the following arguments are required: images")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        if args.tta != BUNDLE_POLICY:
            get_policy(args.tta)  # a typo fails before the model loads
        bundle = load_bundle(args.bundle)
        tta = bundle_policy(bundle) if args.tta == BUNDLE_POLICY else args.tta
        rows = predict_files(bundle, args.images, tta, device)
    except ValueError as err:  # trainables.preprocess.ImageError is a ValueError too
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"bundle": str(bundle.path), "tta": tta, "predictions": rows}, indent=2))
    else:
        print(
            f"bundle {bundle.path} ({bundle.cfg.model}, {_preprocessing(bundle)[0]} px), "
            f"TTA {tta}, temperature {temperature_of(bundle):g}"
        )
        print(format_table(rows, bundle.classes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
