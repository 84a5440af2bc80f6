"""Goal 5: early stopping pays.

Two real Ray Tune sweeps of the same space, side by side (bench/harness.py, the product's
trainable): ASHA with TPE (as `search.run`), and a full-budget random search (seeded random
sampler, every trial trains all epochs). For each, the best validation score so far against the
epochs spent so far (all trials' epochs, in the order their results arrived). The ratio is the
share of the random search's total epochs that ASHA + TPE needed to come within one point of the
random search's best score (goal <= 1/3). Both curves go to a PNG and a CSV.

    python -m bench.asha_vs_random --size small   # CPU: simple_cnn_10m, 64 px, 4 epochs of 6 steps
    python -m bench.asha_vs_random --size full    # GPU: spaces/transfer.py on phantom:full
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from bench.common import REPO, Results, note, parser, setup
from bench.harness import Sweep, run_sweep, space_for, start_ray, stop_ray
from trainables.cache import atomic_write_bytes, atomic_write_text

PROFILES: dict[str, dict[str, Any]] = {
    "tiny": {
        "space": REPO / "bench" / "spaces" / "cpu_small.py",
        "defaults": {"image_size": 32, "max_train_batches": 1},
        "overrides": {"data": "phantom:small"},
        "max_epochs": 2,
        "asha_trials": 2,
        "random_trials": 2,
    },
    "small": {
        "space": REPO / "bench" / "spaces" / "cpu_small.py",
        "defaults": {"image_size": 64, "max_train_batches": 6},
        "overrides": {"data": "phantom:small"},
        "max_epochs": 4,
        "asha_trials": 9,
        "random_trials": 6,
    },
    "full": {
        "space": REPO / "spaces" / "transfer.py",
        "defaults": {"image_size": 256},
        "overrides": {"data": "phantom:full"},
        "max_epochs": None,  # the space's MAX_EPOCHS
        "asha_trials": 48,
        "random_trials": 24,
    },
}
POINT = 0.01  # "within one point" of a score in [0, 1]


def curve(sweep: Sweep, metric: str, mode: str) -> list[dict[str, Any]]:
    """One row per epoch spent, in arrival order, with the best score so far."""
    rows = sorted(
        ({"trial_id": t.trial_id, **r} for t in sweep.trials for r in t.results),
        key=lambda r: r["wall"],
    )
    start = min(t.started for t in sweep.trials)
    best = None
    out = []
    for spent, r in enumerate(rows, start=1):
        value = float(r[metric])
        if best is None or (value > best if mode == "max" else value < best):
            best = value
        out.append(
            {
                "epochs_spent": spent,
                "best_so_far": best,
                "value": value,
                "trial_id": r["trial_id"],
                "epoch": int(r["epoch"]),
                "seconds": r["wall"] - start,
            }
        )
    return out


def within_point(rows: list[dict[str, Any]], target: float, mode: str) -> int | None:
    """Epochs spent when the best so far first came within POINT of `target`."""
    for r in rows:
        best = r["best_so_far"]
        if (best >= target - POINT) if mode == "max" else (best <= target + POINT):
            return r["epochs_spent"]
    return None


def write_outputs(
    out: Path, curves: dict[str, list[dict[str, Any]]], metric: str, target: float, mode: str
) -> None:
    buf = io.StringIO()
    fields = ["arm", "epochs_spent", "best_so_far", "value", "trial_id", "epoch", "seconds"]
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    for arm, rows in curves.items():
        writer.writerows({"arm": arm, **r} for r in rows)
    atomic_write_text(out / "asha_vs_random.csv", buf.getvalue())
    try:
        import matplotlib
    except ImportError:  # a bare GPU machine: the CSV holds the same curves
        note("matplotlib is not installed: wrote the CSV only")
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    for arm, rows in curves.items():
        ax.step(
            [r["epochs_spent"] for r in rows],
            [r["best_so_far"] for r in rows],
            where="post",
            label=arm,
        )
    bound = target - POINT if mode == "max" else target + POINT
    ax.axhline(bound, color="grey", linestyle=":", label="random best - 1 point")
    ax.set_xlabel("epochs spent (all trials)")
    ax.set_ylabel(f"best {metric} so far")
    ax.set_title("ASHA + TPE against full-budget random search")
    ax.legend(loc="lower right")
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png")
    plt.close(fig)
    atomic_write_bytes(out / "asha_vs_random.png", png.getvalue())


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--asha-trials", type=int, help="trials of the ASHA + TPE sweep")
    p.add_argument("--random-trials", type=int, help="trials of the random search")
    p.add_argument("--max-epochs", type=int, help="epochs of a full trial (ASHA's max_t)")
    p.add_argument(
        "--out", type=Path, default=REPO / "bench" / "results", help="folder for the PNG and CSV"
    )
    args = p.parse_args(argv)
    device = setup(args)
    prof = PROFILES[args.size]
    asha_trials = args.asha_trials or prof["asha_trials"]
    random_trials = args.random_trials or prof["random_trials"]
    if asha_trials < 1 or random_trials < 1:
        raise ValueError("--asha-trials and --random-trials must be >= 1")
    space = space_for(
        prof["space"], prof["defaults"], prof["overrides"], args.max_epochs or prof["max_epochs"]
    )
    results = Results("asha_vs_random", args, device, argv)
    cores = os.cpu_count() or 1
    gpu = device.type == "cuda"
    # CPU: one core per trial, `cores` at once; GPU: fractions sized from the model.
    placement: dict[str, Any] = {
        "max_concurrent": 4 if gpu else cores,
        "cpus_per_trial": 2 if gpu else 1,
        "gpus_per_trial": None if gpu else 0.0,
    }
    if gpu:
        import torch

        placement["card_bytes"] = torch.cuda.get_device_properties(device).total_memory
    note(
        f"space {prof['space'].name}: {space.metric} ({space.mode}), {space.max_epochs} epochs "
        f"per full trial; ASHA + TPE {asha_trials} trials, random {random_trials} trials"
    )
    storage = Path(tempfile.mkdtemp(prefix="cxr-bench-asha-"))
    temp_dir = start_ray(num_cpus=cores)
    try:
        asha = run_sweep(
            space,
            num_samples=asha_trials,
            storage=storage,
            name="asha_tpe",
            search="tpe",
            asha=True,
            **placement,
        )
        # Its own seed: TPE starts with random samples of the same seed, which would make the
        # first trials of both arms the same configurations.
        rand = run_sweep(
            space,
            num_samples=random_trials,
            storage=storage,
            name="random",
            search="random",
            asha=False,
            seed=1,
            **placement,
        )
    finally:
        stop_ray(temp_dir)
        shutil.rmtree(storage, ignore_errors=True)

    curves = {
        "ASHA + TPE": curve(asha, space.metric, space.mode),
        "random, full budget": curve(rand, space.metric, space.mode),
    }
    random_best = curves["random, full budget"][-1]["best_so_far"]
    random_epochs = len(curves["random, full budget"])
    asha_best = curves["ASHA + TPE"][-1]["best_so_far"]
    asha_epochs = len(curves["ASHA + TPE"])
    needed = within_point(curves["ASHA + TPE"], random_best, space.mode)
    args.out.mkdir(parents=True, exist_ok=True)
    write_outputs(args.out, curves, space.metric, random_best, space.mode)
    results.figure("curves", curves)
    results.figure(
        "summary",
        {
            "random_best": random_best,
            "random_epochs": random_epochs,
            "random_wall_s": rand.wall_s,
            "asha_best": asha_best,
            "asha_epochs": asha_epochs,
            "asha_wall_s": asha.wall_s,
            "asha_epochs_to_within_point": needed,
            "seeds": {"asha_tpe": 0, "random": 1},
        },
    )
    note(
        f"random: best {space.metric} {random_best:.4f} after {random_epochs} epochs "
        f"({rand.wall_s:.0f} s); ASHA + TPE: best {asha_best:.4f} after {asha_epochs} epochs "
        f"({asha.wall_s:.0f} s); curves in {args.out}"
    )
    if needed is None:
        results.ratio(
            "epochs_to_match_over_random_epochs",
            float("nan"),
            "<= 0.333",
            f"ASHA + TPE never came within one point of random's best {random_best:.4f} "
            f"(its best {asha_best:.4f} in {asha_epochs} epochs)",
        )
    else:
        results.ratio(
            "epochs_to_match_over_random_epochs",
            needed / random_epochs,
            "<= 0.333",
            f"{needed} of random's {random_epochs} epochs to reach {space.metric} within one "
            f"point of {random_best:.4f}",
        )
    results.ratio(
        "total_epochs_asha_over_random",
        asha_epochs / random_epochs,
        detail=f"{asha_epochs} vs {random_epochs} epochs in all",
    )
    results.ratio(
        "best_score_asha_minus_random",
        asha_best - random_best,
        ">= -0.01",
        f"best {space.metric}: {asha_best:.4f} vs {random_best:.4f}",
    )
    results.save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
