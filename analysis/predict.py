"""Classify chest X-ray image files with an exported bundle (no Ray, no sweep needed).

    python -m analysis.predict BUNDLE IMAGE|FOLDER... [--tta [POLICY]] [--json] [--device D]

Each file gets its prediction or the reason it was skipped (missing, not an image, corrupt); a
folder stands for the image files below it. Exit status: 0 when every file was predicted, 1 when
any was skipped, 2 when nothing could run (a bad bundle or policy).

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

from cxr_tune import exit_status, prog

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


def image_inputs(arguments: Sequence[str | Path]) -> tuple[list[dict[str, str]], list[str]]:
    """What to predict, in argument order: each file argument, and the image files below each
    directory argument (`trainables.layouts.image_files_under`). Returns ({'image'} rows, with a
    'skipped' reason for an argument that is neither) and notes on files a directory holds that
    are not images by name."""
    from trainables.layouts import file_problem, image_files_under

    rows, notes = [], []
    for arg in arguments:
        path = Path(arg)
        if path.is_dir():
            images, others = image_files_under(path)
            rows += [{"image": str(p)} for p in images]
            if not images:
                rows.append({"image": str(path), "skipped": "a folder with no image files"})
            if others:
                shown = ", ".join(p.name for p in others[:3]) + (", ..." if len(others) > 3 else "")
                notes.append(
                    f"{path}: {len(others)} file(s) not named like images left out ({shown})"
                )
        elif problem := file_problem(path):
            rows.append({"image": str(path), "skipped": problem})
        else:
            rows.append({"image": str(path)})
    return rows, notes


def predict_files(
    bundle: Bundle,
    images: Sequence[str | Path | dict[str, str]],
    policy: str = "none",
    device: str | torch.device = "cpu",
) -> list[dict[str, Any]]:
    """One dict per image, in order: `image`, and `class` plus `probabilities` {class: p} (merged
    under `policy`; 'bundle' is the policy the bundle records), or `skipped` with the reason the
    file could not be read (missing, not an image, corrupt). `images` may be `image_inputs`'
    rows, whose skipped ones pass through."""
    import numpy as np
    import torch

    from analysis.tta import evaluate_tta, get_policy
    from trainables.bundle import multilabel_of, temperature_of
    from trainables.device import EVAL_BATCH
    from trainables.layouts import file_problem
    from trainables.preprocess import ImageError, decode_file

    policy_obj = get_policy(bundle_policy(bundle) if policy == BUNDLE_POLICY else policy)
    if not images:
        raise ValueError("no image files given")
    size, mode = _preprocessing(bundle)
    ops = preprocessing_ops_of(bundle)
    rows = [dict(x) if isinstance(x, dict) else {"image": str(x)} for x in images]
    pixels, decoded = [], []
    for row in rows:
        if "skipped" in row:
            continue
        try:
            if problem := file_problem(Path(row["image"])):
                raise ImageError(problem)
            pixels.append(decode_file(row["image"], size, mode))
            decoded.append(row)
        except ImageError as err:
            row["skipped"] = str(err).removeprefix(f"{row['image']}: ")
    if not decoded:
        return rows
    batch = torch.from_numpy(np.stack(pixels)).unsqueeze(1)  # (N, 1, S, S) uint8
    model = bundle.model.eval().to(device)
    if multilabel_of(bundle) is not None:
        _predict_findings(bundle, model, batch, decoded, policy_obj.name, ops, device)
        return rows
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
    for row, probs, pred in zip(decoded, result.probs, result.preds, strict=True):
        row["class"] = bundle.classes[int(pred)]
        row["probabilities"] = {c: float(p) for c, p in zip(bundle.classes, probs, strict=True)}
    return rows


def _predict_findings(
    bundle: Bundle,
    model: torch.nn.Module,
    batch: torch.Tensor,
    rows: list[dict[str, Any]],
    policy: str,
    ops: tuple[str, ...],
    device: str | torch.device,
) -> None:
    """A multi-label bundle: into each of `rows` (one per image of `batch`), one sigmoid
    probability per finding and the findings at or over their validation thresholds (`class`,
    joined by '|'; 'No Finding' for none)."""
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
    for row, values in zip(rows, probs.numpy(), strict=True):
        p = {c: float(v) for c, v in zip(bundle.classes, values, strict=True)}
        found = [c for c in bundle.classes if p[c] >= thresholds.get(c, 0.5)]
        row.update({"class": "|".join(found) or NO_FINDING, "findings": found, "probabilities": p})


def format_table(rows: list[dict[str, Any]], classes: Sequence[str]) -> str:
    """The predictions as a table, one line per file; a skipped file's line gives the reason."""
    width = max(len("image"), *(len(r["image"]) for r in rows))
    name_w = max(10, *(len(c) for c in classes))  # the data's class names, any length
    cols = [max(9, len(c)) for c in classes]
    head = f"{'image':<{width}}  {'class':<{name_w}}" + "".join(
        f"  {c:>{w}}" for c, w in zip(classes, cols, strict=True)
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        if "skipped" in r:
            lines.append(f"{r['image']:<{width}}  {'skipped':<{name_w}}  {r['skipped']}")
            continue
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
        "images",
        nargs="*",
        help="image files (PNG, JPEG, DICOM, any size or mode) or folders of them; each file "
        "gets a prediction or the reason it was skipped, and the exit status is 1 if any was",
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
    from trainables.bundle import load_bundle

    if args.tta not in TTA_POLICIES and Path(args.tta).exists():
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
        inputs, notes = image_inputs(args.images)
        rows = predict_files(bundle, inputs, tta, device)
    except ValueError as err:  # a bad bundle or policy: nothing is predicted
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    report(bundle, tta, rows, notes, as_json=args.json)
    return 1 if any("skipped" in r for r in rows) else 0


def report(
    bundle: Bundle, tta: str, rows: list[dict[str, Any]], notes: list[str], as_json: bool
) -> None:
    """Every file's prediction or why it was skipped, on stdout; the count of skipped files and
    the notes on stderr."""
    from trainables.bundle import temperature_of

    predicted = [r for r in rows if "skipped" not in r]
    skipped = [{"image": r["image"], "reason": r["skipped"]} for r in rows if "skipped" in r]
    if as_json:
        out = {"bundle": str(bundle.path), "tta": tta, "predictions": predicted}
        print(json.dumps(out | {"skipped": skipped}, indent=2))
    else:
        print(
            f"bundle {bundle.path} ({bundle.cfg.model}, {_preprocessing(bundle)[0]} px), "
            f"TTA {tta}, temperature {temperature_of(bundle):g}"
        )
        print(format_table(rows, bundle.classes))
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    if skipped:
        print(
            f"{len(predicted)} file(s) predicted, {len(skipped)} skipped (exit status 1)",
            file=sys.stderr,
        )


if __name__ == "__main__":
    sys.exit(exit_status(main))
