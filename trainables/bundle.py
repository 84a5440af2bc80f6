"""The exported bundle: a self-contained, safe-to-load model directory.

    BUNDLE/
      model.safetensors   weights (safetensors: loading never unpickles anything)
      config.json         the TrialConfig, so the model can be rebuilt
      bundle.json         format version, class names, preprocessing, metrics, history,
                          calibration {temperature, fitted_on: "val", ece_before, ece_after},
                          TTA policy, code version
      MODEL_CARD.md       data, metrics, serving, provenance, licence, intended use (research)

`search/` writes bundles and `analysis/` reads them; neither imports the other, both use this
module.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from cxr_tune import code_version
from trainables.augment import MEAN, STD, preprocessing_ops
from trainables.cache import atomic_dir, atomic_write_text
from trainables.config import TrialConfig
from trainables.model_card import MODEL_CARD_FILE, render_model_card
from trainables.models import build_model, count_parameters, model_source
from trainables.preprocess import describe_steps
from trainables.vocab import CXR_SCALE, CXR_WEIGHTS, RESIZE_MODES

BUNDLE_FORMAT = "cxr-tune-bundle"
BUNDLE_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
BUNDLE_META_FILE = "bundle.json"
CALIBRATION_KEY = "calibration"  # bundle.json: trainables.calibration.calibrate's record
# The largest image a bundle's model may be built for, in px (4x the seed's 256; a simple_cnn's
# head grows with the square of the size: 3200 px would allocate about 6 GB before refusing).
MAX_IMAGE_SIZE = 1024
MAX_CLASS_NAME = 64  # characters
BUNDLE_FILES = (WEIGHTS_FILE, CONFIG_FILE, BUNDLE_META_FILE, MODEL_CARD_FILE)
"""What `save_bundle` writes (an exporter may add its own files beside them, e.g. ONNX)."""


@dataclass(frozen=True)
class Bundle:
    path: Path
    model: nn.Module
    cfg: TrialConfig
    classes: list[str]
    preprocessing: dict[str, Any]
    metrics: dict[str, float]
    history: list[dict[str, float]]
    extra: dict[str, Any]


def preprocessing_of(cfg: TrialConfig) -> dict[str, Any]:
    """What an image must go through before the model sees it: `trainables.preprocess` to a
    uint8 square, then `augment.to_float` (scale) and `augment.normalize` (mean, std).

    `steps` lists the uint8 steps in order with every parameter (interpolation, reducing_gap,
    16-bit rule, alpha, EXIF, padding colour and placement); `tensor` the float input after them.
    """
    return {
        "image_size": cfg.image_size,
        "resize_mode": cfg.resize_mode,
        "grayscale": True,
        "mean": MEAN,
        "std": STD,
        "scale": 1 / 255,
        # deterministic ops (trainables.augment) after `steps` and scaling, before mean/std
        "ops": list(preprocessing_ops(cfg.augment)),
        "steps": describe_steps(cfg.image_size, cfg.resize_mode),
        "weights": weights_preprocessing(cfg),
        "tensor": {
            "name": "image",
            "dtype": "float32",
            "shape": ["batch", 1, cfg.image_size, cfg.image_size],
            "rule": "(ops(uint8 * scale) - mean) / std",
        },
    }


def weights_preprocessing(cfg: TrialConfig) -> dict[str, Any]:
    """What the starting weights add to the preprocessing: for torchxrayvision's (cxr), the
    input size they were trained at and their [-1024, 1024] input scaling, which the model's
    first op applies (`trainables.models.InputScale`), so `tensor.rule` stays the input."""
    record: dict[str, Any] = {"name": cfg.weights}
    if cfg.weights == "cxr":
        name, size = CXR_WEIGHTS[cfg.model]
        record.update(
            source=f"torchxrayvision {name}",
            input_size=size,
            input_range=[-CXR_SCALE, CXR_SCALE],
            applied_in_model=f"x * {CXR_SCALE:g} after (x - mean) / std: [-1, 1] -> "
            f"[-{CXR_SCALE:g}, {CXR_SCALE:g}], torchxrayvision's own normalize(img, 255)",
        )
    return record


# Serving defaults a bundle carries until something better is known: no TTA (analysis.report
# records the policy it chose on validation). The temperature is `calibration.temperature`
# (fitted on validation at export; `temperature_of` gives 1.0 without one).
SERVING_DEFAULTS: dict[str, Any] = {
    "tta": {"policy": "none", "chosen_by": "default: no policy chosen on validation yet"},
}


def save_bundle(
    out_dir: str | Path,
    model: nn.Module,
    cfg: TrialConfig,
    classes: list[str],
    metrics: dict[str, float],
    history: list[dict[str, float]],
    extra: dict[str, Any] | None = None,
    overwrite: bool = True,
) -> Path:
    """Write a bundle; a reader never sees a mix of two bundles or a half-written one.

    The new bundle is built complete in `OUT.new` first. Replacing an existing `OUT` then takes
    two renames (`OUT` -> `OUT.old`, `OUT.new` -> `OUT`): between them `OUT` is briefly absent,
    so a reader at that instant finds no bundle (a clear "is not a directory" error), never a
    partial one. A save interrupted there leaves the old bundle in `OUT.old` and the new one in
    `OUT.new`, nothing lost.
    """
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise ValueError(f"bundle directory {out} exists; pass overwrite=True to replace it")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {
        "format": BUNDLE_FORMAT,
        "version": BUNDLE_VERSION,
        "classes": list(classes),
        "preprocessing": preprocessing_of(cfg),
        "parameters": count_parameters(model),
        "metrics": _finite(metrics),
        "history": [_finite(h) for h in history],
        **SERVING_DEFAULTS,
        "code_version": code_version(),
        # how to rebuild the model (built-in, timm, or a plugin file + name); refuses otherwise
        "model_source": model_source(cfg),
        **(extra or {}),
    }
    staged = out.with_name(out.name + ".new")
    _remove(staged)  # left over from an interrupted save
    with atomic_dir(staged) as tmp:
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": BUNDLE_FORMAT})
        (tmp / CONFIG_FILE).write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
        (tmp / BUNDLE_META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        (tmp / MODEL_CARD_FILE).write_text(render_model_card(meta, cfg.to_dict()))
    if out.exists():
        old = out.with_name(out.name + ".old")
        _remove(old)
        out.rename(old)
        staged.rename(out)
        _remove(old)
    else:
        staged.rename(out)
    return out


def load_bundle(path: str | Path) -> Bundle:
    """Rebuild a bundle's model (eval mode, CPU). Errors name the file and what is wrong."""
    root = Path(path)
    if not root.is_dir():
        raise ValueError(f"bundle {root} is not a directory")
    meta = _read_meta(root / BUNDLE_META_FILE)
    try:
        cfg = TrialConfig.from_dict(_read_json(root / CONFIG_FILE))
    except ValueError as err:
        raise ValueError(f"{root / CONFIG_FILE}: {err}") from None
    check_bundle_config(meta, cfg, root)  # before any tensor is read or a model is built
    weights = root / WEIGHTS_FILE
    if not weights.is_file():
        raise ValueError(f"bundle {root} has no weights file {WEIGHTS_FILE}")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{weights} cannot be read as safetensors: {err}") from None
    model = build_model(cfg, num_classes=len(meta["classes"]), load_weights=False)
    _load_state(model, state, weights)
    model.eval()
    known = {"format", "version", "classes", "preprocessing", "metrics", "history"}
    calibration_of(meta)  # a bad temperature fails at load, naming the field
    return Bundle(
        path=root,
        model=model,
        cfg=cfg,
        classes=list(meta["classes"]),
        preprocessing=dict(meta["preprocessing"]),
        metrics=dict(meta.get("metrics", {})),
        history=list(meta.get("history", [])),
        extra={k: v for k, v in meta.items() if k not in known},
    )


