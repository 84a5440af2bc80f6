"""Balance strategies: per-epoch class counts, resampling, loss weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from trainables.balance import BALANCES, epoch_indices, loss_weights
from trainables.config import TrialConfig
from trainables.data import DataReport, Dataset, Split
from trainables.models import SimpleCNN10M
from trainables.train import train

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


# --- through train(): the labels the model is actually fed ------------------------------------

TRAIN_COUNTS = (30, 12, 6)  # NORMAL, BACTERIA, VIRAL: imbalanced 5 : 2 : 1
LEVELS = (40, 130, 220)  # grey level of every image of each class, so its pixels name its class


def _split(counts: tuple[int, ...], seed: int) -> Split:
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    labels = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))]
    images = torch.tensor(LEVELS, dtype=torch.uint8)[labels].view(-1, 1, 1, 1)
    paths = [f"img{i}.png" for i in range(len(labels))]
    return Split(images.expand(-1, 1, 32, 32).contiguous(), labels, paths, paths)


def _coded_dataset() -> Dataset:
    classes = ["NORMAL", "BACTERIA", "VIRAL"]
    report = DataReport("coded", "image-folder", classes)
    return Dataset(Path("coded"), classes, _split(TRAIN_COUNTS, 0), _split((4, 4, 4), 1), None,
                   report, {"hash": ""}, 0)  # fmt: skip


def _train_and_watch(balance: str) -> tuple[list[list[int]], list[float], list[float]]:
    """Train 2 epochs; per epoch: class counts of the images fed in training mode, the reported
    train_loss, and the loss recomputed from the captured logits with hand-computed weights."""
    cfg = TrialConfig(model="simple_cnn_10m", balance=balance, image_size=32, batch_size=16,
                      epochs=2, augment="none", data="phantom:small")  # fmt: skip
    n, k = sum(TRAIN_COUNTS), len(TRAIN_COUNTS)
    weights = (
        torch.tensor([n / (k * c) for c in TRAIN_COUNTS]) if balance == "class_weights" else None
    )
    fed: list[torch.Tensor] = []
    losses: list[tuple[float, int]] = []

    def watch(module, args, output):
        if isinstance(module, SimpleCNN10M) and module.training:
            pixel = ((args[0][:, 0, 0, 0] * 0.5 + 0.5) * 255).round()  # undo normalize
            labels = torch.tensor([LEVELS.index(int(v)) for v in pixel])
            fed.append(labels)
            loss = F.cross_entropy(output.detach().float(), labels, weight=weights)
            losses.append((float(loss), len(labels)))

    counts, reported, recomputed = [], [], []

    def report(metrics, _checkpoint):
        epoch = torch.cat(fed)
        counts.append(torch.bincount(epoch, minlength=3).tolist())
        reported.append(metrics["train_loss"])
        recomputed.append(sum(loss * m for loss, m in losses) / len(epoch))
        fed.clear()
        losses.clear()

    handle = torch.nn.modules.module.register_module_forward_hook(watch)
    try:
        train(cfg, report, dataset=_coded_dataset(), device="cpu")
    finally:
        handle.remove()
    return counts, reported, recomputed


@pytest.fixture
def one_thread():
    """Tiny 32 px batches run faster on one thread, much faster on cores shared with others."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("strategy", "expected"),
    [
        ("original", [30, 12, 6]),
        ("class_weights", [30, 12, 6]),
        ("undersample", [6, 6, 6]),
        ("oversample", [30, 30, 30]),
    ],
)
def test_train_feeds_the_class_counts_its_balance_promises(strategy, expected, one_thread):
    counts, reported, recomputed = _train_and_watch(strategy)
    # Every epoch, the model is fed exactly the class counts the strategy names.
    assert counts == [expected, expected]
    # The reported training loss is the loss of what was fed, with class weights only for
    # class_weights (hand-computed n / (k * count_c) = 0.53, 1.33, 2.67): weighting is real.
    assert reported == pytest.approx(recomputed, rel=1e-5)
