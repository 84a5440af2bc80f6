"""Goal 3: the device works for the whole sweep.

A real Ray Tune sweep (the product's trainable, TPE + ASHA, reused actors; see bench/harness.py)
of 16 short trials of the small models of spaces/transfer.py (bench/spaces/small_models.py on a
GPU; simple_cnn_10m only on a CPU, bench/spaces/cpu_small.py), run twice side by side: one
trial per device, and packed trials. The useful-training fraction is

    sum over trials of (images trained / compute-floor rate of that trial's model) / sweep wall

where the floor is measured in this process before and after the sweeps (the higher counts), on
the same device with random tensors (bench/pipeline.py's floor). On a CPU-only machine "the
device" is the whole CPU: one trial at a time gets every core (`cpus_per_trial` = cores, as many
torch threads), packed trials get one core each, `cores` of them at once, and the floor is the
better of one process on every core and `cores` times one single-threaded process. On a GPU:
1.0 GPU per trial against fractional GPUs sized from each model's peak memory (search/resources.py).

    python -m bench.sweep_utilization --size small    # 2-core CPU: 64 px, 3 epochs of 6 steps
    python -m bench.sweep_utilization --size full     # GPU: phantom:full at 256 px, full epochs
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from bench.common import REPO, Results, note, parser, setup
from bench.harness import Sweep, run_sweep, space_for, start_ray, stop_ray
from bench.pipeline import floor_images_per_s
from trainables.config import TrialConfig
from trainables.data import load_for_config

CPU_SPACE = REPO / "bench" / "spaces" / "cpu_small.py"  # simple_cnn_10m only
GPU_SPACE = REPO / "bench" / "spaces" / "small_models.py"  # simple_cnn_10m and resnet18
PROFILES: dict[str, dict[str, Any]] = {
    "tiny": {
        "defaults": {"image_size": 32, "max_train_batches": 1},
        "overrides": {"data": "phantom:small"},
        "max_epochs": 1,
        "trials": 2,
        "floor_batches": 1,
        "space": CPU_SPACE,
        "models": ("simple_cnn_10m",),
    },
    "small": {
        "defaults": {"image_size": 64, "max_train_batches": 6},
        "overrides": {"data": "phantom:small"},
        "max_epochs": 3,
        "trials": 16,
        "floor_batches": 4,
        "space": CPU_SPACE,
        "models": ("simple_cnn_10m",),
    },
    "full": {
        "defaults": {"image_size": 256},
        "overrides": {"data": "phantom:full"},
        "max_epochs": 6,
        "trials": 16,
        "floor_batches": 20,
        "space": GPU_SPACE,
        "models": ("simple_cnn_10m", "resnet18"),
    },
}


def arms(device: torch.device, cores: int) -> list[dict[str, Any]]:
    """The two ways to run the sweep on this machine."""
    if device.type == "cuda":
        card = torch.cuda.get_device_properties(device).total_memory
        return [
            {"name": "one_per_device", "max_concurrent": 1, "cpus": 2, "gpus": 1.0},
            # Fractions from search/resources.py; Ray packs as many as fit on the card.
            {"name": "packed", "max_concurrent": 8, "cpus": 1, "gpus": None, "card": card},
        ]
    return [
        {"name": "one_per_device", "max_concurrent": 1, "cpus": cores, "gpus": 0.0},
        {"name": "packed", "max_concurrent": cores, "cpus": 1, "gpus": 0.0},
    ]


def useful_fraction(sweep: Sweep, floors: dict[str, float]) -> tuple[float, float, float]:
    """(fraction, useful seconds, images trained) of one sweep."""
    useful = 0.0
    images = 0.0
    for t in sweep.trials:
        useful += t.images_trained / floors[t.config["model"]]
        images += t.images_trained
    return useful / sweep.wall_s, useful, images


def measure_floors(
    base: TrialConfig, prof: dict[str, Any], num_classes: int, device: torch.device, cores: int
) -> dict[str, float]:
    """Compute floor per model, images/s. On a CPU the device is every core: the better of one
    process with `cores` threads and `cores` times one thread (the packed trials' layout,
    assuming perfect scaling, so the floor is never below what packing could reach)."""
    floors = {}
    for model in prof["models"]:
        cfg = replace(base, model=model)
        rate = floor_images_per_s(cfg, num_classes, device, prof["floor_batches"])
        if device.type == "cpu" and cores > 1:
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                one = floor_images_per_s(cfg, num_classes, device, prof["floor_batches"])
            finally:
                torch.set_num_threads(threads)
            rate = max(rate, cores * one)
        floors[model] = rate
        note(f"compute floor {model}: {rate:,.1f} img/s ({device}, batch {cfg.batch_size})")
    return floors


def report_arm(
    sweep: Sweep,
    arm: dict[str, Any],
    floors: dict[str, float],
    device: torch.device,
    results: Results,
) -> None:
    fraction, useful, images = useful_fraction(sweep, floors)
    epochs = sum(len(t.results) for t in sweep.trials)
    results.figure(
        arm["name"],
        {
            **{k: v for k, v in arm.items() if k != "card"},
            "wall_s": sweep.wall_s,
            "useful_s": useful,
            "images_trained": images,
            "trials": len(sweep.trials),
            "epochs": epochs,
            "idle_gaps_s": sweep.idle_gaps() if arm["max_concurrent"] == 1 else None,
        },
    )
    gpu = (
        ""
        if device.type != "cuda"
        else (f" + {'a sized share of a' if arm['gpus'] is None else arm['gpus']} GPU")
    )
    how = f"{arm['max_concurrent']} at a time, {arm['cpus']} CPU{gpu} per trial"
    results.ratio(
        f"{arm['name']}.useful_fraction",
        fraction,
        ">= 0.80",
        f"{len(sweep.trials)} trials, {epochs} epochs, {images:,.0f} images = "
        f"{useful:.1f} s at the floor in {sweep.wall_s:.1f} s of sweep ({how})",
    )


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--trials", type=int, help="trials per sweep (default 16)")
    p.add_argument("--arms", help="comma-separated: one_per_device,packed (default both)")
    args = p.parse_args(argv)
    device = setup(args)
    prof = PROFILES[args.size]
    trials = args.trials or prof["trials"]
    if trials < 1:
        raise ValueError(f"--trials must be >= 1, got {trials}")
    cores = os.cpu_count() or 1
    chosen = arms(device, cores)
    if args.arms:
        names = args.arms.split(",")
        unknown = sorted(set(names) - {a["name"] for a in chosen})
        if unknown:
            raise ValueError(f"unknown --arms {unknown}; expected one_per_device, packed")
        chosen = [a for a in chosen if a["name"] in names]
    results = Results("sweep_utilization", args, device, argv)
    space = space_for(prof["space"], prof["defaults"], prof["overrides"], prof["max_epochs"])
    base = TrialConfig.from_dict({**prof["defaults"], **prof["overrides"]})
    data = load_for_config(base)  # also warms the decode cache the trials will read
    before = measure_floors(base, prof, len(data.classes), device, cores)

    storage = Path(tempfile.mkdtemp(prefix="cxr-bench-util-"))
    temp_dir = start_ray(num_cpus=cores)
    sweeps = []
    try:
        for arm in chosen:
            sweep = run_sweep(
                space,
                num_samples=trials,
                storage=storage,
                name=arm["name"],
                max_concurrent=arm["max_concurrent"],
                cpus_per_trial=arm["cpus"],
                gpus_per_trial=arm["gpus"],
                card_bytes=arm.get("card"),
            )
            sweeps.append((sweep, arm))
    finally:
        stop_ray(temp_dir)
        shutil.rmtree(storage, ignore_errors=True)
    # The floor again after the sweeps; the higher of the two counts (a busy machine only
    # lowers a floor, and a low floor would flatter the fraction).
    after = measure_floors(base, prof, len(data.classes), device, cores)
    floors = {m: max(before[m], after[m]) for m in before}
    results.figure("floor_images_per_s_before", before)
    results.figure("floor_images_per_s_after", after)
    results.figure("floor_images_per_s", floors)
    for sweep, arm in sweeps:
        report_arm(sweep, arm, floors, device, results)
    results.save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