def calibration_of(source: Bundle | dict[str, Any]) -> dict[str, Any] | None:
    """The checked `calibration` record of a bundle (or its bundle.json dict); None if absent."""
    record = (source.extra if isinstance(source, Bundle) else source).get(CALIBRATION_KEY)
    if record is None:
        return None
    t = record.get("temperature") if isinstance(record, dict) else None
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0:
        raise ValueError(
            f"{BUNDLE_META_FILE}: {CALIBRATION_KEY}.temperature must be a positive number, "
            f"got {t!r}"
        )
    return dict(record)


def temperature_of(source: Bundle | dict[str, Any]) -> float:
    """The softmax temperature to apply to the bundle's logits (1.0 when not calibrated)."""
    record = calibration_of(source)
    return 1.0 if record is None else float(record["temperature"])


MULTILABEL_KEY = "multilabel"
"""bundle.json's record of a multi-label model: findings, uncertainty policy, per-finding
thresholds chosen on validation (`search.export`), output `sigmoid`."""


def multilabel_of(source: Bundle | dict[str, Any]) -> dict[str, Any] | None:
    """The bundle's multi-label record, or None for one class per image (softmax output)."""
    meta = source.extra if isinstance(source, Bundle) else source
    record = meta.get(MULTILABEL_KEY)
    return record if isinstance(record, dict) else None


