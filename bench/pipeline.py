"""Goal 1: data never limits a trial.

Side by side in one run, for each model, with the same model object, batch size and numerics:

- floor: training steps on random tensors already on the device (the compute floor);
- fast: `trainables.train.train_one_epoch`, the real fast path (decoded uint8 data resident on
  the device, the seed's augmentations batched on the device by `prepare_batch`, one host sync
  per epoch);
- seed: the seed's way, PIL decode + torchvision transforms in a DataLoader with one worker per
  core over the same files, every epoch (worker start-up included, as a trial pays it).

Ratios: fast/floor (goal >= 0.85) and seed/floor, as images per second. The three paths are
timed in turn, `--repeats` times, and the best time of each counts (other processes on the
machine only ever add time).

    python -m bench.pipeline --size small            # 2-core CPU: 64 px, batch 32, fp32
    python -m bench.pipeline --size full             # GPU: 256 px, batch 128, bf16 + channels_last
"""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn
from torchvision import transforms as T

from bench.common import Results, note, parser, setup, sync, timed
from trainables.augment import MEAN, STD, prepare_batch
from trainables.balance import epoch_indices
from trainables.config import TrialConfig
from trainables.data import Dataset, load_for_config
from trainables.device import device_policy
from trainables.models import count_parameters
from trainables.train import build_training, make_generators, make_step, train_one_epoch

