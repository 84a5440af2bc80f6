"""Checkpoint cadence: Ray's ASHA rungs, the 2% rule over the whole trial, the saved epochs,
the work a node failure loses, and the trainer saving at the milestones."""

from __future__ import annotations

import math

import pytest
import torch

from search import checkpoints as ck
from trainables.config import TrialConfig


@pytest.mark.parametrize(
    "grace,rf,max_t", [(1, 3, 12), (2, 3, 12), (1, 2, 16), (1, 3, 9), (3, 4, 100)]
)
def test_asha_milestones_are_rays_rungs(grace: int, rf: int, max_t: int) -> None:
    from ray.tune.schedulers import ASHAScheduler

    asha = ASHAScheduler(
        metric="m", mode="max", max_t=max_t, grace_period=grace, reduction_factor=rf
    )
    rungs = sorted(int(r[0]) for r in asha._brackets[0]._rungs)
    assert list(ck.asha_milestones(grace, rf, max_t)) == rungs


def test_checkpoint_every_keeps_saves_under_two_percent() -> None:
    # The CPU's figures: simple_cnn 2.5 s per save, simple_cnn_10m 0.14 s; an H100 epoch 0.7 s.
    assert ck.checkpoint_every(2.5, 0.7) == math.ceil(2.5 / (0.02 * 0.7)) == 179
    assert ck.checkpoint_every(0.14, 0.7) == 10  # 0.14 / 0.014 is 10 up to rounding
    assert ck.checkpoint_every(0.0, 1.0) == 1
    for save in (0.01, 0.1, 0.5, 2.5):
        for epoch in (0.3, 0.7, 1.8, 30.0):
            every = ck.checkpoint_every(save, epoch)
            assert save / (every * epoch) <= 0.02 + 1e-12
            assert every == 1 or save / ((every - 1) * epoch) > 0.02  # and no more than that
    with pytest.raises(ValueError, match="epoch_s > 0"):
        ck.checkpoint_every(1.0, 0.0)


def brute_force_every(save_s, epoch_s, epochs, milestones, share=0.02) -> int:
    """Independent: try every interval, keep the smallest whose whole plan costs <= share."""
    for every in range(1, epochs + 1):
        saves = {
            e for e in range(1, epochs + 1) if e % every == 0 or e in milestones or e == epochs
        }
        if len(saves) * save_s <= share * epochs * epoch_s:
            return every
    return epochs


@pytest.mark.parametrize(
    "save_s,epoch_s,epochs,milestones,expected",
    [
        (0.14, 0.7, 12, (2, 6), 12),  # the fixed saves alone are 5%: no periodic ones
        (0.14, 30.0, 12, (2, 6), 1),  # long epochs: every epoch costs 0.5%
        (1.0, 10.0, 12, (2, 6), 12),  # every 5th would be 4.2%, the fixed ones 2.5%
        (0.5, 10.0, 100, (1, 3, 9, 27, 81), 3),  # 35 saves of 0.5 s in 1000 s = 1.75%
    ],
)
def test_choose_checkpoint_every_budgets_the_whole_trial(
    save_s, epoch_s, epochs, milestones, expected
) -> None:
    every = ck.choose_checkpoint_every(save_s, epoch_s, epochs, milestones)
    assert every == expected
    if every < epochs:  # a periodic plan is only chosen when it fits; brute force agrees
        assert every == brute_force_every(save_s, epoch_s, epochs, milestones)


def test_saved_epochs_cost_and_lost_work() -> None:
    saved = ck.saved_epochs(10, 12, milestones=(2, 6))
    assert saved == [2, 6, 10, 12]
    assert ck.checkpoint_cost(0.14, 0.7, saved, 12) == pytest.approx(4 * 0.14 / (12 * 0.7))
    worst, mean = ck.lost_work(saved, 12)  # gaps 2, 4, 4, 2 epochs
    assert worst == 4 and mean == pytest.approx((4 + 16 + 16 + 4) / 2 / 12)
    assert ck.lost_work(ck.saved_epochs(1, 5), 5) == (1, 0.5)


def test_checkpoint_epochs_field_and_train_saves_at_milestones() -> None:
    from trainables.train import train

    assert TrialConfig.from_dict({"checkpoint_epochs": [2, 6]}).checkpoint_epochs == (2, 6)
    with pytest.raises(ValueError, match="checkpoint_epochs"):
        TrialConfig(checkpoint_epochs=(0,))
    cfg = TrialConfig(
        model="simple_cnn_10m",
        image_size=32,
        batch_size=16,
        epochs=3,
        max_train_batches=1,
        checkpoint_every=100,
        checkpoint_epochs=(1,),
    )
    got = []
    train(cfg, lambda metrics, ckpt: got.append((int(metrics["epoch"]), ckpt is not None)))
    assert got == [(1, True), (2, False), (3, True)]  # the milestone and the last epoch


def test_plan_checkpoints_keeps_an_explicit_setting() -> None:
    cfg = TrialConfig(checkpoint_every=3)
    assert ck.plan_checkpoints(cfg, {"checkpoint_every": 3}, torch.zeros(10)) is cfg