def is_bundle(path: str | Path) -> bool:
    """Whether the folder holds a cxr-tune bundle (its bundle.json names the format); nothing
    else is checked, so a damaged bundle still counts as one."""
    try:
        return _read_json(Path(path) / BUNDLE_META_FILE).get("format") == BUNDLE_FORMAT
    except (ValueError, OSError):
        return False


def read_bundle_meta(bundle_dir: str | Path) -> dict[str, Any]:
    """The checked `bundle.json` of a bundle folder, without loading any weights."""
    return _read_meta(Path(bundle_dir) / BUNDLE_META_FILE)


def update_bundle_meta(bundle_dir: str | Path, updates: dict[str, Any]) -> dict[str, Any]:
    """Set top-level `bundle.json` keys (e.g. `tta`, `evaluation`, `temperature`) of an existing
    bundle and re-render its model card; each file is replaced atomically. Returns the new meta.
    Only the named keys change; weights, config and everything else stay as exported."""
    root = Path(bundle_dir)
    meta = read_bundle_meta(root)
    protected = {"format", "version", "classes", "preprocessing"} & set(updates)
    if protected:
        raise ValueError(f"{root / BUNDLE_META_FILE}: {sorted(protected)} cannot be updated")
    meta.update(updates)
    config = _read_json(root / CONFIG_FILE)
    atomic_write_text(root / BUNDLE_META_FILE, json.dumps(meta, indent=2) + "\n")
    atomic_write_text(root / MODEL_CARD_FILE, render_model_card(meta, config))
    return meta


def _read_meta(path: Path) -> dict[str, Any]:
    meta = _read_json(path)
    if meta.get("format") != BUNDLE_FORMAT:
        raise ValueError(f"{path} is not a cxr-tune bundle (format {meta.get('format')!r})")
    if meta.get("version") != BUNDLE_VERSION:
        raise ValueError(
            f"{path}: bundle version {meta.get('version')!r}, expected {BUNDLE_VERSION}"
        )
    for key in ("classes", "preprocessing"):
        if key not in meta:
            raise ValueError(f"{path} lacks the field {key!r}")
    check_bundle_meta(meta, path)
    return meta


# --- the schema of bundle.json and config.json (checked before anything is built) -----------
# Fields this module does not know (others add provenance, ONNX, model-card fields) are left
# alone; the ones below are checked for type and range.


