"""Balance strategies: per-epoch class counts, resampling, loss weights."""

from __future__ import annotations

import pytest
import torch

from trainables.balance import BALANCES, epoch_indices, loss_weights

# an imbalanced split like the seed's train set (NORMAL, BACTERIA, VIRAL), scaled down
LABELS = torch.tensor([0] * 30 + [1] * 70 + [2] * 20)[
    torch.randperm(120, generator=torch.Generator().manual_seed(0))
]


def _counts(indices: torch.Tensor) -> list[int]:
    return torch.bincount(LABELS[indices], minlength=3).tolist()


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [
        ("original", [30, 70, 20]),
        ("class_weights", [30, 70, 20]),
        ("undersample", [20, 20, 20]),
        ("oversample", [70, 70, 70]),
    ],
)
def test_each_strategy_gives_the_expected_class_counts_per_epoch(strategy, expected):
    g = torch.Generator().manual_seed(0)
    for _ in range(3):  # every epoch, not just the first
        assert _counts(epoch_indices(strategy, LABELS, g)) == expected


@pytest.mark.parametrize("strategy", ["original", "class_weights"])
def test_plain_strategies_see_every_image_once_in_a_new_order(strategy):
    g = torch.Generator().manual_seed(0)
    first, second = epoch_indices(strategy, LABELS, g), epoch_indices(strategy, LABELS, g)
    assert sorted(first.tolist()) == list(range(120))  # a permutation: each image exactly once
    assert not torch.equal(first, second)  # reshuffled each epoch


def test_undersampling_redraws_the_majority_each_epoch_without_repeats():
    g = torch.Generator().manual_seed(0)
    epochs = [epoch_indices("undersample", LABELS, g) for _ in range(5)]
    for idx in epochs:
        assert len(set(idx.tolist())) == len(idx)  # drawn without replacement
    bacteria = [
        set(i.tolist()) & set(torch.nonzero(LABELS == 1).flatten().tolist()) for i in epochs
    ]
    assert bacteria[0] != bacteria[1]  # a different majority subset each epoch
    assert len(set().union(*bacteria)) > 20  # so over epochs more of the majority is seen


def test_oversampling_keeps_every_original_and_redraws_the_extras():
    g = torch.Generator().manual_seed(0)
    first, second = epoch_indices("oversample", LABELS, g), epoch_indices("oversample", LABELS, g)
    assert set(first.tolist()) == set(range(120))  # no original image is dropped
    assert sorted(first.tolist()) != sorted(second.tolist())  # the duplicated minority differs


def test_resampling_repeats_under_the_same_seed():
    a = epoch_indices("oversample", LABELS, torch.Generator().manual_seed(7))
    b = epoch_indices("oversample", LABELS, torch.Generator().manual_seed(7))
    assert torch.equal(a, b)  # a trial is reproducible from its seed


def test_only_class_weights_weighs_the_loss_by_inverse_frequency():
    weights = loss_weights("class_weights", LABELS, 3)
    # n / (k * n_c): 120 / (3 * 30), 120 / (3 * 70), 120 / (3 * 20)
    assert torch.allclose(weights, torch.tensor([4 / 3, 4 / 7, 2.0]))
    assert weights.dtype == torch.float32
    for strategy in set(BALANCES) - {"class_weights"}:
        assert loss_weights(strategy, LABELS, 3) is None  # plain cross-entropy


def test_class_weights_refuse_a_missing_class():
    with pytest.raises(ValueError, match=r"missing \[2\]"):
        loss_weights("class_weights", torch.tensor([0, 1, 1]), 3)


def test_unknown_strategy_names_the_choices():
    with pytest.raises(ValueError, match=r"unknown balance 'smote'.*oversample"):
        epoch_indices("smote", LABELS, None)
    with pytest.raises(ValueError, match=r"unknown balance 'smote'.*class_weights"):
        loss_weights("smote", LABELS, 3)
