"""Synthetic chest X-ray phantoms: the embedded default dataset (no download, fully deterministic).

Each image is rendered from a small anatomical model in a patient coordinate frame (body outline,
two lung fields, posterior ribs, clavicles, spine, heart, hemidiaphragms, vascular markings) and
one of three findings:

- NORMAL: clear lungs (with ordinary vascular markings, sometimes a faint benign nodule);
- BACTERIA: a focal lobar consolidation in one lobe of one lung, bounded by a fissure;
- VIRAL: diffuse bilateral interstitial haze, perihilar, or peripheral and lower-zone for the
  ``covid_like`` subgroup.

Severity runs from mild (overlapping NORMAL) to severe. On top come the nuisances of the seed
study's data: mixed sizes and aspect ratios, file modes L / RGB / I;16 (plus a few RGBA and P),
JPEG and PNG files, exposure / contrast / gamma spread, patient rotation, shift and zoom, ECG
wires, "L"/"R" side markers and drawn arrows. None of the nuisances depends on the class, except
the optional planted confounder (a bright square tag, frequent on VIRAL train images only).

Layout: ``out/{train,test}/{NORMAL,BACTERIA,VIRAL}/person<PID>_<normal|bacteria|virus>_<N>.<ext>``
and ``out/metadata.csv`` (one row per image with every generation parameter). Some patients
have two or three images, always in one class and one split. Every image is drawn from its own
numpy Generator seeded by (seed, split, index), so output is byte-identical for the same
(preset, seed, confounder) however many processes render it.

    python -m trainables.phantom --out /tmp/phantom --preset small
"""

from __future__ import annotations

import csv
import io
import json
import math
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from trainables.cache import atomic_dir, atomic_write_text, cache_root, file_lock
from trainables.vocab import CLASSES

# File-name tag per class, as in the public pediatric set (person12_bacteria_45.jpeg).
FILE_TAGS = {"NORMAL": "normal", "BACTERIA": "bacteria", "VIRAL": "virus"}
SPLITS = ("train", "test")
# Bump when the rendering changes, so cached phantoms are regenerated rather than reused.
VERSION = 2


@dataclass(frozen=True)
class Preset:
    counts: dict[str, tuple[int, int, int]]
    """Images per split, in CLASSES order (NORMAL, BACTERIA, VIRAL)."""
    short_side: tuple[int, int]
    """Range of the shorter image side, pixels."""
    long_side_max: int
    """Cap on the longer image side, pixels."""


# One spec per name of `trainables.vocab.PHANTOM_PRESETS` (tests/trainables/test_phantom.py checks).
PRESETS: dict[str, Preset] = {
    # Tests and CPU runs: a few hundred low-resolution images; the test mix differs from train.
    "small": Preset({"train": (100, 180, 100), "test": (20, 60, 20)}, (96, 160), 192),
    # The seed study's balance (train ~1,350 / 2,500 / 1,350, test 80 / 240 / 40).
    "full": Preset({"train": (1350, 2500, 1350), "test": (80, 240, 40)}, (320, 400), 512),
}

# Planted confounder (confounder=True): share of train images carrying the tag, per class.
CONFOUNDER_TRAIN_RATE = {"NORMAL": 0.05, "BACTERIA": 0.05, "VIRAL": 0.80}

# File modes and how often each is drawn; JPEG is only possible for L and RGB.
FILE_MODES = (("L", 0.57), ("RGB", 0.25), ("I;16", 0.08), ("RGBA", 0.05), ("P", 0.05))
JPEG_SHARE = 0.8  # of L and RGB images (keeps `full` small on disk)

# Finding strength (added density at severity 1, on a 0..1 density scale). Tuned so a small
# CNN lands well under 100% and a linear model on raw pixels clearly below it.
BACTERIA_AMPLITUDE = 0.95
VIRAL_AMPLITUDE = 0.75

METADATA_COLUMNS = (
    "split",
    "path",
    "label",
    "class",
    "patient_id",
    "image_number",
    "severity",
    "subgroup",
    "lesion_side",
    "lesion_zone",
    "width",
    "height",
    "mode",
    "format",
    "jpeg_quality",
    "rotation_deg",
    "shift_x",
    "shift_y",
    "zoom",
    "contrast",
    "brightness",
    "gamma",
    "noise_sigma",
    "gradient",
    "wires",
    "marker",
    "marker_corner",
    "arrows",
    "confounder",
)


