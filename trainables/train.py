"""Train one `TrialConfig`: the seed's loop (Adam, cross-entropy), fed within the trial's share.

The train split stays on the training device when it fits the bytes the caller allows
(`data_budget`: the trial's GPU share minus the model's measured need); otherwise each batch is
gathered from the memory-mapped split into pinned host memory, one batch ahead, and copied while
the device runs the previous step. Both feeds give identical batches for a seed.

The loop knows one thing about the outside world, a reporter `report(metrics, checkpoint_dir)`
called once per epoch. In tests it appends to a list; in `search/` it calls Ray. The checkpoint
directory handed over is only valid during that call: a reporter that wants to keep it copies it.

    python -m trainables.train --config configs/example.json [--data DIR] [--out DIR]
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cxr_tune import exit_status
from trainables.augment import (
    normalize,
    prepare_batch,
    prepare_train_batch,
    preprocessing_ops,
    to_float,
)
from trainables.balance import epoch_indices, loss_weights
from trainables.cache import atomic_write_text
from trainables.config import TrialConfig
from trainables.data import Dataset, Split, load_for_config
from trainables.device import EVAL_BATCH, device_policy, resolve_device
from trainables.experiment import CHECKPOINT_FILE
from trainables.metrics import classification_metrics
from trainables.models import build_model, count_parameters
from trainables.multilabel import (
    POSITIVE,
    check_balance,
    multilabel_loss,
    multilabel_metrics,
    pos_weights,
)
from trainables.multilabel import epoch_order as multilabel_order

Reporter = Callable[[dict[str, float], "Path | None"], None]


def train(
    cfg: TrialConfig,
    report: Reporter,
    *,
    resume_from: Path | None = None,
    dataset: Dataset | None = None,
    device: str | torch.device | None = None,
    data_budget: int | None = None,
) -> dict[str, float]:
    """Train `cfg` for `cfg.epochs` epochs (continuing after a checkpoint's epoch when resuming).

    `data_budget`: bytes of the device the train split may occupy (`data_placement`)."""
    device = resolve_device(device)
    torch.manual_seed(cfg.seed)
    data = dataset if dataset is not None else load_for_config(cfg)
    model, optimizer = build_training(cfg, len(data.classes), device)
    samplers = make_generators(cfg, device)
    start_epoch, history = 0, []
    if resume_from is not None:
        start_epoch, history = restore_checkpoint(resume_from, cfg, model, optimizer, samplers)

    placement = data_placement(cfg, data.train.images, device, data_budget)
    train_x = data.train.images.to(device) if placement == "resident" else data.train.images
    train_y = data.train.labels.to(train_x.device)
    criterion = build_criterion(cfg, data, device)
    step = make_step(cfg, model, optimizer, criterion, device)

    metrics: dict[str, float] = {}
    if history and start_epoch >= cfg.epochs:
        # Restored at the last epoch (a driver killed after the trial's final checkpoint, before
        # its row reached storage): report that epoch again so the trial ends with its result.
        metrics = history[-1]
        report(metrics, None)
    for epoch in range(start_epoch + 1, cfg.epochs + 1):
        started = time.perf_counter()
        order = epoch_order(cfg, data, samplers["cpu"])
        train_stats = train_one_epoch(
            cfg, step, train_x, train_y, order, samplers["device"], device, placement == "stream"
        )
        train_seconds = time.perf_counter() - started
        val_stats = evaluate(model, data.val, device, cfg=cfg, classes=data.classes, prefix="val")
        metrics = {
            "epoch": float(epoch),
            **train_stats,
            **val_stats,
            "epoch_time": time.perf_counter() - started,  # seconds, training + validation
            "train_time": train_seconds,  # seconds
            "train_images_per_s": train_stats["images_trained"] / max(train_seconds, 1e-9),
        }
        history.append(metrics)
        if epoch % cfg.checkpoint_every == 0 or epoch in (cfg.epochs, *cfg.checkpoint_epochs):
            with tempfile.TemporaryDirectory(prefix="cxr-ckpt-") as tmp:
                save_checkpoint(Path(tmp), cfg, data, model, optimizer, samplers, epoch, history)
                report(metrics, Path(tmp))
        else:
            report(metrics, None)
    return metrics


def build_training(
    cfg: TrialConfig, num_classes: int, device: torch.device
) -> tuple[nn.Module, torch.optim.Optimizer]:
    model = device_policy(cfg.amp, device).model(build_model(cfg, num_classes).to(device))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return model, optimizer


Criterion = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def build_criterion(cfg: TrialConfig, data: Dataset, device: torch.device) -> Criterion:
    """Cross-entropy (with `class_weights`' weights) for one class per image; for multi-label
    data binary cross-entropy with logits per finding, uncertain labels by `cfg.uncertainty`,
    `class_weights` as per-finding `pos_weight` (`trainables.multilabel`)."""
    if data.multilabel:
        check_balance(cfg.balance)
        weight = None
        if cfg.balance == "class_weights":
            weight = pos_weights(data.train.labels, cfg.uncertainty).to(device)

        def criterion(logits: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
            return multilabel_loss(logits, codes, cfg.uncertainty, weight)

        return criterion
    weights = loss_weights(cfg.balance, data.train.labels, len(data.classes))
    return nn.CrossEntropyLoss(weight=None if weights is None else weights.to(device))


def epoch_order(cfg: TrialConfig, data: Dataset, generator: torch.Generator) -> torch.Tensor:
    """One epoch's training indices: by `cfg.balance`, or every image once for multi-label data
    (whose balance lives in the loss)."""
    if data.multilabel:
        return multilabel_order(len(data.train.labels), generator)
    return epoch_indices(cfg.balance, data.train.labels, generator)


def correct_count(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Images right (argmax); for multi-label codes (N, F) the share of an image's findings
    right at probability 0.5, summed over images, so train_acc is the per-label accuracy."""
    if y.ndim == 2:
        return ((logits > 0) == (y == POSITIVE)).float().mean(1).sum()
    return (logits.argmax(1) == y).sum()


DATA_BUDGET_FREE_SHARE = 0.5  # without a budget: at most this share of the device's free bytes


def data_placement(
    cfg: TrialConfig, images: torch.Tensor, device: torch.device, budget: int | None
) -> str:
    """'resident' (the split moved to the device once) or 'stream' (batches copied as needed).

    `cfg.data_on_device` decides unless 'auto'; then a CPU device reads the memory map in place
    (resident) and an accelerator keeps the split only when its bytes fit `budget` (None: half of
    the device's free memory now)."""
    if cfg.data_on_device != "auto":
        return cfg.data_on_device
    if device.type != "cuda":
        return "resident"
    if budget is None:
        budget = int(torch.cuda.mem_get_info(device)[0] * DATA_BUDGET_FREE_SHARE)
    return "resident" if images.numel() * images.element_size() <= budget else "stream"


def make_generators(cfg: TrialConfig, device: torch.device) -> dict[str, torch.Generator]:
    """Two seeded streams: epoch sampling on the CPU, augmentation on the training device."""
    cpu = torch.Generator().manual_seed(cfg.seed)
    dev = torch.Generator(device=device).manual_seed(cfg.seed + 1)
    return {"cpu": cpu, "device": dev}


StepFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def make_step(
    cfg: TrialConfig,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    criterion: Criterion,
    device: torch.device,
) -> StepFn:
    """One optimisation step on a normalized batch; returns (summed loss, correct count)."""
    forward = torch.compile(model) if cfg.compile else model
    policy = device_policy(cfg.amp, device)

    def step(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with policy.autocast():
            logits = forward(x)
            loss = criterion(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        correct = correct_count(logits.detach(), y)
        return loss.detach() * len(y), correct

    model.train()
    return step


def train_one_epoch(
    cfg: TrialConfig,
    step: StepFn,
    images: torch.Tensor,
    labels: torch.Tensor,
    order: torch.Tensor,
    generator: torch.Generator,
    device: torch.device | None = None,
    stream: bool | None = None,
) -> dict[str, float]:
    """One epoch over `order`; `images` (uint8, N×1×S×S) and `labels` live on `device` (resident)
    or on the host, streamed to `device` batch by batch (`device` defaults to where `images`
    are; `stream` None: stream when they are elsewhere)."""
    device = images.device if device is None else torch.device(device)
    # Under torch.compile a short last batch would trigger a second compilation (tens of
    # seconds, measured in bench/compile_batch.py), so compiled runs drop it.
    n_batches = len(order) // cfg.batch_size if cfg.compile else -(-len(order) // cfg.batch_size)
    n_batches = max(n_batches, 1)
    if cfg.max_train_batches:
        n_batches = min(n_batches, cfg.max_train_batches)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device)
    seen = 0
    policy = device_policy(cfg.amp, device)
    batches = train_batches(images, labels, order, cfg.batch_size, n_batches, device, stream)
    for raw, y in batches:
        x = policy.batch(prepare_train_batch(raw, cfg.augment, generator))
        batch_loss, batch_correct = step(x, y)
        loss_sum += batch_loss
        correct += batch_correct
        seen += len(y)
    # One host sync per epoch, not per step.
    return {
        "train_loss": float(loss_sum) / max(seen, 1),
        "train_acc": float(correct) / max(seen, 1),
        "images_trained": float(seen),
    }


def train_batches(
    images: torch.Tensor,
    labels: torch.Tensor,
    order: torch.Tensor,
    batch_size: int,
    n_batches: int,
    device: torch.device,
    stream: bool | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(uint8 images, labels) of each batch of `order` on `device`. Resident data is indexed
    where it lives; streamed data (`stream`, default: `images` not on `device`) is gathered one
    batch ahead by a helper thread (into pinned memory for CUDA) and copied without blocking,
    so the device does not wait for the host. Both give the same batches for one `order`."""
    if stream is None:
        stream = images.device != device
    if not stream:
        order = order.to(device)
        for b in range(n_batches):
            idx = order[b * batch_size : (b + 1) * batch_size]
            yield images[idx], labels[idx]
        return
    order = order.to(images.device)
    pin = device.type == "cuda"

    def gather(b: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = order[b * batch_size : (b + 1) * batch_size]
        x, y = images[idx], labels[idx]  # a copy of one batch from the memory map
        return (x.pin_memory(), y.pin_memory()) if pin else (x, y)

    with ThreadPoolExecutor(1, thread_name_prefix="cxr-prefetch") as pool:
        pending = pool.submit(gather, 0)
        for b in range(n_batches):
            x, y = pending.result()
            if b + 1 < n_batches:
                pending = pool.submit(gather, b + 1)
            yield x.to(device, non_blocking=pin), y.to(device, non_blocking=pin)


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    images: torch.Tensor,
    device: str | torch.device,
    batch_size: int = EVAL_BATCH,
    ops: Sequence[str] = (),
    generator: torch.Generator | None = None,
    cfg: TrialConfig | None = None,
    preprocess: Sequence[str] | None = None,
) -> torch.Tensor:
    """Float32 logits (N, C) on the CPU for uint8 images (N, 1, S, S), optionally after
    augmentation ops (a TTA view). Runs in eval mode, batched on `device`, with the numerics of
    `cfg.amp` (`trainables.device.device_policy`; fp32 without a `cfg`).

    Every image first goes through `preprocess`, the deterministic ops the model was trained on
    (default: those of `cfg.augment`, none without a cfg), so evaluation sees training's pixels.
    """
    policy = device_policy(cfg.amp if cfg is not None else "fp32", device)
    if preprocess is None:
        preprocess = preprocessing_ops(cfg.augment) if cfg is not None else ()
    ops = (*preprocess, *ops)
    was_training = model.training
    model.eval()
    # One output tensor, filled in place: a small result kept per batch would split the
    # allocator's freed batch-sized blocks, and the host heap would grow with the images
    # evaluated (measured: +320 MB for 8,000 images at 64 px on the CPU, bench/scale.py --sweep).
    out = torch.empty(0, 0)
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size].to(policy.device, non_blocking=True)
        x = prepare_batch(x, ops, generator) if ops else normalize(to_float(x))
        with policy.autocast():
            logits = model(policy.batch(x))
        if not start:
            out = torch.empty((len(images), logits.shape[1]), dtype=torch.float32)
        out[start : start + len(logits)] = logits.float()
    if was_training:
        model.train()
    return out


def predict_proba(
    model: nn.Module,
    images: torch.Tensor,
    device: str | torch.device,
    batch_size: int = EVAL_BATCH,
    ops: Sequence[str] = (),
    generator: torch.Generator | None = None,
    cfg: TrialConfig | None = None,
    temperature: float = 1.0,
    preprocess: Sequence[str] | None = None,
    multilabel: bool = False,
) -> torch.Tensor:
    """Softmax probabilities (N, C) of `predict_logits / temperature` (1.0: uncalibrated; a
    bundle's fitted temperature, `trainables.calibration`, makes them calibrated); for a
    `multilabel` model one sigmoid probability per finding (N, F)."""
    logits = predict_logits(model, images, device, batch_size, ops, generator, cfg, preprocess)
    if not logits.numel():
        return logits
    if multilabel:
        return torch.sigmoid(logits / temperature)
    return torch.softmax(logits / temperature, dim=1)


def evaluate(
    model: nn.Module,
    split: Split,
    device: str | torch.device,
    *,
    cfg: TrialConfig | None = None,
    classes: Sequence[str],
    prefix: str = "val",
    batch_size: int = EVAL_BATCH,
) -> dict[str, float]:
    """Loss and scikit-learn metrics of `model` on `split`, without augmentation (multi-label
    codes: `trainables.multilabel.multilabel_metrics`, the loss under `cfg.uncertainty`)."""
    if split.labels.ndim == 2:
        logits = predict_logits(model, split.images, device, batch_size, cfg=cfg)
        policy = cfg.uncertainty if cfg is not None else "ignore"
        loss = multilabel_loss(logits, split.labels.cpu(), policy).item()
        probs = torch.sigmoid(logits).numpy()
        metrics = multilabel_metrics(split.labels.numpy(), probs, list(classes), prefix)
        return {f"{prefix}_loss": loss, **metrics}
    probs = predict_proba(model, split.images, device, batch_size, cfg=cfg)
    labels = split.labels.cpu()
    loss = F.nll_loss(torch.log(probs.clamp_min(1e-12)), labels).item()
    preds = probs.argmax(1).numpy()
    metrics = classification_metrics(labels.numpy(), preds, list(classes), prefix)
    return {f"{prefix}_loss": loss, **metrics}


# --- checkpoints -------------------------------------------------------------------------------


def save_checkpoint(
    directory: Path,
    cfg: TrialConfig,
    data: Dataset,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    samplers: dict[str, torch.Generator],
    epoch: int,
    history: list[dict[str, float]],
) -> Path:
    """Everything needed to resume, as tensors and plain types (loadable with weights_only)."""
    state = {
        "config": cfg.to_dict(),
        "classes": list(data.classes),
        "multilabel": data.multilabel,  # classes are findings, one sigmoid output each
        "epoch": epoch,  # completed epochs
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "rng": {
            "torch": torch.get_rng_state(),
            "sampler_cpu": samplers["cpu"].get_state(),
            "sampler_device": samplers["device"].get_state(),
        },
        "history": history,
        "split_hash": data.split_record.get("hash", ""),
    }
    path = directory / CHECKPOINT_FILE
    torch.save(state, path)
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint dict from a checkpoint directory or file; never unpickles arbitrary objects."""
    path = Path(path)
    file = path / CHECKPOINT_FILE if path.is_dir() else path
    if not file.is_file():
        raise ValueError(
            f"no checkpoint at {file} (expected a directory holding {CHECKPOINT_FILE})"
        )
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for truncated or foreign files
        raise ValueError(f"checkpoint {file} cannot be read: {err}") from err


def restore_checkpoint(
    path: Path,
    cfg: TrialConfig,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    samplers: dict[str, torch.Generator],
) -> tuple[int, list[dict[str, float]]]:
    state = load_checkpoint(path)
    saved = TrialConfig.from_dict(state["config"])
    if _architecture(saved) != _architecture(cfg):
        raise ValueError(
            f"checkpoint {path} was trained with {_architecture(saved)}, not {_architecture(cfg)}"
        )
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"]["torch"])
    samplers["cpu"].set_state(state["rng"]["sampler_cpu"])
    samplers["device"].set_state(state["rng"]["sampler_device"].to(samplers["device"].device))
    return int(state["epoch"]), list(state["history"])


def _architecture(cfg: TrialConfig) -> dict[str, Any]:
    keys = ("model", "frozen_depth", "unfrozen_blocks", "image_size")
    return {k: getattr(cfg, k) for k in keys}


def train_model(
    cfg: TrialConfig, dataset: Dataset | None = None, device: str | torch.device | None = None
) -> nn.Module:
    """Train `cfg` and return the model of its last checkpoint (eval mode, CPU), for code that
    trains outside a sweep (benchmarks, tests); `train` keeps no model after it returns."""
    last: dict[str, Any] = {}

    def keep(metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
        if checkpoint_dir is not None:
            last.update(load_checkpoint(checkpoint_dir))

    train(cfg, keep, dataset=dataset, device=device)
    if not last:
        raise ValueError(f"training {cfg.model} wrote no checkpoint (checkpoint_epochs)")
    model = build_model(cfg, num_classes=len(last["classes"]), load_weights=False)
    model.load_state_dict(last["model"])
    return model.eval()


def model_from_checkpoint(path: str | Path) -> tuple[nn.Module, TrialConfig, list[str]]:
    """Rebuild the model of a checkpoint (eval mode, CPU) with its config and class names."""
    state = load_checkpoint(path)
    cfg = TrialConfig.from_dict(state["config"])
    # The weights come from the checkpoint, so do not look for ImageNet weights again.
    model = build_model(cfg, num_classes=len(state["classes"]), load_weights=False)
    model.load_state_dict(state["model"])
    model.eval()
    return model, cfg, list(state["classes"])


# --- command line ------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    from trainables.cli import train_parser

    parser = train_parser()
    args = parser.parse_args(argv)
    try:
        cfg = TrialConfig.from_json(args.config)
        overrides = {
            k: v for k, v in (("data", args.data), ("epochs", args.epochs)) if v is not None
        }
        cfg = replace(cfg, **overrides) if overrides else cfg
        data = load_for_config(cfg)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    device = resolve_device(args.device)
    print(data.report.format())
    model_params = count_parameters(build_model(cfg, len(data.classes), load_weights=False))
    print(
        f"model {cfg.model}: {model_params:,} parameters | device {device} | "
        f"{len(data.train.labels)} train / {len(data.val.labels)} val images "
        f"at {cfg.image_size} px | "
        f"balance {cfg.balance} | augment {cfg.augment} | {cfg.epochs} epochs"
    )

    def print_epoch(metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
        if data.multilabel:
            val = f"mean AUROC {metrics['val_mean_auroc']:.3f} AP {metrics['val_mean_ap']:.3f}"
        else:
            val = f"acc {metrics['val_acc']:.3f} precision {metrics['val_precision']:.3f}"
        print(
            f"epoch {int(metrics['epoch']):3d} | train loss {metrics['train_loss']:.4f} "
            f"acc {metrics['train_acc']:.3f} | val loss {metrics['val_loss']:.4f} {val} | "
            f"{metrics['train_images_per_s']:.0f} img/s | {metrics['epoch_time']:.1f} s",
            flush=True,
        )
        if args.out and checkpoint_dir is not None:
            args.out.mkdir(parents=True, exist_ok=True)
            shutil.copy2(checkpoint_dir / CHECKPOINT_FILE, args.out / f".{CHECKPOINT_FILE}.tmp")
            (args.out / f".{CHECKPOINT_FILE}.tmp").replace(args.out / CHECKPOINT_FILE)
            history = json.dumps(load_history(args.out), indent=1)
            atomic_write_text(args.out / "history.json", history)

    try:
        train(cfg, print_epoch, dataset=data, device=device)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def load_history(directory: Path) -> list[dict[str, float]]:
    return list(load_checkpoint(directory)["history"])


if __name__ == "__main__":
    sys.exit(exit_status(main))
