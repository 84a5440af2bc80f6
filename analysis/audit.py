"""Shortcut audit (DeGrave et al. 2021): does the model's evidence lie in the body, or outside it
(side markers, tags, borders)?

Saliency is occlusion sensitivity (Zeiler and Fergus 2014; model-agnostic): each cell of an
8 x 8 grid (side S / 8) is filled in turn with the image's median grey level, and the drop in
the predicted class's probability is credited to the cell's pixels; only drops count (positive
evidence). 64 forward passes per image.

Body mask (per decoded uint8 image, no labels or metadata): Gaussian smoothing (sigma S / 32),
Otsu's threshold, a binary opening (radius S / 32) that cuts thin wires, letters and small tags
off the body, the largest connected component, then its convex hull, which takes in the dark
lung fields the body surrounds.

The check is causal: every pixel outside the body is set to the median grey of the image's
outside (its background: markers, tags and text gone, the body untouched), and the model predicts
again. An image's prediction rests on the outside when its predicted class's probability falls
by more than `IMAGE_DROP` (0.5); the model is flagged when more than `FLAG_SHARE` (5 %) of the
audited test images do. A model that predicts one class for at least `WEAK_TOP_SHARE` (90 %) of
the audited images (which hold every class) is too weak to audit: nothing is flagged.

Measured by `bench/audit_rates.py` (5 seeds per arm, `simple_cnn_10m` at 64 px, 60 audited test
images; bench/RESULTS.md): trained 5 epochs, the clean phantom's models have 0-2 % of images
resting on the outside (0 of 5 flagged) and the confounded phantom's 10-18 % (5 of 5 flagged);
every 1-epoch model predicts one class for 92-100 % of images and is reported too weak. The
rule this replaced (flag when over 10 % of images have more than half of their occlusion
saliency outside the body) flagged 5 of 5 trained clean models: at 64 px the body covers about
half of the image, so diffuse evidence is half outside.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage
from scipy.spatial import Delaunay, QhullError

from trainables.config import TrialConfig
from trainables.device import EVAL_BATCH
from trainables.markdown import md_code
from trainables.train import predict_proba

PATCH = 8  # the occluding patch is S / PATCH pixels wide
STRIDE = 8  # and moves by S / STRIDE pixels (= PATCH: a grid of non-overlapping cells)
IMAGE_DROP = 0.5  # an image rests on the outside when removing it costs this much probability
FLAG_SHARE = 0.05  # a model is flagged when more than this share of audited images do
WEAK_TOP_SHARE = 0.9  # one class predicted for this share of audited images: too weak to audit


def occlusion_saliency(
    model: torch.nn.Module,
    images: torch.Tensor,
    device: str | torch.device,
    cfg: TrialConfig | None = None,
    targets: np.ndarray | None = None,
    batch_size: int = EVAL_BATCH,
) -> tuple[np.ndarray, np.ndarray]:
    """Occlusion maps (N, S, S) float64 (>= 0) for uint8 images (N, 1, S, S), for `targets`
    (default: the predicted class); also returns the targets."""
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ValueError(f"saliency takes uint8 images (N, 1, S, S), got {tuple(images.shape)}")
    side = images.shape[-1]
    patch, stride = max(1, side // PATCH), max(1, side // STRIDE)
    starts = list(range(0, side - patch + 1, stride))
    base = predict_proba(model, images, device, batch_size, cfg=cfg).numpy()
    targets = base.argmax(axis=1) if targets is None else np.asarray(targets)
    maps = np.zeros((len(images), side, side))
    cover = np.zeros((side, side))
    for y in starts:
        for x in starts:
            cover[y : y + patch, x : x + patch] += 1
    for i, image in enumerate(images):
        fill = int(image.float().median())
        batch = image.unsqueeze(0).repeat(len(starts) ** 2, 1, 1, 1)
        for k, (y, x) in enumerate((y, x) for y in starts for x in starts):
            batch[k, :, y : y + patch, x : x + patch] = fill
        probs = predict_proba(model, batch, device, batch_size, cfg=cfg).numpy()
        drops = np.maximum(base[i, targets[i]] - probs[:, targets[i]], 0.0)
        for k, (y, x) in enumerate((y, x) for y in starts for x in starts):
            maps[i, y : y + patch, x : x + patch] += drops[k]
    return maps / np.maximum(cover, 1), targets


def _otsu(values: np.ndarray) -> float:
    """Otsu's threshold of 8-bit-range values: maximal between-class variance (256 bins)."""
    hist, edges = np.histogram(values, bins=256, range=(0, 256))
    p = hist / max(hist.sum(), 1)
    w = np.cumsum(p)
    mu = np.cumsum(p * edges[:-1])
    with np.errstate(invalid="ignore", divide="ignore"):
        between = (mu[-1] * w - mu) ** 2 / (w * (1 - w))
    return float(edges[int(np.nanargmax(between))])