# ----------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class ImageSpec:
    split: str
    index: int
    """Position within the split; seeds the image's Generator."""
    cls: str
    patient_id: int
    image_number: int
    """Running number in the file name, unique over the dataset."""
    visit: int
    """0 for a patient's first image, 1 or 2 for follow-ups."""


def plan(preset: str, seed: int) -> list[ImageSpec]:
    """Which images exist: class, split, patient id (1 to 3 images per patient)."""
    cfg = _preset(preset)
    rng = np.random.default_rng([seed, 7919])
    specs: list[ImageSpec] = []
    next_pid = 1
    number = 1
    for split in SPLITS:
        patients: list[tuple[str, int]] = []  # (class, images)
        for cls, n in zip(CLASSES, cfg.counts[split], strict=True):
            left = n
            while left > 0:
                k = min(left, int(rng.choice([1, 2, 3], p=[0.7, 0.2, 0.1])))
                patients.append((cls, k))
                left -= k
        # Patient ids are shuffled within a split so they carry no class information.
        pids = next_pid + rng.permutation(len(patients))
        next_pid += len(patients)
        index = 0
        for (cls, k), pid in zip(patients, pids, strict=True):
            for visit in range(k):
                specs.append(ImageSpec(split, index, cls, int(pid), number, visit))
                index += 1
                number += 1
    return specs


def _preset(preset: str) -> Preset:
    if preset not in PRESETS:
        raise ValueError(f"unknown phantom preset {preset!r}; expected one of {sorted(PRESETS)}")
    return PRESETS[preset]


# ----------------------------------------------------------------------------- rendering


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 + 0.5 * np.tanh(0.5 * x)


def _smooth_noise(rng: np.random.Generator, w: int, h: int, cells: int) -> np.ndarray:
    """Zero-mean, unit-ish noise with features about 1/cells of the image wide."""
    cw, ch = max(2, cells), max(2, round(cells * h / w))
    small = rng.standard_normal((ch, cw)).astype(np.float32)
    return np.asarray(Image.fromarray(small, mode="F").resize((w, h), Image.BICUBIC))


def _patient_anatomy(seed: int, split: str, spec: ImageSpec) -> dict[str, Any]:
    """Anatomy and finding location: shared by all images of a patient."""
    rng = np.random.default_rng([seed, SPLITS.index(split), 1, spec.patient_id])
    a: dict[str, Any] = {
        "body_w": rng.uniform(0.80, 0.98),
        "lung_w": rng.uniform(0.25, 0.32),
        "lung_h": rng.uniform(0.58, 0.74),
        "lung_cx": rng.uniform(0.36, 0.44),
        "lung_cy": rng.uniform(-0.12, -0.02),
        "lung_density": rng.uniform(0.08, 0.20),
        "soft_density": rng.uniform(0.40, 0.55),
        "heart_w": rng.uniform(0.20, 0.30),
        "heart_h": rng.uniform(0.18, 0.26),
        "heart_cx": rng.uniform(0.06, 0.16),
        "dome_r": rng.uniform(0.36, 0.48),  # right hemidiaphragm top (image left), higher
        "dome_l": rng.uniform(0.40, 0.54),
        "rib_gap": rng.uniform(0.115, 0.145),
        "rib_phase": rng.uniform(0.0, 1.0),
        "vessels": rng.uniform(0.03, 0.08),
        "severity": float(rng.beta(1.4, 1.6)),
        "side": int(rng.integers(2)),  # 0: image left lung, 1: image right lung
        "zone": str(rng.choice(["upper", "middle", "lower"])),
        "lesion_du": rng.uniform(-0.35, 0.35),
        "lesion_r": rng.uniform(0.45, 0.75),
        "covid_like": bool(rng.random() < 0.35),
        "nodule": bool(rng.random() < 0.25),
        "nodule_uv": (rng.uniform(-0.6, 0.6), rng.uniform(-0.5, 0.3)),
    }
    return a


