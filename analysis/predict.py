"""Classify chest X-ray image files with an exported bundle (no Ray, no sweep needed).

    python -m analysis.predict BUNDLE IMAGE... [--tta POLICY] [--json] [--device D]

The bundle's own preprocessing (`bundle.json`: image size, pad or crop, grayscale) is applied to
each file, so images of any size and mode work. Prints the predicted class and every class's
probability per image, as a table or as JSON. Probabilities are softmax(logits / T) with the
temperature T fitted on validation at export (`bundle.json` `calibration.temperature`; 1 when
the bundle has none).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from analysis.tta import TTA_POLICIES, evaluate_tta, get_policy
from trainables.bundle import BUNDLE_META_FILE, Bundle, load_bundle, temperature_of
from trainables.device import EVAL_BATCH
from trainables.preprocess import decode_file


def _preprocessing(bundle: Bundle) -> tuple[int, str]:
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


def predict_files(
    bundle: Bundle,
    images: Sequence[str | Path],
    policy: str = "none",
    device: str | torch.device = "cpu",
) -> list[dict[str, Any]]:
    """One dict per image: `image`, `class`, `probabilities` {class: p} (merged under `policy`,
    each view's softmax scaled by the bundle's calibration temperature)."""
    policy_obj = get_policy(policy)
    if not images:
        raise ValueError("no image files given")
    size, mode = _preprocessing(bundle)
    missing = [str(p) for p in images if not Path(p).is_file()]
    if missing:
        raise ValueError(f"image files not found: {missing}")
    pixels = np.stack([decode_file(p, size, mode) for p in images])
    batch = torch.from_numpy(pixels).unsqueeze(1)  # (N, 1, S, S) uint8
    model = bundle.model.to(device)
    # Probabilities are calibrated with the temperature fitted on validation at export.
    temperature = temperature_of(bundle)
    result = evaluate_tta(
        model, batch, None, policy_obj, device, EVAL_BATCH, cfg=bundle.cfg, temperature=temperature
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


def format_table(rows: list[dict[str, Any]], classes: Sequence[str]) -> str:
    width = max(len("image"), *(len(r["image"]) for r in rows))
    head = f"{'image':<{width}}  {'class':<10}" + "".join(f"  {c:>9}" for c in classes)
    lines = [head, "-" * len(head)]
    for r in rows:
        probs = "".join(f"  {r['probabilities'][c]:>9.4f}" for c in classes)
        lines.append(f"{r['image']:<{width}}  {r['class']:<10}{probs}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m analysis.predict",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("bundle", help="an exported bundle directory (STORAGE/NAME/export)")
    parser.add_argument("images", nargs="+", help="image files (PNG, JPEG, any size or mode)")
    parser.add_argument(
        "--tta",
        default="none",
        help=f"test-time augmentation policy, one of {sorted(TTA_POLICIES)}",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    args = parser.parse_args(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        get_policy(args.tta)  # a typo fails before the model loads
        bundle = load_bundle(args.bundle)
        rows = predict_files(bundle, args.images, args.tta, device)
    except ValueError as err:  # trainables.preprocess.ImageError is a ValueError too
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(
            json.dumps({"bundle": str(bundle.path), "tta": args.tta, "predictions": rows}, indent=2)
        )
    else:
        print(
            f"bundle {bundle.path} ({bundle.cfg.model}, {_preprocessing(bundle)[0]} px), "
            f"TTA {args.tta}"
        )
        print(format_table(rows, bundle.classes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
