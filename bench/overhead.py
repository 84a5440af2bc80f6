"""Goal 4: Ray's overhead is small.

Side by side in one run:

1. checkpoint cost, no Ray: `trainables.train.save_checkpoint` (model + Adam state + history) for
   a small and a large model: MB and seconds per save;
2. a real Ray Tune sweep on a warm node (bench/harness.py, the product's trainable, reused
   actors), a grid of {small, large model} x {checkpoint every epoch, only at the end}, one trial
   at a time with the whole machine. From the driver's timeline and Ray's own per-iteration
   times: seconds from a trial's start to its first training step, and the share of trial time
   spent outside training and validation (checkpoint save + `tune.report` + Ray) per epoch;
3. the W&B callback (offline) as the same small sweep with and without it: seconds per trial.

The checkpoint frequency that keeps checkpointing under 2% of trial time follows from 1 and 2
and is printed for each model.

    python -m bench.overhead --size small     # CPU: 64 px, 3 epochs of 6 steps
    python -m bench.overhead --size full      # GPU: 256 px, full epochs of phantom:full
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from ray import tune
from torch import nn

from bench.common import REPO, Results, median, note, parser, setup
from bench.harness import Sweep, TimedTrial, run_sweep, space_for, start_ray, stop_ray
from trainables.config import TrialConfig
from trainables.data import Dataset, load_for_config
from trainables.train import build_training, make_generators, make_step, save_checkpoint

SPACE = REPO / "bench" / "spaces" / "cpu_small.py"  # for metric and mode only (grid sweeps)
PROFILES: dict[str, dict[str, Any]] = {
    "tiny": {
        "base": {"data": "phantom:small", "image_size": 32, "max_train_batches": 1},
        "epochs": 3,
        "wandb_trials": 1,
        "wandb_epochs": 1,
    },
    "small": {
        "base": {"data": "phantom:small", "image_size": 64, "max_train_batches": 6},
        "epochs": 3,
        "wandb_trials": 4,
        "wandb_epochs": 2,
    },
    "full": {
        "base": {"data": "phantom:full", "image_size": 256},
        "epochs": 4,
        "wandb_trials": 8,
        "wandb_epochs": 2,
    },
}
MODELS = {"small": "simple_cnn_10m", "large": "simple_cnn"}  # 10M and 135M parameters at 256 px
BUDGET = 0.02  # share of trial time checkpointing may take


def checkpoint_cost(cfg: TrialConfig, data: Dataset, device: torch.device) -> dict[str, float]:
    """(MB, seconds) of one `save_checkpoint` after a training step (so Adam holds its state)."""
    model, optimizer = build_training(cfg, len(data.classes), device)
    step = make_step(cfg, model, optimizer, nn.CrossEntropyLoss(), device)
    x = torch.randn(cfg.batch_size, 1, cfg.image_size, cfg.image_size, device=device)
    step(x, torch.zeros(cfg.batch_size, dtype=torch.long, device=device))
    samplers = make_generators(cfg, device)
    seconds = []
    with tempfile.TemporaryDirectory(prefix="cxr-bench-ckpt-") as tmp:
        for _ in range(3):
            started = time.perf_counter()
            path = save_checkpoint(Path(tmp), cfg, data, model, optimizer, samplers, 1, [])
            seconds.append(time.perf_counter() - started)
        megabytes = path.stat().st_size / 1e6
    return {"mb": megabytes, "save_s": median(seconds)}


def per_epoch_overhead(trial: TimedTrial, last: bool = True) -> tuple[float, float]:
    """(overhead seconds, iteration seconds) summed over epochs after the first (and before the
    last, which always checkpoints, when `last` is False): Ray's time between two reports minus
    the trial's own training + validation time."""
    later = trial.results[1:] if last else trial.results[1:-1]
    iteration = sum(r["time_this_iter_s"] for r in later)
    work = sum(r["epoch_time"] for r in later)
    return iteration - work, iteration


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--skip-wandb", action="store_true", help="leave the W&B comparison out")
    p.add_argument(
        "--checkpoint-only",
        action="store_true",
        help="only part 1 (checkpoint MB and seconds per save), no Ray",
    )
    p.add_argument(
        "--checkpoint-image-size",
        type=int,
        help="image size of part 1 (default: the size's); 256 gives the full-size checkpoints",
    )
    args = p.parse_args(argv)
    device = setup(args)
    prof = PROFILES[args.size]
    results = Results("overhead", args, device, argv)
    epochs = prof["epochs"]
    base = TrialConfig.from_dict({**prof["base"], "epochs": epochs})
    data = load_for_config(base)  # warms the decode cache, so trials start on a warm node

    costs = {}
    ckpt_size = args.checkpoint_image_size or base.image_size
    for size, model in MODELS.items():
        cfg = replace(base, model=model, image_size=ckpt_size, batch_size=2)
        costs[size] = checkpoint_cost(cfg, data, device)
        costs[size]["image_size"] = ckpt_size
        note(f"checkpoint of {model}: {costs[size]['mb']:.1f} MB in {costs[size]['save_s']:.2f} s")
    results.figure("checkpoint", costs)
    if args.checkpoint_only:
        for size, model in MODELS.items():
            results.ratio(
                f"{size}.checkpoint_seconds_per_save",
                costs[size]["save_s"],
                detail=f"seconds; {model} at {ckpt_size} px: {costs[size]['mb']:.0f} MB "
                "(weights + Adam state)",
            )
        results.save()
        return 0

    cores = os.cpu_count() or 1
    gpus = 1.0 if device.type == "cuda" else 0.0
    space = space_for(SPACE, {}, {}, epochs)
    storage = Path(tempfile.mkdtemp(prefix="cxr-bench-overhead-"))
    temp_dir = start_ray(num_cpus=cores)
    try:
        grid = {
            **{k: v for k, v in base.to_dict().items() if k in prof["base"]},
            "epochs": epochs,
            "model": tune.grid_search(list(MODELS.values())),
            "checkpoint_every": tune.grid_search([1, epochs]),
        }
        sweep = run_sweep(
            space,
            num_samples=1,
            storage=storage,
            name="checkpointing",
            search="grid",
            asha=False,
            cpus_per_trial=cores,
            gpus_per_trial=gpus,
            param_space=grid,
        )
        report_timing(sweep, costs, results)
        if not args.skip_wandb:
            wandb_cost(space, base, prof, storage, cores, gpus, results)
    finally:
        stop_ray(temp_dir)
        shutil.rmtree(storage, ignore_errors=True)
    results.save()
    return 0