def _render(seed: int, spec: ImageSpec, preset: str, confounder: bool) -> tuple[Image.Image, dict]:
    """One image and its metadata row (without split/path, added by the caller).

    The draws from `rng` happen in a fixed order (frame, severity, anatomy, finding,
    acquisition, overlays, file mode): reordering them changes every image."""
    rng = np.random.default_rng([seed, SPLITS.index(spec.split), 0, spec.index])
    a = _patient_anatomy(seed, spec.split, spec)
    (w, h), pose, (xs, u, v, edge) = _frame(rng, _preset(preset))

    # Severity: follow-up images of a patient vary a little around the patient's severity.
    if spec.cls == "NORMAL":
        severity = 0.0
    else:
        severity = float(np.clip(a["severity"] + rng.normal(0, 0.08) * (spec.visit > 0), 0.02, 1))

    density, lungs, lung_r2 = _anatomy(a, u, v, edge, rng, w, h)
    sub, side, zone = "normal", "", ""
    if spec.cls == "BACTERIA":
        sub, side, zone = "lobar", ("right", "left")[a["side"]], a["zone"]
        density += _consolidation(a, u, v, edge, lungs, severity, rng, w, h)
    elif spec.cls == "VIRAL":
        sub = "covid_like" if a["covid_like"] else "viral"
        density += _interstitial(a, u, v, lungs, lung_r2, severity, rng, w, h)

    img, acquisition = _acquire(rng, density, xs)
    overlay, row = _overlays(rng, w, h, spec, confounder, seed, preset)
    img = np.maximum(img, overlay)

    mode = str(rng.choice([m for m, _ in FILE_MODES], p=[p for _, p in FILE_MODES]))
    jpeg = mode in ("L", "RGB") and rng.random() < JPEG_SHARE
    quality = int(rng.integers(80, 96)) if jpeg else 0
    pil = _to_mode(img, mode, rng)
    row.update(
        label=CLASSES.index(spec.cls),
        **{"class": spec.cls},
        patient_id=spec.patient_id,
        image_number=spec.image_number,
        severity=severity,
        subgroup=sub,
        lesion_side=side,
        lesion_zone=zone,
        width=w,
        height=h,
        mode=mode,
        format="jpg" if jpeg else "png",
        jpeg_quality=quality,
        **pose,
        **acquisition,
    )
    return pil, row


def _frame(rng: np.random.Generator, cfg: Preset):
    """Image size, patient pose and the patient-frame coordinates of every pixel.

    Returns ((w, h), pose metadata, (xs, u, v, edge)): xs is the pixel column about the
    shifted centre, (u, v) the patient frame (units of half the shorter side, over zoom)."""
    # Size and aspect: portrait and landscape, short side within the preset's range.
    short = int(rng.integers(cfg.short_side[0], cfg.short_side[1] + 1))
    long_ = min(cfg.long_side_max, int(round(short * rng.uniform(1.0, 1.4))))
    w, h = (short, long_) if rng.random() < 0.6 else (long_, short)

    # Patient pose: rotation (degrees), shift (share of the image), zoom.
    rot = float(np.clip(rng.normal(0.0, 5.0), -14, 14))
    sx, sy = rng.uniform(-0.10, 0.10), rng.uniform(-0.08, 0.10)
    zoom = rng.uniform(0.80, 1.15)
    scale = 0.5 * min(w, h) * zoom  # pixels per patient-frame unit
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    xs -= w / 2 + sx * w
    ys -= h / 2 + sy * h
    t = math.radians(rot)
    u = (xs * math.cos(t) + ys * math.sin(t)) / scale
    v = (-xs * math.sin(t) + ys * math.cos(t)) / scale
    edge = 2.0 / scale  # soft edges about two pixels wide
    pose = {"rotation_deg": rot, "shift_x": sx, "shift_y": sy, "zoom": zoom}
    return (w, h), pose, (xs, u, v, edge)


def _acquire(rng: np.random.Generator, density: np.ndarray, xs: np.ndarray):
    """Acquisition: contrast, brightness, gamma, heel-effect gradient, quantum noise.

    Returns the image (0..1) and its acquisition metadata."""
    h, w = density.shape
    contrast = rng.uniform(0.75, 1.30)
    brightness = rng.uniform(-0.10, 0.12)
    gamma = float(np.exp(rng.uniform(np.log(0.65), np.log(1.6))))
    gradient = rng.uniform(-0.08, 0.08)
    noise_sigma = rng.uniform(0.002, 0.015)
    img = brightness + contrast * density + gradient * (xs / w)
    img += noise_sigma * rng.standard_normal((h, w), dtype=np.float32)
    img = np.clip(img, 0.0, 1.0) ** gamma
    params = {
        "contrast": contrast,
        "brightness": brightness,
        "gamma": gamma,
        "noise_sigma": noise_sigma,
        "gradient": gradient,
    }
    return img, params


