"""Export the selected checkpoint of a sweep as a self-contained bundle plus an ONNX model.

    python -m search.export EXPERIMENT_DIR --out DIR [--metric NAME --mode max|min]

Works from what the sweep left on disk. Selection (`trainables.selection.choose_checkpoint`, the
rule the report's re-run section uses too): when the experiment holds a complete multi-seed
re-run (NAME/reruns/, `search.rerun`), the configuration with the best mean over its seeds wins
and its seed closest to that mean is exported; bundle.json's `selection` records the mean, its
95 % interval, the seeds and the runner-up. Without one, the best checkpoint still on disk wins
by `trainables.experiment`'s one rule (better metric, then the earlier epoch, then the smaller
trial id) and `selection` says it is a single run. Ray keeps the best 2 checkpoints by the
metric plus the latest per trial. Metric and mode default to the experiment record's.

The bundle (`trainables.bundle.save_bundle`: safetensors weights, config.json, bundle.json with
preprocessing, classes, metrics and history) gets `model.onnx` (dynamic batch) next to it, checked
against PyTorch with onnxruntime; the largest probability difference is recorded in bundle.json
under `onnx` and must stay below `ONNX_TOLERANCE`. The ONNX file's `metadata_props` carry the
class names, input size and normalization (`onnx_metadata`).

Calibration: a temperature T is fitted on the validation split's logits (never the test split;
`trainables.calibration.calibrate`) and stored in bundle.json under `calibration`. The ONNX model
has two outputs: `logits` (raw) and `probabilities` = softmax(logits / T), so an ONNX user gets
the calibrated probabilities that `analysis.predict` prints.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import sys
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from cxr_tune import exit_status, prog
from search.storage import is_uri
from trainables.experiment import (
    EXPERIMENT_FILE,
    EXPORT_DIR,
    METRIC_MODES,
    ExperimentRecord,
    read_data_report,
    read_record,
)
from trainables.selection import choose_checkpoint, describe

if TYPE_CHECKING:  # torch, numpy and the model code load only when an export runs (fast --help)
    import numpy as np
    import torch

    from trainables.config import TrialConfig

ONNX_FILE = "model.onnx"
ONNX_TOLERANCE = 1e-4  # max abs difference of class probabilities, ONNX vs PyTorch
ONNX_OPSET = 17
CHECK_BATCH = 8  # images in the ONNX check (batch > 1 exercises the dynamic batch axis)
STAGED_BUNDLE = "bundle"  # the bundle is built in .OUT.<random>/bundle, then renamed to OUT


def onnx_metadata(
    classes: Sequence[str], preprocessing: dict, multilabel: bool = False
) -> dict[str, str]:
    """ONNX `metadata_props` (string to string): what a runtime needs without bundle.json —
    class names in output order, input size and normalization (JSON values)."""
    if multilabel:
        output = "logits; probabilities = sigmoid(logits), one per finding (multi-label)"
    else:
        output = "logits; probabilities = softmax(logits / temperature), see bundle.json"
    return {
        "classes": json.dumps(list(classes)),
        "input_name": "image",
        "input_size": json.dumps([1, preprocessing["image_size"], preprocessing["image_size"]]),
        "resize_mode": preprocessing["resize_mode"],
        "normalization": json.dumps(
            {k: preprocessing[k] for k in ("scale", "mean", "std")}
            | {"rule": preprocessing["tensor"]["rule"]}
        ),
        "output": output,
        "multilabel": json.dumps(multilabel),
        "preprocessing": "bundle.json preprocessing.steps",
    }


def _write_metadata(path: Path, metadata: dict[str, str]) -> None:
    import onnx

    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(path))


def _calibrated(
    model: torch.nn.Module, temperature: float, multilabel: bool = False
) -> torch.nn.Module:
    """The model with a second output: softmax(logits / temperature), or for a multi-label
    model sigmoid(logits), one probability per finding."""
    import torch

    class Calibrated(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model, self.temperature = model, float(temperature)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            logits = self.model(x)
            if multilabel:
                return logits, torch.sigmoid(logits / self.temperature)
            return logits, torch.softmax(logits / self.temperature, dim=1)

    return Calibrated()


def export_onnx(
    model: torch.nn.Module,
    image_size: int,
    path: Path,
    metadata: dict[str, str] | None = None,
    temperature: float = 1.0,
    multilabel: bool = False,
) -> dict[str, float]:
    """Write `model` as ONNX (outputs `logits` and calibrated `probabilities`) with a dynamic
    batch axis and `metadata` as its metadata_props; return its agreement with PyTorch."""
    import numpy as np
    import torch

    model = model.eval()
    generator = torch.Generator().manual_seed(0)
    # Normalised inputs, as the model sees them: (x / 255 - 0.5) / 0.5 lies in [-1, 1].
    x = torch.rand(CHECK_BATCH, 1, image_size, image_size, generator=generator) * 2 - 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            _calibrated(model, temperature, multilabel).eval(),
            (x[:1],),
            str(path),
            input_names=["image"],
            output_names=["logits", "probabilities"],
            dynamic_axes={
                "image": {0: "batch"},
                "logits": {0: "batch"},
                "probabilities": {0: "batch"},
            },
            opset_version=ONNX_OPSET,
            dynamo=False,
        )
    _write_metadata(path, metadata or {})
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    onnx_logits, onnx_probs = session.run(["logits", "probabilities"], {"image": x.numpy()})
    with torch.no_grad():
        torch_logits = model(x).float().numpy()
    diff_logits = float(np.max(np.abs(onnx_logits - torch_logits)))
    probs = _sigmoid if multilabel else _softmax
    diff_probs = float(np.max(np.abs(probs(onnx_logits) - probs(torch_logits))))
    diff_calibrated = float(np.max(np.abs(onnx_probs - probs(torch_logits / temperature))))
    return {
        "opset": ONNX_OPSET,
        "check_batch": CHECK_BATCH,
        "max_abs_diff_probabilities": max(diff_probs, diff_calibrated),
        "max_abs_diff_logits": diff_logits,
        "tolerance": ONNX_TOLERANCE,
        "temperature": float(temperature),
    }


def calibrate_on_val(model: torch.nn.Module, cfg: TrialConfig, classes: list[str]) -> dict:
    """The bundle's `calibration` record: T fitted on the validation split's logits. Only train
    and validation are loaded; the test split is never read here."""
    import torch

    from trainables.calibration import calibrate
    from trainables.data import load_for_config
    from trainables.train import predict_logits

    data = load_for_config(cfg)
    if list(data.classes) != list(classes):
        raise ValueError(
            f"cannot calibrate: checkpoint classes {classes} differ from the data's "
            f"{data.classes} ({cfg.data})"
        )
    device = "cuda" if torch.cuda.is_available() else "cpu"
    logits = predict_logits(model.to(device), data.val.images, device, cfg=cfg)
    model.cpu()
    return calibrate(logits.numpy(), data.val.labels.numpy(), split="val")


MULTILABEL_CALIBRATION = (
    "multi-label model: no softmax temperature; probabilities are sigmoid(logits) per finding, "
    "with per-finding thresholds chosen on validation (bundle.json multilabel.thresholds)"
)


def multilabel_on_val(model: torch.nn.Module, cfg: TrialConfig, classes: list[str]) -> dict:
    """The bundle's `multilabel` record: findings, policy and, per finding, the threshold that
    maximises Youden's J on the validation split (0.5 when the data is not here)."""
    import torch

    from trainables.data import load_for_config
    from trainables.multilabel import finding_scores, youden_thresholds
    from trainables.train import predict_proba

    record = {
        "findings": list(classes),
        "uncertainty": cfg.uncertainty,
        "output": "sigmoid",
        "threshold_rule": "Youden's J (sensitivity + specificity - 1) on the validation split",
    }
    try:
        data = load_for_config(cfg)
    except (ValueError, OSError) as err:
        print(f"export: thresholds 0.5 ({err})", file=sys.stderr)
        return {**record, "thresholds": dict.fromkeys(classes, 0.5), "skipped": str(err)}
    device = "cuda" if torch.cuda.is_available() else "cpu"
    probs = predict_proba(model.to(device), data.val.images, device, cfg=cfg, multilabel=True)
    model.cpu()
    codes = data.val.labels.numpy()
    thresholds = youden_thresholds(codes, probs.numpy())
    aurocs, _ = finding_scores(codes, probs.numpy())
    return {
        **record,
        "label_format": data.report.label_format,
        "thresholds": dict(zip(classes, thresholds, strict=True)),
        "val_auroc": {f: float(a) for f, a in zip(classes, aurocs, strict=True) if a == a},
    }