def check_bundle_meta(meta: dict[str, Any], path: Path) -> None:
    """`bundle.json`'s classes and preprocessing; ValueError naming the field."""
    classes = meta["classes"]
    if not isinstance(classes, list) or len(classes) < 2:
        raise ValueError(
            f"{path}: field 'classes' must be a list of at least 2 names, got {_show(classes)}"
        )
    for i, name in enumerate(classes):
        if not isinstance(name, str) or not name.strip() or len(name) > MAX_CLASS_NAME:
            raise ValueError(
                f"{path}: field 'classes[{i}]' must be a non-empty name of at most "
                f"{MAX_CLASS_NAME} characters, got {_show(name)}"
            )
        if not name.isprintable():
            raise ValueError(
                f"{path}: field 'classes[{i}]' holds control characters: {_show(name)}"
            )
    if len(set(classes)) != len(classes):
        raise ValueError(f"{path}: field 'classes' repeats a name: {_show(classes)}")
    prep = meta["preprocessing"]
    if not isinstance(prep, dict):
        raise ValueError(f"{path}: field 'preprocessing' must be an object, got {_show(prep)}")
    size = prep.get("image_size")
    if not isinstance(size, int) or isinstance(size, bool) or not 32 <= size <= MAX_IMAGE_SIZE:
        raise ValueError(
            f"{path}: field 'preprocessing.image_size' must be an integer in "
            f"[32, {MAX_IMAGE_SIZE}] px, got {_show(size)}"
        )
    if prep.get("resize_mode") not in RESIZE_MODES:
        raise ValueError(
            f"{path}: field 'preprocessing.resize_mode' must be one of "
            f"{list(RESIZE_MODES)}, got {_show(prep.get('resize_mode'))}"
        )
    if prep.get("grayscale", True) is not True:
        raise ValueError(
            f"{path}: field 'preprocessing.grayscale' must be true (the models "
            f"take one channel), got {_show(prep.get('grayscale'))}"
        )
    for key, trained in (("mean", MEAN), ("std", STD), ("scale", 1 / 255)):
        value = prep.get(key)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
            raise ValueError(
                f"{path}: field 'preprocessing.{key}' must be a positive number, got {_show(value)}"
            )
        if not math.isclose(float(value), trained, rel_tol=1e-6):
            raise ValueError(
                f"{path}: field 'preprocessing.{key}' is {value!r}, but the models "
                f"are trained with {trained!r} (trainables.augment)"
            )


def check_bundle_config(meta: dict[str, Any], cfg: TrialConfig, root: Path) -> None:
    """config.json against bundle.json: the size a model is built for, and the same
    preprocessing in both files."""
    if cfg.image_size > MAX_IMAGE_SIZE:
        raise ValueError(
            f"{root / CONFIG_FILE}: field 'image_size' {cfg.image_size} is above "
            f"the {MAX_IMAGE_SIZE} px the models are built for"
        )
    prep = meta["preprocessing"]
    for key in ("image_size", "resize_mode"):
        if prep[key] != getattr(cfg, key):
            raise ValueError(
                f"{root}: {BUNDLE_META_FILE} field 'preprocessing.{key}' "
                f"{prep[key]!r} disagrees with {CONFIG_FILE} {getattr(cfg, key)!r}"
            )


def _show(value: Any) -> str:
    """A value for an error message, control characters escaped (never printed raw)."""
    return ascii(value)[:120]


def _load_state(model: nn.Module, state: dict, weights: Path) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing tensors {missing[:5]}{'...' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected tensors {unexpected[:5]}")
        if wrong:
            parts.append(f"wrong shapes {wrong[:5]}")
        raise ValueError(f"{weights} does not fit the model in config.json: " + "; ".join(parts))
    model.load_state_dict(state)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"bundle file {path} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"bundle file {path} is not valid JSON: {err}") from None
    if not isinstance(value, dict):
        raise ValueError(f"bundle file {path} must hold a JSON object")
    return value


def _finite(values: dict[str, Any]) -> dict[str, Any]:
    """JSON has no NaN/inf: store them as null."""
    return {
        k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in values.items()
    }


def _remove(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)