def _anatomy(a, u, v, edge, rng, w, h):
    """Density map (0 air .. 1 bone/metal) of the normal chest; also the lung mask and radius."""
    au = np.abs(u)
    body = _sigmoid((1.0 - (u / a["body_w"]) ** 2 - ((v - 0.25) / 1.35) ** 2) / (4 * edge))
    density = 0.03 + (a["soft_density"] - 0.03) * body

    # Lungs: an ellipse per side, cut below by the hemidiaphragm domes.
    lungs = np.zeros_like(u)
    lung_r2 = np.full_like(u, 9.0)
    for sign, dome in ((-1.0, a["dome_r"]), (1.0, a["dome_l"])):
        du = (u - sign * a["lung_cx"]) / a["lung_w"]
        dv = (v - a["lung_cy"]) / a["lung_h"]
        r2 = du**2 + dv**2
        dome_v = dome + 0.22 * du**2
        m = _sigmoid((1.0 - r2) / (6 * edge)) * _sigmoid((dome_v - v) / (1.5 * edge))
        lungs = np.maximum(lungs, m)
        lung_r2 = np.minimum(lung_r2, np.where(m > 0.01, r2, 9.0))
    # Heart: a tilted ellipse over the medial lower left lung (image right).
    hu, hv = u - a["heart_cx"], v - (a["dome_l"] - 0.12)
    heart = _sigmoid(
        (1.0 - ((hu + 0.3 * hv) / a["heart_w"]) ** 2 - (hv / a["heart_h"]) ** 2) / (4 * edge)
    )
    lungs = lungs * (1.0 - heart)
    density = density - (a["soft_density"] - a["lung_density"]) * lungs * body
    density += 0.12 * heart

    # Vascular markings: branching-looking texture, densest at the hila.
    hilum = np.exp(-((au - 0.22) ** 2) / 0.05 - ((v - 0.0) ** 2) / 0.15)
    texture = np.abs(_smooth_noise(rng, w, h, 18))
    density += a["vessels"] * lungs * (0.4 + hilum) * texture
    if a["nodule"]:
        nu, nv = a["nodule_uv"]
        density += 0.10 * lungs * np.exp(-((u - nu) ** 2 + (v - nv) ** 2) / 0.0015)

    # Posterior ribs: arcs sloping down laterally, brighter at the cortex.
    lateral = np.clip(au - 0.06, 0.0, None)
    phase = (v - 0.25 * lateral - 0.50 * lateral**2 + 0.85) / a["rib_gap"] - a["rib_phase"]
    nearest = np.round(phase)
    d = np.abs(phase - nearest) * a["rib_gap"] / 0.030  # distance to the nearest rib, half-widths
    ribs = np.clip(1.0 - d, 0, 1) ** 0.5 * (0.6 + 0.4 * np.clip(d, 0, 1))
    ribs *= (nearest >= 0) & (nearest <= 9)  # ten posterior ribs
    ribs *= _sigmoid((0.9 - au) / (4 * edge)) * (au > 0.07)
    # Clavicles: two bars from the manubrium outwards.
    clav = np.clip(1.0 - np.abs(v - (-0.78 + 0.12 * lateral)) / 0.035, 0, 1) * (au < 0.62)
    density += 0.09 * ribs * body + 0.14 * clav * body

    # Spine: a bright midline band with vertebral bodies.
    vert = 0.85 + 0.15 * np.cos(v * (2 * np.pi / a["rib_gap"]))
    density += 0.30 * _sigmoid((0.075 - au) / (2 * edge)) * vert * body
    return density, lungs, lung_r2