def _metric_and_mode(experiment_dir: Path, metric: str | None, mode: str | None) -> tuple[str, str]:
    """The ranking to export by: the flags, else the experiment record's."""
    if not experiment_dir.is_dir():
        raise ValueError(f"experiment directory {experiment_dir} does not exist")
    if not metric or not mode:
        recorded = read_record(experiment_dir)
        if recorded is None:
            raise ValueError(f"{experiment_dir} has no {EXPERIMENT_FILE}; pass --metric and --mode")
        metric, mode = metric or recorded.metric, mode or recorded.mode
    return metric, mode


def export_best(
    experiment_dir: str | Path,
    out: str | Path,
    metric: str | None = None,
    mode: str | None = None,
) -> Path:
    """Export the best checkpoint of `experiment_dir` to the bundle directory `out`."""
    from trainables.bundle import CALIBRATION_KEY, MULTILABEL_KEY, preprocessing_of, save_bundle
    from trainables.train import load_checkpoint, model_from_checkpoint

    experiment_dir = Path(experiment_dir).resolve()
    out = Path(out).resolve()
    if refusal := replace_refusal(out):
        raise ValueError(refusal)
    metric, mode = _metric_and_mode(experiment_dir, metric, mode)
    best, selection = choose_checkpoint(experiment_dir, metric, mode)
    model, cfg, classes = model_from_checkpoint(best.checkpoint_dir)
    state = load_checkpoint(best.checkpoint_dir)
    history = list(state["history"])
    metrics = {k: float(v) for k, v in history[-1].items()} if history else {}
    multilabel = bool(state.get("multilabel", False))
    extra_ml = {}
    if multilabel:  # one sigmoid per finding: thresholds, no softmax temperature
        calibration = {"temperature": 1.0, "fitted_on": None, "skipped": MULTILABEL_CALIBRATION}
        extra_ml = {MULTILABEL_KEY: multilabel_on_val(model, cfg, classes)}
    else:
        try:
            calibration = calibrate_on_val(model, cfg, classes)
        except (ValueError, OSError) as err:  # the data is not here, or not the checkpoint's
            print(f"export: not calibrated ({err}); temperature 1.0", file=sys.stderr)
            calibration = {"temperature": 1.0, "fitted_on": None, "skipped": str(err)}
    out.parent.mkdir(parents=True, exist_ok=True)
    for left in clean_staging(out):
        print(f"export: removed {left}, left by an interrupted export", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as tmp:
        onnx_path = Path(tmp) / ONNX_FILE
        metadata = onnx_metadata(classes, preprocessing_of(cfg), multilabel)
        onnx_check = export_onnx(
            model, cfg.image_size, onnx_path, metadata, calibration["temperature"], multilabel
        )
        if not onnx_check["max_abs_diff_probabilities"] < ONNX_TOLERANCE:
            raise ValueError(f"ONNX export disagrees with PyTorch: {onnx_check}")
        source = {
            "experiment": str(experiment_dir),
            "trial": best.trial_dir.name,
            "trial_id": best.trial_id,
            "checkpoint": best.checkpoint_dir.name,
            "metric": metric,
            "mode": mode,
            "value": best.value,
        }
        staged = Path(tmp) / STAGED_BUNDLE
        save_bundle(
            staged,
            model,
            cfg,
            classes,
            metrics,
            history,
            extra={
                "source": source,
                "selection": selection,
                "onnx": onnx_check,
                CALIBRATION_KEY: calibration,
                **extra_ml,
                **_data_extra(experiment_dir),
            },
        )
        shutil.move(str(onnx_path), staged / ONNX_FILE)
        _replace_dir(staged, out)
    return out


def _data_extra(experiment_dir: Path) -> dict:
    """The sweep's data report (classes, counts, skipped files) for bundle.json, if saved."""
    reports = read_data_report(experiment_dir)
    return {"data": reports[0]} if reports else {}


def export_dir(record: ExperimentRecord, out: Path | None = None) -> Path:
    """Where the sweep `record` describes exports: `out` (--export), else STORAGE/NAME/export,
    or runs/NAME/export here for an experiment at a URI."""
    if out is not None:
        return Path(out).expanduser().resolve()
    if not is_uri(record.storage):
        return Path(record.path) / EXPORT_DIR
    return Path("runs").resolve() / record.name / EXPORT_DIR


def export_record(record: ExperimentRecord, out: Path | None = None) -> Path:
    """Export the best checkpoint of the sweep `record` describes (local or at a URI, copied
    here first) to `export_dir(record, out)`."""
    if not is_uri(record.storage):
        return export_best(record.path, export_dir(record, out), record.metric, record.mode)
    import pyarrow.fs

    source = Path(tempfile.mkdtemp(prefix="cxr-export-")) / record.name
    pyarrow.fs.copy_files(record.path, str(source))
    return export_best(source, export_dir(record, out), record.metric, record.mode)


def replace_refusal(out: Path) -> str | None:
    """Why the export may not write the folder `out`, or None. An export replaces its folder
    whole, so it writes only where that deletes nothing it did not write: a new folder, an empty
    one, or a bundle exported before that holds only the bundle's files."""
    if not out.exists():
        return None
    if not out.is_dir():
        return f"{out} is a file, not a folder"
    names = sorted(os.listdir(out))
    if not names:
        return None
    from trainables.bundle import BUNDLE_FILES, is_bundle

    exported = (*BUNDLE_FILES, ONNX_FILE)
    if is_bundle(out):
        others = [n for n in names if n not in exported]
        if not others:
            return None
        what = f"a bundle plus {_listing(out, others)}"
    else:
        what = f"{_listing(out, names)} and no bundle"
    return (
        f"{out} holds {what}; the export replaces its folder whole, so it writes only a new "
        f"folder, an empty one or an earlier bundle: choose another folder"
    )


def _listing(folder: Path, names: list[str], shown: int = 5) -> str:
    """'notes.txt, sub/ and 3 more' (folders end in /)."""
    text = [f"{n}/" if (folder / n).is_dir() else n for n in names[:shown]]
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(text) + more


def clean_staging(out: Path) -> list[Path]:
    """Remove the hidden folders an interrupted export of `out` left beside it (`.OUT.<random>`
    while building, `.OUT.old` while replacing); only folders holding nothing but what the
    export puts there are removed. Returns them."""
    pattern = re.compile(rf"\.{re.escape(out.name)}\.([a-z0-9_]{{8}}|old)")
    from trainables.bundle import BUNDLE_FILES

    staged = STAGED_BUNDLE  # save_bundle builds it in .STAGED.new.<random>.tmp, then STAGED.new
    ours = {*BUNDLE_FILES, ONNX_FILE, staged, f"{staged}.new", f"{staged}.old"}
    removed: list[Path] = []
    if not out.parent.is_dir():
        return removed
    for left in sorted(out.parent.iterdir()):
        if not pattern.fullmatch(left.name) or not left.is_dir() or left.is_symlink():
            continue
        names = os.listdir(left)
        if all(n in ours or n.startswith(f".{staged}.") for n in names):
            shutil.rmtree(left, ignore_errors=True)
            removed.append(left)
    return removed


def _replace_dir(new: Path, out: Path) -> None:
    """Move `new` to `out`, replacing a previous export only once the new one is complete."""
    if out.exists():
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
        new.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        new.rename(out)


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    import numpy as np

    return 1.0 / (1.0 + np.exp(-logits))


def _softmax(logits: np.ndarray) -> np.ndarray:
    import numpy as np

    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=prog("search.export"),
        description="Export the best checkpoint of a finished (or interrupted) sweep as a "
        "bundle (safetensors, config.json, bundle.json) plus model.onnx checked with "
        "onnxruntime.",
    )
    parser.add_argument("experiment_dir", type=Path, help="STORAGE/NAME of the sweep")
    parser.add_argument("--out", type=Path, required=True, help="bundle directory to write")
    parser.add_argument("--metric", help="metric to rank by (default: the experiment record's)")
    parser.add_argument(
        "--mode", choices=METRIC_MODES, help="max or min (default: the experiment record's)"
    )
    args = parser.parse_args(argv)
    try:
        out = export_best(args.experiment_dir, args.out, args.metric, args.mode)
    except ValueError as err:
        parser.exit(2, f"error: {err}\n")
    from trainables.bundle import CALIBRATION_KEY, read_bundle_meta

    meta = read_bundle_meta(out)
    src, check = meta["source"], meta["onnx"]
    value = src["value"]
    print(f"exported {src['trial']}/{src['checkpoint']} ({src['metric']}={value:.4f}) to {out}")
    print(describe(meta.get("selection", {})))
    print(
        f"ONNX vs PyTorch: max |diff| of probabilities {check['max_abs_diff_probabilities']:.2e}"
        f" (tolerance {check['tolerance']:.0e})"
    )
    cal = meta[CALIBRATION_KEY]
    if cal.get("skipped"):
        print(f"not calibrated (temperature 1.0): {cal['skipped']}")
    else:
        decision = cal.get("decision") or f"temperature {cal['temperature']:.3f}"
        print(f"calibration: {decision}")
    return 0 if math.isfinite(value) else 1


if __name__ == "__main__":
    sys.exit(exit_status(main))