# Model settings compared; resnet50_seed is the seed's transfer setting (layer4[2] + head train).
VARIANTS: dict[str, dict[str, Any]] = {
    "simple_cnn": {"model": "simple_cnn"},
    "simple_cnn_10m": {"model": "simple_cnn_10m"},
    "resnet50": {"model": "resnet50"},
    "resnet50_seed": {"model": "resnet50", "frozen_depth": 5, "unfrozen_blocks": 1},
}
PROFILES: dict[str, dict[str, Any]] = {
    "tiny": {
        "data": "phantom:small",
        "image_size": 32,
        "batch_size": 8,
        "batches": 1,
        "repeats": 1,
        "models": ("simple_cnn_10m",),
    },
    # batches: training steps per timed epoch; repeats: timed epochs per path (the best counts).
    "small": {
        "data": "phantom:small",
        "image_size": 64,
        "batch_size": 32,
        "batches": 3,
        "repeats": 3,
        "models": ("simple_cnn", "resnet50"),
    },
    "full": {
        "data": "phantom:full",
        "image_size": 256,
        "batch_size": 128,
        "batches": 30,
        "repeats": 3,
        "models": ("simple_cnn", "resnet50", "resnet50_seed", "simple_cnn_10m"),
    },
}
AUGMENT = "seed"  # the seed's training augmentations: equalize, rotate, hflip, shift


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--models", help=f"comma-separated, from {sorted(VARIANTS)}")
    p.add_argument("--batches", type=int, help="training steps per timed epoch")
    p.add_argument("--repeats", type=int, help="timed epochs per path (the best counts)")
    p.add_argument(
        "--workers", type=int, help="DataLoader workers of the seed path (default: cores)"
    )
    p.add_argument("--no-seed-path", action="store_true", help="skip the PIL + DataLoader baseline")
    args = p.parse_args(argv)
    device = setup(args)
    prof = dict(PROFILES[args.size])
    models = args.models.split(",") if args.models else list(prof["models"])
    unknown = [m for m in models if m not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown --models {unknown}; expected names from {sorted(VARIANTS)}")
    batches = args.batches or prof["batches"]
    repeats = args.repeats or prof["repeats"]
    workers = args.workers if args.workers is not None else (os.cpu_count() or 1)
    if batches < 1 or repeats < 1 or workers < 0:
        raise ValueError("--batches and --repeats must be >= 1 and --workers >= 0")

    results = Results("pipeline", args, device, argv)
    base = TrialConfig(
        data=prof["data"],
        image_size=prof["image_size"],
        batch_size=prof["batch_size"],
        augment=AUGMENT,
        balance="oversample",
        max_train_batches=batches,
    )
    started = time.perf_counter()
    data = load_for_config(base)  # decoding is goal 2; here the cache is warm after this call
    note(
        f"data {data.root}: {len(data.train)} train images at {base.image_size} px "
        f"(loaded in {time.perf_counter() - started:.1f} s, {data.decoded} decoded) | device "
        f"{device} | batch {base.batch_size} | {batches} steps x {repeats} repeats per path"
    )
    results.figure("train_images", len(data.train))
    augment_rate = measure_augmentation(base, data, device, batches)
    results.figure("augmentation_images_per_s", augment_rate)
    note(f"augmentation alone ({AUGMENT}): {augment_rate:,.0f} img/s")
    for name in models:
        cfg = replace(base, **VARIANTS[name])
        figures = compare(cfg, data, device, batches, repeats, workers, not args.no_seed_path)
        results.figure(name, figures)
        detail = (
            f"{figures['fast_images_per_s']:,.1f} vs {figures['floor_images_per_s']:,.1f} img/s, "
            f"{figures['numerics']}, {figures['trainable_parameters']:,} trainable parameters"
        )
        results.ratio(f"{name}.fast_over_floor", figures["fast_over_floor"], ">= 0.85", detail)
        if "seed_images_per_s" in figures:
            results.ratio(
                f"{name}.seed_over_floor",
                figures["seed_over_floor"],
                detail=f"{figures['seed_images_per_s']:,.1f} img/s with {workers} DataLoader "
                f"workers, start-up included; steady state "
                f"{figures['seed_steady_images_per_s']:,.1f} img/s",
            )
            results.ratio(
                f"{name}.fast_over_seed",
                figures["fast_images_per_s"] / figures["seed_images_per_s"],
                detail="speed-up of the fast path over the seed's pipeline",
            )
    results.save()
    return 0


def measure_augmentation(
    cfg: TrialConfig, data: Dataset, device: torch.device, batches: int
) -> float:
    """Images per second of `prepare_batch` alone on device-resident uint8 batches."""
    from trainables.augment import AUGMENTATIONS

    images = data.train.images.to(device)
    gen = torch.Generator(device=device).manual_seed(0)
    idx = torch.arange(min(cfg.batch_size, len(images)), device=device)
    prepare_batch(images[idx], AUGMENTATIONS[cfg.augment].ops, gen)  # warm-up

    def run() -> None:
        for _ in range(batches):
            prepare_batch(images[idx], AUGMENTATIONS[cfg.augment].ops, gen)

    return batches * len(idx) / timed(run, device)


def compare(
    cfg: TrialConfig,
    data: Dataset,
    device: torch.device,
    batches: int,
    repeats: int,
    workers: int,
    seed_path: bool,
) -> dict[str, Any]:
    torch.manual_seed(cfg.seed)
    model, optimizer = build_training(cfg, len(data.classes), device)
    step = make_step(cfg, model, optimizer, nn.CrossEntropyLoss(), device)
    samplers = make_generators(cfg, device)
    train_x, train_y = data.train.images.to(device), data.train.labels.to(device)
    policy = device_policy(cfg.amp, device)
    shape = (cfg.batch_size, 1, cfg.image_size, cfg.image_size)
    random_x = policy.batch(torch.randn(shape, device=device))
    random_y = torch.randint(0, len(data.classes), (cfg.batch_size,), device=device)
    trained = {"images": 0.0}

    def fast() -> None:
        order = epoch_indices(cfg.balance, data.train.labels, samplers["cpu"])
        stats = train_one_epoch(cfg, step, train_x, train_y, order, samplers["device"])
        trained["images"] = stats["images_trained"]

    def floor() -> None:
        for _ in range(batches):
            step(random_x, random_y)

    timed(floor, device)  # warm-up: allocator, cuDNN algorithm choice, first-touch
    timed(fast, device)
    floor_times, fast_times, seed_times = [], [], []
    # Interleaved, and the best of the repeats counts: a busy neighbour only ever adds time.
    for _ in range(repeats):
        floor_times.append(timed(floor, device))
        fast_times.append(timed(fast, device))
        if seed_path:
            seed_times.append(seed_epoch(cfg, data, step, device, batches, workers))
    if trained["images"] != batches * cfg.batch_size:
        raise ValueError(
            f"the fast path trained {trained['images']:.0f} images per epoch, expected "
            f"{batches * cfg.batch_size}: the train split is too small for --batches {batches}"
        )
    floor_rate = batches * cfg.batch_size / min(floor_times)
    fast_rate = trained["images"] / min(fast_times)
    figures: dict[str, Any] = {
        "model": cfg.model,
        "frozen_depth": cfg.frozen_depth,
        "unfrozen_blocks": cfg.unfrozen_blocks,
        "image_size": cfg.image_size,
        "batch_size": cfg.batch_size,
        "numerics": policy.label,
        "trainable_parameters": count_parameters(model, trainable_only=True),
        "floor_seconds": floor_times,
        "fast_seconds": fast_times,
        "floor_images_per_s": floor_rate,
        "fast_images_per_s": fast_rate,
        "fast_over_floor": fast_rate / floor_rate,
    }
    note(
        f"{cfg.model} (frozen_depth {cfg.frozen_depth}): floor {floor_rate:,.1f} img/s, "
        f"fast path {fast_rate:,.1f} img/s"
    )
    if seed_path:
        figures["seed_seconds"] = seed_times
        total, steady = min(seed_times)
        figures["seed_images_per_s"] = batches * cfg.batch_size / total
        figures["seed_steady_images_per_s"] = (batches - 1) * cfg.batch_size / max(steady, 1e-9)
        figures["seed_over_floor"] = figures["seed_images_per_s"] / floor_rate
        figures["seed_workers"] = workers
        note(
            f"{cfg.model}: seed pipeline {figures['seed_images_per_s']:,.1f} img/s "
            f"({total:.2f} s for {batches} steps, first batch after {total - steady:.2f} s)"
        )
    return figures


def floor_images_per_s(
    cfg: TrialConfig, num_classes: int, device: torch.device, batches: int, repeats: int = 2
) -> float:
    """The compute floor of `cfg`'s model, batch and numerics: training steps per second on
    random tensors already on the device, as images per second (best of `repeats`)."""
    torch.manual_seed(cfg.seed)
    model, optimizer = build_training(cfg, num_classes, device)
    step = make_step(cfg, model, optimizer, nn.CrossEntropyLoss(), device)
    x = torch.randn(cfg.batch_size, 1, cfg.image_size, cfg.image_size, device=device)
    x = device_policy(cfg.amp, device).batch(x)
    y = torch.randint(0, num_classes, (cfg.batch_size,), device=device)

    def floor() -> None:
        for _ in range(batches):
            step(x, y)

    timed(floor, device)  # warm-up
    return batches * cfg.batch_size / min(timed(floor, device) for _ in range(repeats))


# --- the seed's pipeline -------------------------------------------------------------------


class SeedImages(torch.utils.data.Dataset):
    """The seed's loader: open each file with PIL every epoch, grayscale, torchvision transforms."""

    def __init__(self, root: Path, paths: list[str], labels: list[int], image_size: int) -> None:
        self.files = [root / p for p in paths]
        self.labels = labels
        self.transform = seed_transforms(image_size)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        with Image.open(self.files[i]) as img:
            gray = img.convert("L")
        return self.transform(gray), self.labels[i]


def seed_transforms(image_size: int) -> T.Compose:
    """The seed's section 2 training transforms (resize, equalize, rotate, flip, shift,
    normalize)."""
    return T.Compose(
        [
            T.Resize((image_size, image_size)),
            T.RandomEqualize(p=1.0),  # PIL ImageOps.equalize, as the seed
            T.RandomRotation(10),
            T.RandomHorizontalFlip(0.5),
            T.RandomAffine(0, translate=(0.1, 0.1)),
            T.ToTensor(),
            T.Normalize([MEAN], [STD]),
        ]
    )


def seed_epoch(
    cfg: TrialConfig,
    data: Dataset,
    step: Any,
    device: torch.device,
    batches: int,
    workers: int,
) -> tuple[float, float]:
    """(seconds for `batches` steps including DataLoader start-up, seconds after the first
    batch)."""
    dataset = SeedImages(data.root, data.train.paths, data.train.labels.tolist(), cfg.image_size)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        shuffle=True,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        drop_last=True,
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    if len(loader) < batches:
        raise ValueError(f"{len(dataset)} train images give fewer than {batches} full batches")
    policy = device_policy(cfg.amp, device)
    sync(device)
    started = time.perf_counter()
    first = started
    for b, (x, y) in enumerate(loader):
        x, y = policy.batch(x.to(device, non_blocking=True)), y.to(device, non_blocking=True)
        step(x, y)
        if b == 0:
            sync(device)
            first = time.perf_counter()
        if b + 1 == batches:
            break
    sync(device)
    end = time.perf_counter()
    del loader  # stops the workers
    return end - started, end - first


if __name__ == "__main__":
    raise SystemExit(main())