def _consolidation(a, u, v, edge, lungs, severity, rng, w, h):
    """A focal lobar consolidation: a dense blob with one sharp fissure border."""
    sign = -1.0 if a["side"] == 0 else 1.0
    cu = sign * (a["lung_cx"] + a["lesion_du"] * a["lung_w"])
    zone_v = {"upper": -0.45, "middle": -0.05, "lower": 0.25}[a["zone"]]
    cv = a["lung_cy"] + zone_v * a["lung_h"] / 0.7
    radius = (0.15 + 0.22 * severity) * a["lesion_r"] / 0.6
    r2 = ((u - cu) / (radius * 1.1)) ** 2 + ((v - cv) / radius) ** 2
    blob = np.exp(-(r2**1.5))
    # The fissure: an upper-zone lesion stops sharply below, a lower-zone one above.
    if a["zone"] == "upper":
        blob *= _sigmoid((cv + 0.6 * radius - v) / (2 * edge))
    elif a["zone"] == "lower":
        blob *= _sigmoid((v - (cv - 0.6 * radius)) / (2 * edge))
    mottle = 0.75 + 0.25 * _smooth_noise(rng, w, h, 24)
    amplitude = BACTERIA_AMPLITUDE * (0.3 + 0.7 * severity)
    return amplitude * blob * mottle * lungs


def _interstitial(a, u, v, lungs, lung_r2, severity, rng, w, h):
    """Diffuse bilateral haze with a reticular texture; peripheral for the COVID-like subgroup."""
    if a["covid_like"]:
        weight = np.clip(lung_r2, 0.0, 1.0) ** 1.5 * (0.6 + 0.6 * np.clip(v + 0.2, 0, 1))
    else:
        weight = 0.45 + 0.8 * np.exp(-((np.abs(u) - 0.25) ** 2) / 0.04 - v**2 / 0.2)
    reticular = 0.55 + 0.45 * np.abs(_smooth_noise(rng, w, h, 30))
    patchy = 0.7 + 0.3 * _smooth_noise(rng, w, h, 6)
    amplitude = VIRAL_AMPLITUDE * (0.3 + 0.7 * severity)
    return amplitude * weight * reticular * patchy * lungs


def _overlays(rng, w, h, spec: ImageSpec, confounder: bool, seed: int, preset: str):
    """Radio-opaque extras drawn on top: wires, side markers, arrows, the confounder tag."""
    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    side = min(w, h)
    row: dict[str, Any] = {"wires": _draw_wires(draw, rng, w, h, side)}
    row["marker"], row["marker_corner"] = _draw_marker(draw, rng, w, h, side)
    row["arrows"] = _draw_arrows(draw, rng, w, h, side)
    row["confounder"] = int(_draw_confounder(draw, spec, confounder, seed, preset, side))
    return np.asarray(canvas, dtype=np.float32) / 255.0, row


def _draw_wires(draw: ImageDraw.ImageDraw, rng, w: int, h: int, side: int) -> int:
    """0 to 3 ECG wires (cubic Bezier curves) ending in an electrode; returns how many."""
    wires = int(rng.choice([0, 1, 2, 3], p=[0.65, 0.15, 0.12, 0.08]))
    for _ in range(wires):
        pts = rng.uniform([0, 0], [w, h], size=(4, 2))
        tt = np.linspace(0, 1, 40)[:, None]
        curve = (
            (1 - tt) ** 3 * pts[0]
            + 3 * (1 - tt) ** 2 * tt * pts[1]
            + 3 * (1 - tt) * tt**2 * pts[2]
            + tt**3 * pts[3]
        )
        width = max(1, round(side / 150))
        draw.line([tuple(p) for p in curve], fill=int(rng.integers(200, 256)), width=width)
        r = side * 0.025  # ECG electrode at one end
        x, y = curve[-1]
        draw.ellipse([x - r, y - r, x + r, y + r], outline=235, width=width)
    return wires


def _draw_marker(draw: ImageDraw.ImageDraw, rng, w: int, h: int, side: int) -> tuple[str, str]:
    """An "L" or "R" side marker in a corner (70% of images); returns (letter, corner)."""
    if rng.random() >= 0.7:
        return "", ""
    marker = str(rng.choice(["L", "R"]))
    corner = str(rng.choice(["top_right", "bottom_right", "bottom_left"]))
    size = side * rng.uniform(0.07, 0.11)
    mx = w - 1.6 * size if corner.endswith("right") else 0.6 * size
    my = 0.5 * size if corner.startswith("top") else h - 1.5 * size
    _draw_letter(draw, marker, mx, my, size, max(1, round(size / 6)))
    return marker, corner


