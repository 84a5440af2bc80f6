"""The shortcut audit flags a model trained on the confounded phantom (a bright tag on 80% of
VIRAL train images) and not one trained on the clean phantom; its body mask leaves the planted
tag outside the body."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from analysis.audit import (
    FLAG_SHARE,
    WEAK_TOP_SHARE,
    Audit,
    audit,
    body_mask,
    occlusion_saliency,
    outside_removed,
    sample_per_class,
)
from trainables.config import TrialConfig
from trainables.data import load_for_config
from trainables.phantom import ensure_phantom
from trainables.train import train_model

AUDITED_PER_CLASS = 10  # test images per class: 30 images, 25% of them tagged in test


def _cfg(confounder: bool) -> TrialConfig:
    root = ensure_phantom("small", confounder=confounder)
    # Seeded: the same two models every run (CPU training is deterministic for a seed).
    return TrialConfig(
        model="simple_cnn_10m", image_size=64, epochs=5, lr=1e-4, data=str(root), seed=0
    )


def _trained(cfg: TrialConfig):
    data = load_for_config(cfg, include_test=True)
    return train_model(cfg, dataset=data, device="cpu"), data


@pytest.fixture(scope="module")
def models():
    return {conf: _trained(_cfg(conf)) for conf in (True, False)}


def _tag_pixels(models) -> tuple[np.ndarray, np.ndarray]:
    """Per test image, the pixels where the confounded phantom differs from the clean one (the
    tag: the generator draws it with its own random stream, all else is identical)."""
    tagged, clean = models[True][1].test, models[False][1].test
    assert tagged.paths == clean.paths
    diff = (tagged.images.int() - clean.images.int()).abs()[:, 0].numpy() > 30
    return diff, np.flatnonzero(diff.reshape(len(diff), -1).any(axis=1))


@pytest.mark.slow
def test_the_planted_tag_lies_outside_the_body_mask(models):
    diff, tagged = _tag_pixels(models)
    images = models[True][1].test.images
    # About a quarter of the test images carry the tag (the train base rate, in every class).
    assert 0.1 < len(tagged) / len(images) < 0.4
    inside = [(body_mask(images[i, 0].numpy()) & diff[i]).sum() / diff[i].sum() for i in tagged]
    # The rule leaves the tag out of the body in every tagged image (a stray pixel at most).
    assert max(inside) < 0.1, inside


@pytest.mark.slow
def test_audit_flags_the_confounded_model_and_not_the_clean_one(models):
    results = {}
    for conf, (model, data) in models.items():
        labels = data.test.labels.numpy()
        picks = sample_per_class(labels, AUDITED_PER_CLASS)
        results[conf] = audit(model, data.test.images, labels, "cpu", None, picks)
    # The measured shares, printed for the record (pytest -s).
    print({c: round(r.outside_share, 3) for c, r in results.items()}, flush=True)
    assert results[True].flagged, results[True].outside_share
    assert not results[False].flagged, results[False].outside_share
    # The confounded model's outside evidence sits on the tagged images.
    diff, tagged = _tag_pixels(models)
    on_tagged = np.isin(results[True].indices, tagged)
    assert results[True].outside[on_tagged].mean() > results[True].outside[~on_tagged].mean()


def test_occlusion_credits_the_pixels_a_model_reads():
    # A model whose VIRAL logit is the brightness of the top-left 8x8 corner: occluding that
    # corner is the only thing that lowers its probability.
    class Corner(torch.nn.Module):
        def forward(self, x):
            corner = x[:, 0, :8, :8].mean(dim=(1, 2))
            return torch.stack([torch.zeros_like(corner), torch.zeros_like(corner), 4 * corner], 1)

    images = torch.zeros(2, 1, 64, 64, dtype=torch.uint8)
    images[:, :, 16:48, 16:48] = 120  # a "body" in the middle
    images[:, :, :8, :8] = 255  # the tag
    maps, targets = occlusion_saliency(Corner(), images, "cpu")
    assert (targets == 2).all()
    assert maps[:, :8, :8].min() > 0 and maps[:, 16:, 16:].max() == 0
    mask = body_mask(images[0, 0].numpy())
    # The body mask holds the middle square and not the tag.
    assert mask[20:44, 20:44].all() and not mask[:8, :8].any()


def test_removing_the_outside_erases_the_tag_and_keeps_the_body():
    image = torch.full((1, 1, 64, 64), 10, dtype=torch.uint8)  # background
    image[:, :, 16:48, 16:48] = 120  # the body
    image[:, :, 2:8, 2:8] = 255  # a tag
    mask = body_mask(image[0, 0].numpy())
    out = outside_removed(image, mask[None])
    assert (out[0, 0][torch.as_tensor(mask)] == image[0, 0][torch.as_tensor(mask)]).all()
    assert out[0, 0, 2:8, 2:8].eq(10).all()  # the background's median grey
    assert image[0, 0, 2:8, 2:8].eq(255).all()  # the input is left alone


def _constructed(drops: list[float], targets: list[int]) -> Audit:
    """An audit of len(drops) images, 3 classes in turn, with the given probability drops."""
    n = len(drops)
    none = np.zeros((n, 4, 4))
    labels = np.arange(n) % 3
    return Audit(
        none, none > 0, none[:, 0, 0], np.array(targets), labels, np.arange(n), np.array(drops)
    )


def test_the_verdict_counts_images_resting_outside_and_refuses_a_one_class_model():
    varied = [0, 1, 2] * 10  # 30 images, every class predicted
    # 2 of 30 images (6.7 %) lose more than half their probability without the outside.
    audited = _constructed([0.9, 0.6] + [0.4] * 28, varied)
    assert audited.outside_share == pytest.approx(2 / 30) and 2 / 30 > FLAG_SHARE
    assert not audited.too_weak and audited.flagged
    # 1 of 30 (3.3 %): under the threshold; a drop of exactly 0.5 does not count.
    assert not _constructed([0.9, 0.5] + [0.0] * 28, varied).flagged
    # The same drops from a model that predicts one class for 28 of 30 images (93 %): too weak,
    # never flagged.
    weak = _constructed([0.9, 0.6] + [0.4] * 28, [0, 1] + [2] * 28)
    assert weak.top_class_share == pytest.approx(28 / 30) and 28 / 30 >= WEAK_TOP_SHARE
    assert weak.too_weak and not weak.flagged