def body_mask(image: np.ndarray) -> np.ndarray:
    """Bool (S, S) mask of the body in a uint8 (S, S) image (the rule in the module docstring)."""
    img = np.asarray(image, dtype=np.float64).squeeze()
    side = img.shape[-1]
    radius = max(1, side // 32)
    smooth = ndimage.gaussian_filter(img, sigma=side / 32)
    mask = smooth > _otsu(smooth)
    disk = np.hypot(*np.mgrid[-radius : radius + 1, -radius : radius + 1]) <= radius
    mask = ndimage.binary_opening(mask, structure=disk)
    labels, count = ndimage.label(mask)
    if count == 0:
        return np.ones_like(mask)  # nothing stands out: treat the whole image as body
    sizes = ndimage.sum(mask, labels, index=range(1, count + 1))
    body = labels == (1 + int(np.argmax(sizes)))
    points = np.argwhere(body)
    try:
        hull = Delaunay(points)
    except QhullError:  # a degenerate (line-like) component is its own hull
        return body
    grid = np.argwhere(np.ones_like(body))
    return (hull.find_simplex(grid) >= 0).reshape(body.shape)


@dataclass
class Audit:
    """Per audited image: its saliency map, body mask, outside share; and the verdict."""

    maps: np.ndarray
    masks: np.ndarray
    outside: np.ndarray
    """Share of positive saliency outside the body, per image (0 when an image has none)."""
    targets: np.ndarray
    labels: np.ndarray
    indices: np.ndarray
    """Positions of the audited images in the split."""
    ablated_drop: np.ndarray
    """How much the predicted class's probability falls when the outside is removed."""

    @property
    def rests_outside(self) -> np.ndarray:
        """Per image: removing the outside of the body costs its prediction over IMAGE_DROP."""
        return self.ablated_drop > IMAGE_DROP

    @property
    def outside_share(self) -> float:
        """Share of audited images whose prediction rests on the outside of the body."""
        return float(np.mean(self.rests_outside))

    @property
    def top_class_share(self) -> float:
        """Share of audited images given the most predicted class."""
        return float(np.bincount(self.targets).max() / len(self.targets))

    @property
    def too_weak(self) -> bool:
        """The model predicts (nearly) one class: its evidence says nothing about shortcuts."""
        return self.top_class_share >= WEAK_TOP_SHARE

    @property
    def flagged(self) -> bool:
        return not self.too_weak and self.outside_share > FLAG_SHARE


def sample_per_class(labels: np.ndarray, per_class: int, seed: int = 0) -> np.ndarray:
    """Up to `per_class` seeded positions of each class, in class order."""
    rng = np.random.default_rng(seed)
    picks = []
    for c in np.unique(labels):
        where = np.flatnonzero(labels == c)
        picks.append(np.sort(rng.choice(where, size=min(per_class, len(where)), replace=False)))
    return np.concatenate(picks)


def audit(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: np.ndarray,
    device: str | torch.device,
    cfg: TrialConfig | None = None,
    indices: np.ndarray | None = None,
) -> Audit:
    """Saliency, body masks and outside shares of `images[indices]` (default: all)."""
    labels = np.asarray(labels)
    indices = np.arange(len(images)) if indices is None else np.asarray(indices)
    chosen = images[torch.as_tensor(indices, dtype=torch.long)]
    maps, targets = occlusion_saliency(model, chosen, device, cfg)
    masks = np.stack([body_mask(img[0].numpy()) for img in chosen])
    total = maps.sum(axis=(1, 2))
    outside = np.where(total > 0, (maps * ~masks).sum(axis=(1, 2)) / np.maximum(total, 1e-12), 0)
    rows = np.arange(len(chosen))
    before = predict_proba(model, chosen, device, cfg=cfg).numpy()[rows, targets]
    ablated = predict_proba(model, outside_removed(chosen, masks), device, cfg=cfg).numpy()
    drop = before - ablated[rows, targets]
    return Audit(maps, masks, outside, targets, labels[indices], indices, drop)


def outside_removed(images: torch.Tensor, masks: np.ndarray) -> torch.Tensor:
    """uint8 images (N, 1, S, S) with every pixel outside the body set to the median grey of
    the image's outside (its background): markers, tags and text gone, the body untouched."""
    out = images.clone()
    for i, mask in enumerate(masks):
        outside = torch.as_tensor(~mask)
        if outside.any():
            out[i, 0][outside] = images[i, 0][outside].median()
    return out


# --- the report's section -------------------------------------------------------------------

PER_CLASS_SHOWN = 3  # test images per class in the figure
PER_CLASS_AUDITED = 20  # test images per class in the quantitative check


def saliency_figure(result: Audit, images: torch.Tensor, classes: list[str], path) -> object:
    """Shown images per class (rows): the image with the body outline, and its saliency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from analysis.plots import _save

    shown = [
        k for c in range(len(classes)) for k in np.flatnonzero(result.labels == c)[:PER_CLASS_SHOWN]
    ]
    cols = max(1, min(len(shown), PER_CLASS_SHOWN * len(classes)))
    fig, axes = plt.subplots(2, cols, figsize=(1.9 * cols, 4.2), squeeze=False)
    for j, k in enumerate(shown):
        img = images[result.indices[k], 0].numpy()
        for ax in axes[:, j]:
            ax.imshow(img, cmap="gray", vmin=0, vmax=255)
            ax.contour(result.masks[k], levels=[0.5], colors="lime", linewidths=0.8)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[1, j].imshow(result.maps[k], cmap="inferno", alpha=0.6)
        axes[0, j].set_title(
            f"{classes[result.labels[k]]} -> {classes[result.targets[k]]}", fontsize=7
        )
        axes[1, j].set_title(f"outside {result.outside[k]:.0%}", fontsize=7)
    for ax in axes.ravel():
        if not ax.images:  # fewer images than columns
            ax.axis("off")
    return _save(fig, path)


def audit_section(doc, evaluator, best) -> Audit:
    """Adds the shortcut audit of the best trial on a seeded sample of its test images."""
    import pandas as pd

    from trainables.train import model_from_checkpoint

    model, cfg, _ = model_from_checkpoint(best.trial.best_checkpoint)
    model.to(evaluator.device)
    data = evaluator.dataset(cfg)
    labels = data.test.labels.numpy()
    picks = sample_per_class(labels, PER_CLASS_AUDITED)
    result = audit(model, data.test.images, labels, evaluator.device, cfg, picks)
    if result.too_weak:
        verdict = (
            f"**not audited: the model is too weak** (one class for {result.top_class_share:.0%}"
            f" of these images, {WEAK_TOP_SHARE:.0%} or more is too weak): the evidence of a "
            "model that barely tells the classes apart says nothing about shortcuts"
        )
    elif result.flagged:
        verdict = (
            "**flagged: many predictions rest on what lies outside the body** (markers, tags, "
            "borders: a shortcut the model may have learned; check the data before trusting it)"
        )
    else:
        verdict = "not flagged: the predictions rest on the body"
    doc.heading("Shortcut audit")
    doc.text(
        f"The best trial {md_code(best.trial.trial_id)} on {len(picks)} test images (up to "
        f"{PER_CLASS_AUDITED} per class, seeded). The body is the convex hull of the largest "
        "bright region (Gaussian smoothing, Otsu threshold, opening). With everything outside "
        "it set to the background's grey, the model predicts again: for "
        f"{result.outside_share:.0%} of the images the predicted class's probability falls by "
        f"more than {IMAGE_DROP:.1f} (threshold: {FLAG_SHARE:.0%} of the images): "
        f"{verdict}. The saliency (occlusion: each cell of an {PATCH} x {PATCH} grid filled in "
        "turn with the image's median grey; the drop in the predicted class's probability is "
        "the evidence there) shows where each prediction looks."
    )
    table = pd.DataFrame(
        {
            "class": list(best.classes),
            "images": [int(np.sum(result.labels == c)) for c in range(len(best.classes))],
            "mean_outside_share": [
                float(result.outside[result.labels == c].mean()) if np.any(result.labels == c)
                else float("nan")
                for c in range(len(best.classes))
            ],
            "images_resting_outside": [
                int(np.sum(result.rests_outside[result.labels == c]))
                for c in range(len(best.classes))
            ],
        }
    )  # fmt: skip
    doc.table("shortcut_audit", "Evidence outside the body per class (occlusion)", table)
    path = saliency_figure(result, data.test.images, best.classes, doc.out / "saliency.png")
    doc.figure(
        path,
        f"Occlusion saliency of {PER_CLASS_SHOWN} test images per class (green: body outline; "
        "title: true -> predicted class)",
    )
    return result