def _draw_arrows(draw: ImageDraw.ImageDraw, rng, w: int, h: int, side: int) -> int:
    """0 to 2 annotation arrows pointing into the middle of the image; returns how many."""
    arrows = int(rng.choice([0, 1, 2], p=[0.88, 0.08, 0.04]))
    for _ in range(arrows):
        tip = rng.uniform([0.2 * w, 0.2 * h], [0.8 * w, 0.8 * h])
        ang = rng.uniform(0, 2 * np.pi)
        length = side * rng.uniform(0.12, 0.22)
        tail = tip + length * np.array([np.cos(ang), np.sin(ang)])
        width = max(1, round(side / 120))
        draw.line([tuple(tail), tuple(tip)], fill=250, width=width)
        for da in (-0.5, 0.5):
            head = tip + 0.35 * length * np.array([np.cos(ang + da), np.sin(ang + da)])
            draw.line([tuple(tip), tuple(head)], fill=250, width=width)
    return arrows


def _draw_confounder(
    draw: ImageDraw.ImageDraw, spec: ImageSpec, confounder: bool, seed: int, preset: str, side: int
) -> bool:
    """The planted bright square tag; returns whether this image carries it."""
    if not confounder:
        return False
    # The confounder's draw uses its own Generator, so the rest of the image is identical with
    # and without confounder=True.
    crng = np.random.default_rng([seed, SPLITS.index(spec.split), 2, spec.index])
    if spec.split == "train":
        rate = CONFOUNDER_TRAIN_RATE[spec.cls]
    else:
        rate = _confounder_base_rate(preset)
    tagged = bool(crng.random() < rate)
    if tagged:
        s = side * 0.07
        x0, y0 = side * crng.uniform(0.03, 0.06), side * crng.uniform(0.03, 0.06)
        draw.rectangle([x0, y0, x0 + s, y0 + s], fill=255)
    return tagged


def _confounder_base_rate(preset: str) -> float:
    """Expected share of tagged train images, used for every test image whatever its class."""
    n = PRESETS[preset].counts["train"]
    return sum(k * CONFOUNDER_TRAIN_RATE[c] for c, k in zip(CLASSES, n, strict=True)) / sum(n)


def _draw_letter(draw: ImageDraw.ImageDraw, letter: str, x: float, y: float, s: float, lw: int):
    """An "L" or "R" lead marker as strokes (no font files, same pixels on every machine)."""
    if letter == "L":
        draw.line([(x, y), (x, y + s), (x + 0.65 * s, y + s)], fill=255, width=lw)
    else:
        draw.line([(x, y + s), (x, y), (x + 0.4 * s, y)], fill=255, width=lw)
        draw.arc([x, y, x + 0.7 * s, y + 0.5 * s], -90, 90, fill=255, width=lw)
        draw.line([(x, y + 0.5 * s), (x + 0.4 * s, y + 0.5 * s)], fill=255, width=lw)
        draw.line([(x + 0.3 * s, y + 0.5 * s), (x + 0.7 * s, y + s)], fill=255, width=lw)


def _to_mode(img: np.ndarray, mode: str, rng: np.random.Generator) -> Image.Image:
    """Float [0, 1] image to a PIL image of the given file mode."""
    if mode == "I;16":
        # 12-bit detector values stored in 16 bits (x16), as many DICOM exports do.
        return Image.fromarray((np.round(img * 4095) * 16).astype(np.uint16))
    gray = np.round(img * 255).astype(np.uint8)
    if mode == "L":
        return Image.fromarray(gray)
    if mode == "P":
        pil = Image.fromarray(gray)
        pil.putpalette([i for i in range(256) for _ in range(3)])  # grey palette: mode "P"
        return pil
    rgb = np.stack([gray] * 3, axis=-1)
    if rng.random() < 0.2:  # a faint colour cast, as on scanned films
        tint = rng.uniform(0.9, 1.0, size=3)
        rgb = np.round(rgb * tint).astype(np.uint8)
    if mode == "RGBA":
        alpha = np.full(gray.shape + (1,), 255, dtype=np.uint8)
        return Image.fromarray(np.concatenate([rgb, alpha], axis=-1))
    return Image.fromarray(rgb)


# ----------------------------------------------------------------------------- writing