def report_timing(sweep: Sweep, costs: dict[str, dict[str, float]], results: Results) -> None:
    latencies = [t.first_batch_latency() for t in sweep.trials]
    gaps = sweep.idle_gaps()
    results.figure("first_batch_latency_s", latencies)
    results.figure("idle_gap_s", gaps)
    note("Tune's trial start to first step (s): " + ", ".join(f"{x:.2f}" for x in latencies))
    note("previous trial's end to first step (s): " + ", ".join(f"{x:.2f}" for x in gaps))
    results.ratio(
        "first_batch_latency_s",
        max(latencies[1:] or latencies),
        "<= 5 s",
        f"seconds from Tune's trial start, worst trial on a warm node (reused actor); the "
        f"first trial, whose actor was new, took {latencies[0]:.2f} s",
    )
    results.ratio(
        "idle_gap_between_trials_s",
        max(gaps[1:] or gaps),
        "<= 5 s",
        f"seconds from the previous trial's end to the next one's first step (worst, reused "
        f"actor); the first trial's, from the sweep's start with a new actor process: "
        f"{gaps[0]:.2f} s",
    )
    by_size = {v: k for k, v in MODELS.items()}
    for t in sweep.trials:
        size = by_size[t.config["model"]]
        every = t.config["checkpoint_every"]
        # Without per-epoch checkpoints only the last epoch saves: leave it out.
        overhead, iteration = per_epoch_overhead(t, last=every == 1)
        epochs_used = len(t.results) - (1 if every == 1 else 2)
        epoch_s = median([r["epoch_time"] for r in t.results])
        kind = "checkpoint_and_report" if every == 1 else "report_only"
        results.figure(
            f"{size}.{kind}",
            {
                "overhead_s": overhead,
                "iteration_s": iteration,
                "epoch_s": epoch_s,
                "checkpoint_every": every,
            },
        )
        results.ratio(
            f"{size}.{kind}_share",
            overhead / iteration if iteration else float("nan"),
            "< 0.02",
            f"{t.config['model']}, checkpoint_every={every}: {overhead:.2f} s of "
            f"{iteration:.2f} s over {epochs_used} epoch(s) outside training + validation",
        )
        if every == 1:
            # Smallest checkpoint_every that keeps saves under BUDGET of trial time.
            per_save = costs[size]["save_s"]
            every_needed = max(1, math.ceil(per_save / (BUDGET * epoch_s)))
            results.figure(f"{size}.checkpoint_every_for_2pct", every_needed)
            note(
                f"{t.config['model']}: {costs[size]['mb']:.0f} MB, {per_save:.2f} s per save, "
                f"{epoch_s:.2f} s per epoch -> checkpoint_every >= {every_needed} keeps saves "
                f"under {BUDGET:.0%}"
            )


def wandb_cost(
    space: Any,
    base: TrialConfig,
    prof: dict[str, Any],
    storage: Path,
    cores: int,
    gpus: float,
    results: Results,
) -> None:
    n = prof["wandb_trials"]
    grid = {
        **{k: v for k, v in base.to_dict().items() if k in prof["base"]},
        "model": MODELS["small"],
        "epochs": prof["wandb_epochs"],
        "seed": tune.grid_search(list(range(n))),
    }
    walls = {}
    for mode in ("disabled", "offline"):
        sweep = run_sweep(
            space,
            num_samples=1,
            storage=storage,
            name=f"wandb-{mode}",
            search="grid",
            asha=False,
            cpus_per_trial=cores,
            gpus_per_trial=gpus,
            param_space=grid,
            wandb_mode=mode,
        )
        walls[mode] = sweep.wall_s
    runs = list((storage / "wandb-offline").rglob("offline-run-*"))
    per_trial = (walls["offline"] - walls["disabled"]) / n
    results.figure("wandb", {"wall_s": walls, "trials": n, "offline_runs": len(runs)})
    results.ratio(
        "wandb_seconds_per_trial",
        per_trial,
        "measured (about 2 s expected)",
        f"seconds; {n} trials: {walls['offline']:.1f} s with the offline W&B callback, "
        f"{walls['disabled']:.1f} s without ({len(runs)} offline runs written)",
    )
    results.ratio(
        "wandb_share_of_sweep",
        (walls["offline"] - walls["disabled"]) / walls["offline"],
        detail=f"of a sweep of {prof['wandb_epochs']}-epoch trials",
    )


if __name__ == "__main__":
    raise SystemExit(main())
