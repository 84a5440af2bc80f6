"""The training loop on the small phantom: it learns, it reports, it resumes exactly."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from trainables.config import TrialConfig
from trainables.data import load_for_config
from trainables.train import (
    CHECKPOINT_FILE,
    evaluate,
    load_checkpoint,
    model_from_checkpoint,
    predict_proba,
    train,
)

REPO = Path(__file__).resolve().parents[2]
BASE = TrialConfig(
    model="simple_cnn_10m",
    balance="oversample",
    augment="none",
    image_size=64,
    batch_size=32,
    lr=1e-4,
    epochs=5,
    data="phantom:small",
)


@pytest.fixture(scope="module")
def dataset():
    # With the test split, so the bounds on what the phantom allows can be checked on it;
    # train() never touches it.
    return load_for_config(BASE, include_test=True)


class Recorder:
    """A reporter that keeps every epoch's metrics and a copy of every checkpoint."""

    def __init__(self, keep: Path | None = None) -> None:
        self.metrics: list[dict[str, float]] = []
        self.keep = keep

    def __call__(self, metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
        self.metrics.append(dict(metrics))
        if self.keep is not None and checkpoint_dir is not None:
            dest = self.keep / f"epoch{int(metrics['epoch'])}"
            dest.mkdir(parents=True)
            (dest / CHECKPOINT_FILE).write_bytes((checkpoint_dir / CHECKPOINT_FILE).read_bytes())


@pytest.mark.slow
def test_short_training_beats_the_majority_class_rate(dataset, tmp_path):
    rec = Recorder(keep=tmp_path)
    train(BASE, rec, dataset=dataset, device="cpu")
    majority = torch.bincount(dataset.val.labels).max().item() / len(dataset.val.labels)
    best = max(m["val_acc"] for m in rec.metrics)
    # The loop must actually learn the phantom, not predict the largest class.
    assert best > majority + 0.1, (best, majority)
    # One report per epoch, numbered from 1, with the documented keys.
    assert [int(m["epoch"]) for m in rec.metrics] == [1, 2, 3, 4, 5]
    for key in (
        "train_loss",
        "val_loss",
        "val_precision",
        "val_f1",
        "val_balanced_acc",
        "val_acc_normal",
        "val_acc_bacteria",
        "val_acc_viral",
        "epoch_time",
    ):
        assert key in rec.metrics[-1]
    # The phantom must stay learnable but not trivial: on the test split the 5-epoch model is
    # well above chance per class (balanced accuracy; chance is 1/3) and far from solving it.
    # Plain accuracy against the majority rate (0.60 on test, BACTERIA) is not used as the floor:
    # an oversampled model trades it for the small classes.
    model, _, _ = model_from_checkpoint(tmp_path / "epoch5")
    test = evaluate(model, dataset.test, "cpu", cfg=BASE, classes=dataset.classes, prefix="test")
    assert test["test_balanced_acc"] > 0.5, test
    assert test["test_acc"] < 0.95 and test["test_balanced_acc"] < 0.95, test


# Validation accuracy points (76 images: one image is 1.3 points) allowed between a set with
# equalization and the same set without. Measured at this size (seed 0): seed 0.592 against
# geometric 0.605; with equalize applied to training images only (before the parity fix) the
# seed set fell to 0.33-0.50 at 10 epochs (bench/RESULTS.md).
EQUALIZE_GAP = 0.08


@pytest.mark.slow
def test_a_set_with_equalization_validates_within_a_few_points_of_the_set_without(dataset):
    best = {}
    for augment in ("seed", "geometric"):  # seed = equalize (preprocessing) + geometric
        rec = Recorder()
        train(
            replace(BASE, augment=augment, checkpoint_every=5), rec, dataset=dataset, device="cpu"
        )
        best[augment] = max(m["val_acc"] for m in rec.metrics)
    # Equalization is applied to validation images as it was to training ones, so it costs no
    # more than noise; validating on pixels never trained on cost 20 to 40 points.
    assert abs(best["seed"] - best["geometric"]) <= EQUALIZE_GAP, best


@pytest.mark.slow
def test_resume_continues_at_next_epoch_with_same_optimizer_state(dataset, tmp_path):
    cfg = replace(BASE, epochs=3, augment="seed", max_train_batches=3)
    full = Recorder(keep=tmp_path / "full")
    train(cfg, full, dataset=dataset, device="cpu")

    # Resume from the epoch-2 checkpoint of the same run: only epoch 3 is trained again.
    resumed = Recorder(keep=tmp_path / "resumed")
    train(cfg, resumed, dataset=dataset, device="cpu", resume_from=tmp_path / "full" / "epoch2")
    assert [int(m["epoch"]) for m in resumed.metrics] == [3]

    ck2 = load_checkpoint(tmp_path / "full" / "epoch2")
    assert ck2["epoch"] == 2 and len(ck2["history"]) == 2
    # Same data order, augmentation draws and optimizer moments: epoch 3 is reproduced exactly.
    a = load_checkpoint(tmp_path / "full" / "epoch3")
    b = load_checkpoint(tmp_path / "resumed" / "epoch3")
    assert b["optimizer"]["state"][0]["step"] == a["optimizer"]["state"][0]["step"]
    for key in a["model"]:
        assert torch.allclose(a["model"][key].float(), b["model"][key].float(), atol=1e-6), key
    assert resumed.metrics[0]["train_loss"] == pytest.approx(
        full.metrics[2]["train_loss"], rel=1e-5
    )

    # Restored from the last epoch's checkpoint (a driver killed before that epoch's row reached
    # storage): nothing is trained, the last epoch is reported again, without a new checkpoint.
    again = Recorder(keep=tmp_path / "again")
    train(cfg, again, dataset=dataset, device="cpu", resume_from=tmp_path / "full" / "epoch3")
    assert again.metrics == [full.metrics[-1]]
    assert not (tmp_path / "again").exists()


def test_resume_refuses_a_checkpoint_of_another_architecture(dataset, tmp_path):
    cfg = replace(BASE, epochs=1, max_train_batches=1)
    rec = Recorder(keep=tmp_path)
    train(cfg, rec, dataset=dataset, device="cpu")
    other = replace(cfg, model="simple_cnn", epochs=2)
    with pytest.raises(ValueError, match="trained with"):
        train(other, Recorder(), dataset=dataset, device="cpu", resume_from=tmp_path / "epoch1")


def test_checkpoint_rebuilds_the_same_model(dataset, tmp_path):
    cfg = replace(BASE, epochs=1, max_train_batches=2)
    train(cfg, Recorder(keep=tmp_path), dataset=dataset, device="cpu")
    model, loaded_cfg, classes = model_from_checkpoint(tmp_path / "epoch1")
    assert loaded_cfg == cfg and classes == list(dataset.classes)
    probs = predict_proba(model, dataset.val.images[:8], "cpu")
    # Probabilities of three classes that sum to one, for every image.
    assert probs.shape == (8, 3)
    assert torch.allclose(probs.sum(1), torch.ones(8), atol=1e-5)


def test_unreadable_checkpoint_is_a_clear_error(tmp_path):
    (tmp_path / CHECKPOINT_FILE).write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot be read"):
        load_checkpoint(tmp_path)
    with pytest.raises(ValueError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing")


@pytest.mark.slow
def test_cli_trains_the_example_config_and_prints_each_epoch(tmp_path):
    cfg = json.loads((REPO / "configs" / "example.json").read_text())
    cfg.update(epochs=2, image_size=64, max_train_batches=2)
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(cfg))
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "trainables.train",
            "--config",
            str(path),
            "--out",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    epoch_lines = [ln for ln in out.stdout.splitlines() if ln.startswith("epoch ")]
    assert len(epoch_lines) == 2
    assert (tmp_path / "o" / CHECKPOINT_FILE).is_file()


def test_cli_refuses_an_unknown_config_key(tmp_path):
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"model": "simple_cnn_10m", "learning_rate": 0.1}))
    out = subprocess.run(
        [sys.executable, "-m", "trainables.train", "--config", str(path)],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    # Exit 2 and a message naming the bad key and the valid ones.
    assert out.returncode == 2
    assert "learning_rate" in out.stderr and "weight_decay" in out.stderr


def test_streamed_and_resident_batches_are_identical_for_a_seed(dataset):
    from trainables.balance import epoch_indices
    from trainables.train import train_batches

    cfg = replace(BASE, augment="flip_rotate", data_on_device="stream", epochs=1)
    order = epoch_indices(cfg.balance, dataset.train.labels, torch.Generator().manual_seed(7))
    n = -(-len(order) // cfg.batch_size)
    x, y = dataset.train.images, dataset.train.labels
    cpu = torch.device("cpu")
    resident = list(train_batches(x, y, order, cfg.batch_size, n, cpu, stream=False))
    streamed = list(train_batches(x, y, order, cfg.batch_size, n, cpu, stream=True))
    assert len(resident) == len(streamed) == n
    for (rx, ry), (sx, sy) in zip(resident, streamed, strict=True):
        assert torch.equal(rx, sx) and torch.equal(ry, sy)
    # Each batch is the rows `order` names (an independent gather).
    assert torch.equal(streamed[1][0], x[order[cfg.batch_size : 2 * cfg.batch_size]])
    # Whole runs agree to the bit: same losses, same weights.
    runs = {}
    for placement in ("resident", "stream"):
        run_cfg = replace(cfg, data_on_device=placement, max_train_batches=3)
        runs[placement] = train(run_cfg, lambda m, _: None, dataset=dataset, device="cpu")
    for key in ("train_loss", "train_acc", "val_loss"):
        assert runs["resident"][key] == runs["stream"][key], key