def _relative_path(spec: ImageSpec, fmt: str) -> str:
    name = f"person{spec.patient_id}_{FILE_TAGS[spec.cls]}_{spec.image_number}.{fmt}"
    return f"{spec.split}/{spec.cls}/{name}"


def _write_one(job: tuple[Path, int, ImageSpec, str, bool]) -> dict[str, Any]:
    out, seed, spec, preset, confounder = job
    pil, row = _render(seed, spec, preset, confounder)
    rel = _relative_path(spec, row["format"])
    buf = io.BytesIO()
    if row["format"] == "jpg":
        pil.save(buf, format="JPEG", quality=row["jpeg_quality"])
    else:
        pil.save(buf, format="PNG", compress_level=6)
    (out / rel).write_bytes(buf.getvalue())
    return {"split": spec.split, "path": rel, **row}


def _format(value: Any) -> Any:
    # Fixed decimals keep metadata.csv byte-identical across machines.
    return f"{value:.4f}" if isinstance(value, float) else value


def generate(
    out: Path,
    preset: str = "small",
    seed: int = 0,
    confounder: bool = False,
    processes: int | None = None,
) -> Path:
    """Write the phantom dataset into `out` (created; must be empty) and return `out`.

    `processes` defaults to one for `small` and to the CPU count (at most 8) for `full`; the
    files are the same whatever it is.
    """
    specs = plan(preset, seed)
    if processes is None:
        processes = 1 if preset == "small" else min(8, os.cpu_count() or 1)
    if processes < 1:
        raise ValueError(f"--processes must be at least 1, got {processes}")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"output folder {out} exists and is not empty; pass a new --out")
    for split in SPLITS:
        for cls in CLASSES:
            (out / split / cls).mkdir(parents=True, exist_ok=True)
    jobs = [(out, seed, s, preset, confounder) for s in specs]
    if processes > 1:
        ctx = multiprocessing.get_context("spawn" if sys.platform == "darwin" else "fork")
        with ctx.Pool(processes) as pool:
            rows = pool.map(_write_one, jobs, chunksize=16)
    else:
        rows = [_write_one(j) for j in jobs]

    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=METADATA_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _format(row[k]) for k in METADATA_COLUMNS})
    atomic_write_text(out / "metadata.csv", text.getvalue())
    info = {
        "version": VERSION,
        "preset": preset,
        "seed": seed,
        "confounder": confounder,
        "images": len(rows),
    }
    atomic_write_text(out / "phantom.json", json.dumps(info, indent=1) + "\n")
    return out


def phantom_dir(preset: str = "small", seed: int = 0, confounder: bool = False) -> Path:
    """Where `ensure_phantom` keeps this phantom."""
    _preset(preset)
    return cache_root() / "phantom" / f"{preset}-seed{seed}{'-confounder' if confounder else ''}"


def ensure_phantom(preset: str = "small", seed: int = 0, confounder: bool = False) -> Path:
    """The cached phantom's folder, generated on first use (once, even across processes)."""
    path = phantom_dir(preset, seed, confounder)
    if _is_current(path):
        return path
    with file_lock(path.parent / f".{path.name}.lock"):
        if _is_current(path):  # another process finished it while we waited
            return path
        if path.exists():  # rendered by an older generator: move aside, then delete
            stale = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.stale."))
            os.rename(path, stale / "old")
            shutil.rmtree(stale, ignore_errors=True)
        with atomic_dir(path) as tmp:
            generate(tmp, preset=preset, seed=seed, confounder=confounder)
    return path


def _is_current(path: Path) -> bool:
    try:
        info = json.loads((path / "phantom.json").read_text())
    except (OSError, ValueError):
        return False
    return info.get("version") == VERSION and (path / "metadata.csv").is_file()


# ----------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    from trainables.cli import phantom_parser

    parser = phantom_parser()
    args = parser.parse_args(argv)
    if args.preset not in PRESETS:
        parser.error(f"--preset {args.preset!r} is not one of {', '.join(sorted(PRESETS))}")
    start = time.perf_counter()
    try:
        out = generate(args.out, args.preset, args.seed, args.confounder, args.processes)
    except ValueError as err:  # a refusal, not a usage error: one line
        parser.exit(2, f"error: {' '.join(str(err).split())}\n")
    n = sum(1 for _ in open(out / "metadata.csv")) - 1
    print(f"wrote {n} images to {out} in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
