"""Test-time augmentation on tiny models built here: merges computed by hand, exact identities."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from analysis.tta import (
    TTA_POLICIES,
    TTAPolicy,
    candidate_policies,
    evaluate_tta,
    flip_counts,
    get_policy,
    merge_probs,
    select_policy,
    select_policy_on_validation,
)
from trainables.augment import normalize, to_float
from trainables.config import TrialConfig
from trainables.data import Split, load_for_config


def _tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    # Not mirror-symmetric (a dense layer over pixel positions), so a flip changes the output.
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 32 * 32, 3)
    ).eval()


def _images(n: int = 10, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 1, 32, 32), generator=g, dtype=torch.uint8)


def test_identity_views_only_equal_no_tta_exactly():
    model, images = _tiny_model(), _images()
    plain = evaluate_tta(model, images, None, "none", "cpu", batch_size=4)
    identities = TTAPolicy("ids", ((), ("identity",)), draws=3)
    merged = evaluate_tta(model, images, None, identities, "cpu", batch_size=4)
    # Seven passes of the plain image averaged must be bit-identical to one pass: otherwise TTA
    # gains could be float noise.
    assert identities.cost == 7
    np.testing.assert_array_equal(merged.probs, plain.probs)
    np.testing.assert_array_equal(merged.preds, plain.preds)


def test_mirror_policy_averages_plain_and_mirrored_softmax_by_hand():
    model, images = _tiny_model(), _images()
    with torch.no_grad():
        plain = torch.softmax(model(normalize(to_float(images))), dim=1).double()
        mirrored = torch.softmax(model(normalize(to_float(images.flip(-1)))), dim=1).double()
    expected = ((plain + mirrored) / 2).numpy()
    result = evaluate_tta(model, images, None, "mirror", "cpu", batch_size=3)
    # The merged output is exactly the mean of the two softmax outputs, computed independently.
    np.testing.assert_allclose(result.probs, expected, rtol=0, atol=1e-7)
    np.testing.assert_array_equal(result.preds, expected.argmax(1))
    # The flip really changes the model's answer on these images, so the test can fail.
    assert not np.allclose(plain.numpy(), mirrored.numpy(), atol=1e-3)
    assert result.cost == 2


def test_geometric_and_vote_merges_by_hand():
    stack = torch.tensor(
        [
            [[0.6, 0.3, 0.1], [0.2, 0.5, 0.3]],
            [[0.1, 0.8, 0.1], [0.2, 0.3, 0.5]],
            [[0.5, 0.4, 0.1], [0.4, 0.35, 0.25]],
        ],
        dtype=torch.float64,
    )
    probs, preds = merge_probs(stack, "geometric")
    geo = np.exp(np.log(stack.numpy()).mean(axis=0))
    # Geometric mean renormalised to sum to one per image.
    np.testing.assert_allclose(probs, geo / geo.sum(axis=1, keepdims=True))
    assert preds.tolist() == [1, 1]
    probs, preds = merge_probs(stack, "vote")
    # Image 0: votes 0, 1, 0 -> class 0 by majority; image 1: votes 1, 2, 0 tie three ways and
    # the highest mean probability (class 1: 0.383 against 0.35) wins.
    np.testing.assert_allclose(probs[0], [2 / 3, 1 / 3, 0])
    assert preds.tolist() == [0, 1]


def test_random_policies_are_seeded():
    model, images = _tiny_model(), _images()
    a = evaluate_tta(model, images, None, "tta1", "cpu")
    b = evaluate_tta(model, images, None, "tta1", "cpu")
    c = evaluate_tta(
        model, images, None, TTAPolicy("tta1s", get_policy("tta1").views, seed=5), "cpu"
    )
    # Same seed, same draws: a report can be regenerated exactly.
    np.testing.assert_array_equal(a.probs, b.probs)
    # Another seed draws other rotations: the views are really random.
    assert not np.array_equal(a.probs, c.probs)


def test_seed_policies_match_section_4():
    # Seed section 4: each TTA averages the plain prediction and one draw of two views.
    assert TTA_POLICIES["tta1"].views == (("rotate", "affine"), ("equalize", "hflip"))
    assert TTA_POLICIES["tta2"].views == (("rotate", "hflip"), ("equalize", "rotate"))
    assert TTA_POLICIES["tta1"].cost == 3 and TTA_POLICIES["tta1"].merge == "mean"


def test_unknown_policy_op_and_merge_are_refused_with_choices():
    with pytest.raises(ValueError, match=r"unknown TTA policy 'tta9'; expected one of .*tta1"):
        get_policy("tta9")
    with pytest.raises(ValueError, match=r"unknown ops \['spin'\].*rotate"):
        TTAPolicy("bad", (("spin",),))
    with pytest.raises(ValueError, match="unknown TTA merge 'median'"):
        TTAPolicy("bad", (), merge="median")
    with pytest.raises(ValueError, match="uint8"):
        evaluate_tta(_tiny_model(), _images().float(), None, "none", "cpu")


def test_select_policy_prefers_the_cheapest_among_equals():
    # A model that ignores its input scores the same under every policy.
    model = nn.Sequential(nn.Flatten(), nn.Linear(32 * 32, 3))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.copy_(torch.tensor([0.0, 1.0, 0.0]))
    candidates = candidate_policies(draws=(1, 2))
    labels = np.array([1, 1, 0, 2, 1, 0])
    chosen, table = select_policy(model, _images(6), labels, candidates, "cpu")
    # Every candidate is scored on validation, with its cost beside its accuracy.
    assert table["policy"].tolist() == [p.name for p in candidates]
    assert set(table["val_acc"]) == {0.5}
    assert chosen.name == "none" and chosen.cost == 1
    # tta1 with 1 and 2 views, 1 and 2 draws; mirror is deterministic so it is tried once.
    names = table["policy"].tolist()
    assert {"tta1:v1x1", "tta1:v1x2", "tta1", "tta1:v2x2", "mirror"} <= set(names)
    assert "mirror:v1x2" not in names


def test_flip_counts_per_class_by_hand():
    labels = np.array([0, 0, 1, 1, 2, 2])
    base = np.array([0, 1, 1, 1, 0, 2])
    tta = np.array([1, 0, 1, 0, 2, 2])
    table = flip_counts(labels, base, tta, ["NORMAL", "BACTERIA", "VIRAL"]).set_index("class")
    # NORMAL: image 0 right->wrong, image 1 wrong->right; BACTERIA: image 3 right->wrong;
    # VIRAL: image 4 wrong->right.
    assert table["right_to_wrong"].tolist() == [1, 1, 0]
    assert table["wrong_to_right"].tolist() == [1, 0, 1]
    assert table["net"].tolist() == [0, -1, 1]


def _poisoned(split: Split, seed: int) -> Split:
    """The same split with noise for images and shuffled labels: what a leak would feed on."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, split.images.shape, generator=g, dtype=torch.uint8)
    labels = split.labels[torch.randperm(len(split.labels), generator=g)]
    return replace(split, images=images, labels=labels)


def test_policy_is_chosen_on_validation_and_never_on_test():
    data = load_for_config(TrialConfig(image_size=32, data="phantom:small"), include_test=True)
    model, candidates = _tiny_model(), candidate_policies(draws=(1,))
    columns = ["policy", "cost", "val_acc"]  # everything but the wall time

    chosen, table = select_policy_on_validation(model, data, "cpu", candidates=candidates)
    for seed in (1, 2):
        test_poisoned = replace(data, test=_poisoned(data.test, seed))
        again, table_again = select_policy_on_validation(
            model, test_poisoned, "cpu", candidates=candidates
        )
        # Poisoned test images and labels change nothing about the choice or its evidence.
        assert again == chosen
        assert table_again[columns].equals(table[columns])
    # The same poison on validation does change the evidence: the check above can fail.
    val_poisoned = replace(data, val=_poisoned(data.val, 1))
    _, table_val = select_policy_on_validation(model, val_poisoned, "cpu", candidates=candidates)
    assert not table_val["val_acc"].equals(table["val_acc"])
    # And the table is select_policy's on the validation split, computed directly.
    _, direct = select_policy(model, data.val.images, data.val.labels, candidates, "cpu")
    assert direct[columns].equals(table[columns])
