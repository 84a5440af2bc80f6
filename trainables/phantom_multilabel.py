"""A multi-label phantom: several independent findings per image, some labels uncertain.

The chest model of `trainables.phantom` (body, lungs, ribs, heart, acquisition), with five
findings drawn independently per patient (each present with probability `PREVALENCE`):

- Consolidation: a focal lobar blob (the single-label phantom's BACTERIA lesion);
- Interstitial: diffuse bilateral haze (its VIRAL lesion);
- Cardiomegaly: an enlarged heart;
- Effusion: a dense basal band rising from one hemidiaphragm;
- Nodule: one well-defined round opacity.

The recorded labels are a labeler's, not the truth: a present finding is written positive
(1) or, for `UNCERTAIN_PRESENT` of them, uncertain (-1); an absent one negative (0), blank
(unmentioned) or, rarely, uncertain. The same images are listed twice:

- `findings.csv`: NIH style, `Finding Labels` joined by `|` (recorded positives), `No Finding`;
- `chexpert.csv`: CheXpert style, one column per finding holding 1, 0, -1 or blank;

both with `path`, `patient_id`, `split` (train / test; validation is split from train) and a
`view` metadata column. Deterministic per seed; cached like the other phantoms.

    data: phantom:multilabel (findings.csv) or phantom:multilabel_chexpert (chexpert.csv)
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from trainables.cache import atomic_dir, atomic_write_text, cache_root, file_lock
from trainables.phantom import (
    ImageSpec,
    Preset,
    _acquire,
    _anatomy,
    _consolidation,
    _frame,
    _interstitial,
    _patient_anatomy,
    _sigmoid,
)

FINDINGS = ("Consolidation", "Interstitial", "Cardiomegaly", "Effusion", "Nodule")
PREVALENCE = (0.35, 0.3, 0.3, 0.3, 0.25)  # per finding, independent
UNCERTAIN_PRESENT = 0.2  # share of present findings written -1
UNCERTAIN_ABSENT, BLANK_ABSENT = 0.05, 0.4  # shares of absent findings written -1 / blank
PATIENTS = {"train": 130, "test": 50}  # 1 or 2 images each
SIZE = Preset({}, (64, 80), 96)  # image sides, pixels
MANIFESTS = {"multilabel": "findings.csv", "multilabel_chexpert": "chexpert.csv"}
"""Phantom data names (`phantom:<name>`) -> the manifest they read."""
VERSION = 1


def _findings(seed: int, split: str, patient: int) -> tuple[list[bool], list[str]]:
    """A patient's true findings and their recorded CheXpert cells."""
    rng = np.random.default_rng([seed, 31, len(split), patient])
    present = [bool(rng.random() < p) for p in PREVALENCE]
    cells = []
    for truth in present:
        u = rng.random()
        if truth:
            cells.append("-1" if u < UNCERTAIN_PRESENT else "1")
        else:
            blank = u < UNCERTAIN_ABSENT + BLANK_ABSENT
            cells.append("-1" if u < UNCERTAIN_ABSENT else "" if blank else "0")
    return present, cells


def _render(seed: int, spec: ImageSpec, present: list[bool]) -> Image.Image:
    rng = np.random.default_rng([seed, 37, len(spec.split), spec.index])
    a = _patient_anatomy(seed, spec.split, spec)
    a["nodule"] = False
    consolidation, interstitial, cardiomegaly, effusion, nodule = present
    if cardiomegaly:
        a["heart_w"] *= 1.6
        a["heart_h"] *= 1.35
    (w, h), _, (xs, u, v, edge) = _frame(rng, SIZE)
    density, lungs, lung_r2 = _anatomy(a, u, v, edge, rng, w, h)
    severity = 0.4 + 0.6 * a["severity"]
    if consolidation:
        density += _consolidation(a, u, v, edge, lungs, severity, rng, w, h)
    if interstitial:
        density += _interstitial(a, u, v, lungs, lung_r2, severity, rng, w, h)
    if effusion:
        side = u < 0 if a["side"] == 0 else u > 0
        dome = a["dome_r"] if a["side"] == 0 else a["dome_l"]
        band = _sigmoid((v - (dome - 0.1 - 0.15 * severity)) / (3 * edge))
        density += 0.6 * band * lungs * side
    if nodule:
        nu, nv = a["nodule_uv"]
        density += 0.55 * lungs * np.exp(-((u - nu) ** 2 + (v - nv) ** 2) / 0.006)
    img, _ = _acquire(rng, density, xs)
    return Image.fromarray(np.round(img * 255).astype(np.uint8))


def generate(out: Path, seed: int = 0) -> Path:
    """Write the images and both manifests into `out` (created; must be empty)."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"output folder {out} exists and is not empty")
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, str]] = []
    number = 0
    for split, patients in PATIENTS.items():
        index = 0
        for k in range(patients):
            pid = k + 1 if split == "train" else 10_000 + k
            present, cells = _findings(seed, split, pid)
            for visit in range(1 + (k % 3 == 0)):
                number += 1
                spec = ImageSpec(split, index, "NORMAL", pid, number, visit)
                rel = f"images/{pid:05d}_{visit:03d}.png"
                _render(seed, spec, present).save(out / rel, format="PNG")
                row = {"path": rel, "patient_id": str(pid), "split": split}
                rows.append({**row, **dict(zip(FINDINGS, cells, strict=True))})
                index += 1
    _write_manifests(out, rows)
    info = {"version": VERSION, "seed": seed, "images": len(rows), "findings": list(FINDINGS)}
    atomic_write_text(out / "phantom.json", json.dumps(info, indent=1) + "\n")
    return out


def _write_manifests(out: Path, rows: list[dict[str, str]]) -> None:
    nih, chexpert = io.StringIO(), io.StringIO()
    base = ["path", "patient_id", "split"]
    nih_writer = csv.DictWriter(nih, [*base, "Finding Labels", "view"], lineterminator="\n")
    che_writer = csv.DictWriter(chexpert, [*base, "view", *FINDINGS], lineterminator="\n")
    nih_writer.writeheader()
    che_writer.writeheader()
    for r in rows:
        positives = [f for f in FINDINGS if r[f] == "1"]
        common = {k: r[k] for k in base}
        nih_writer.writerow(
            {**common, "Finding Labels": "|".join(positives) or "No Finding", "view": "PA"}
        )
        che_writer.writerow({**common, "view": "PA", **{f: r[f] for f in FINDINGS}})
    atomic_write_text(out / MANIFESTS["multilabel"], nih.getvalue())
    atomic_write_text(out / MANIFESTS["multilabel_chexpert"], chexpert.getvalue())


def ensure_multilabel_phantom(seed: int = 0) -> Path:
    """The cached multi-label phantom's folder, generated on first use (once per machine)."""
    path = cache_root() / "phantom" / f"multilabel-v{VERSION}-seed{seed}"
    if (path / "phantom.json").is_file():
        return path
    with file_lock(path.parent / f".{path.name}.lock"):
        if not (path / "phantom.json").is_file():
            with atomic_dir(path) as tmp:
                generate(tmp, seed)
    return path
