"""The headline claim: the sweep beats the hand study at equal compute.

Two real Ray Tune runs through the product's tuner (bench/harness.py -> search.tuner), on the
same data, image size, validation split and per-trial epoch cap:

- the hand study: `spaces/seed.py`, its 9 fixed runs (POINTS_TO_EVALUATE), each trained to the
  end: 9 x EPOCHS epochs;
- the sweep: `spaces/transfer.py` (TPE starting from the seed's recipes, ASHA), stopped by
  `EpochBudget` once it has spent the same 9 x EPOCHS epochs (one result = one epoch).

Each side's best checkpoint (by its validation metric, `trainables.experiment.rank_key`) is then
evaluated on test by `analysis.evaluate` without TTA, with the study's TTA2, and with the TTA
policy chosen on validation; the table gives test accuracy and macro precision with 95 %
bootstrap intervals and McNemar's exact paired test (analysis/stats.py), plus the epochs and
trial CPU-seconds (each trial's training wall time x the CPUs reserved for it) each side spent.

    python -m bench.seed_vs_sweep --size small  # CPU: phantom:small, 32 px, 4 epochs of 6 steps
    python -m bench.seed_vs_sweep --size medium # CPU: phantom:small, 64 px, 8 epochs of 12 steps
    python -m bench.seed_vs_sweep --size decisive --seeds 3  # CPU: phantom:full, 64 px
    python -m bench.seed_vs_sweep --size full   # GPU: phantom:full, 256 px, 10 epochs

`--seeds N` repeats the pair under training seeds 0..N-1 (each trial's initialisation and the
sweep's sampler; the data, its split and the test images stay the same) and pools the N pairs
on the same test images: McNemar's test on the stacked pairs is the stratified (Mantel-Haenszel)
test for matched pairs, and the bootstrap intervals resample (seed, image) pairs.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from ray import tune

from analysis.tables import Scored
from bench.common import REPO, Results, note, parser, setup
from bench.harness import Sweep, run_sweep, space_for, start_ray, stop_ray
from trainables.cache import atomic_write_text

SEED_SPACE = REPO / "spaces" / "seed.py"
SWEEP_SPACE = REPO / "spaces" / "transfer.py"
VIEWS = ("none", "tta2", "chosen")  # no TTA, the study's TTA2, the policy chosen on validation


@dataclass(frozen=True)
class Size:
    image_size: int  # pixels
    epochs: int  # per trial: the seed's runs train all of them; ASHA's max_t for the sweep
    max_train_batches: int  # steps per epoch, 0: full epochs
    data: str


SIZES = {
    "tiny": Size(32, 1, 1, "phantom:small"),
    "small": Size(32, 4, 6, "phantom:small"),
    "medium": Size(64, 8, 12, "phantom:small"),  # CPU: about 9 minutes on 2 idle cores
    # CPU: phantom:full's 360 test and 1,040 validation images at 64 px, ~15 min a seed
    "decisive": Size(64, 8, 24, "phantom:full"),
    "full": Size(256, 10, 0, "phantom:full"),  # the seed's 10 epochs (spaces/seed.py)
}


class EpochBudget(tune.Stopper):
    """Stops the whole run once its trials have reported `budget` epochs in total."""

    def __init__(self, budget: int) -> None:
        if budget < 1:
            raise ValueError(f"epoch budget must be at least 1, got {budget}")
        self.budget = budget  # epochs, summed over trials
        self.used = 0

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        self.used += 1  # the trainable reports once per epoch
        return False

    def stop_all(self) -> bool:
        return self.used >= self.budget


def spent(sweep: Sweep, cpus_per_trial: float) -> dict[str, float]:
    """Epochs, trials and trial CPU-seconds (training wall time x CPUs reserved) of a run."""
    seconds = [t.results[-1].get("time_total_s", 0.0) for t in sweep.trials if t.results]
    return {
        "trials": len(sweep.trials),
        "epochs": sum(len(t.results) for t in sweep.trials),
        "trial_cpu_seconds": float(sum(seconds) * cpus_per_trial),
        "wall_s": sweep.wall_s,
    }


def run_side(
    label: str,
    path: Path,
    size: Size,
    budget: int,
    storage: Path,
    placement: dict[str, Any],
    seed: int = 0,
) -> tuple[Path, dict[str, Any]]:
    """One side's Ray run, stopped at `budget` epochs; writes its experiment record so
    `analysis.load` ranks its trials by the space's own metric."""
    from search.tuner import startup_trials
    from trainables.experiment import ExperimentRecord, write_record

    space = space_for(
        path,
        {"image_size": size.image_size, "max_train_batches": size.max_train_batches},
        {"data": size.data, "seed": seed},
        size.epochs,
        cpu=placement["gpus_per_trial"] == 0.0,
    )
    # The hand study runs its fixed points once each; the sweep may try as many trials as
    # the budget allows (each spends at least one epoch), and the stopper ends it.
    num_samples = space.num_samples if path == SEED_SPACE else budget
    note(f"{label}: {path.name}, up to {num_samples} trials, {budget} epochs in all")
    sweep = run_sweep(
        space,
        num_samples=num_samples,
        storage=storage,
        name=label,
        stop=EpochBudget(budget),
        grace_period=space.grace_period,
        seed=seed,
        **placement,
    )
    record = ExperimentRecord(
        name=label,
        metric=space.metric,
        mode=space.mode,
        storage=str(storage),
        path=str(storage / label),
        space=str(space.path),
        max_epochs=space.max_epochs,
        num_samples=num_samples,
        points_to_evaluate=space.points_to_evaluate,
        tpe_startup_trials=startup_trials(num_samples, len(space.points_to_evaluate)),
    )
    write_record(storage / label, record)
    return storage / label, {"space": path.name, **spent(sweep, placement["cpus_per_trial"])}


def evaluate_best(experiment: Path, device: str) -> dict[str, Any]:
    """The side's best trial on test: no TTA, TTA2, and the policy chosen on validation."""
    from analysis.evaluate import Evaluator
    from analysis.load import load_experiment

    exp = load_experiment(experiment)
    best = exp.best_trial()
    if best is None:
        raise RuntimeError(f"{experiment}: no trial has a checkpoint to evaluate")
    evaluator = Evaluator(device)
    ev = evaluator.evaluate(best)
    chosen, _ = evaluator.add_tta(ev, ["tta2"])
    keep = ("model", "balance", "augment", "lr", "weight_decay", "frozen_depth", "unfrozen_blocks")
    return {
        "trial_id": best.trial_id,
        "config": {k: best.params[k] for k in keep if k in best.params},
        "epoch": best.best_epoch,
        "metric": exp.metric,
        "val_value": best.best_score,
        "chosen_policy": chosen,
        "scored": {
            "none": ev.tta["none"][1],
            "tta2": ev.tta["tta2"][1],
            "chosen": ev.tta[chosen][1],
        },
        "test_paths": ev.test_paths,
    }


def compare(seed: dict[str, Any], sweep: dict[str, Any]) -> list[dict[str, Any]]:
    """Per TTA view: each side's test accuracy and macro precision with 95 % intervals, and
    McNemar's exact test of the sweep's best against the hand study's on the same images."""
    from analysis.stats import classification_intervals, mcnemar

    if seed["test_paths"] != sweep["test_paths"]:
        raise ValueError("the two sides were not evaluated on the same test images")
    rows = []
    for view in VIEWS:
        a, b = seed["scored"][view], sweep["scored"][view]
        if not np.array_equal(a.labels, b.labels):
            raise ValueError(f"{view}: the two sides' test labels differ")
        ia = classification_intervals(a.labels, a.preds, a.classes)
        ib = classification_intervals(b.labels, b.preds, b.classes)
        test = mcnemar(a.labels, a.preds, b.preds)
        rows.append(
            {
                "view": view,
                "seed_acc": ia["acc"],
                "seed_precision": ia["precision"],
                "sweep_acc": ib["acc"],
                "sweep_precision": ib["precision"],
                "mcnemar": test,
                "n_test": int(len(a.labels)),
            }
        )
    return rows


def pool(sides: list[dict[str, Any]]) -> dict[str, Any]:
    """One side's bests over several seeds as one side on the stacked (seed, image) pairs."""
    out: dict[str, Any] = {"scored": {}, "test_paths": []}
    for i, one in enumerate(sides):
        out["test_paths"] += [f"seed{i}/{p}" for p in one["test_paths"]]
    for view in VIEWS:
        parts = [one["scored"][view] for one in sides]
        out["scored"][view] = Scored(
            np.concatenate([s.labels for s in parts]),
            np.concatenate([s.preds for s in parts]),
            np.concatenate([s.probs for s in parts]),
            parts[0].classes,
        )
    return out


def verdict(rows: list[dict[str, Any]]) -> str:
    """One sentence per view: which side is more accurate, and whether McNemar says it is
    more than noise (p < 0.05)."""
    out = []
    for r in rows:
        gap = r["sweep_acc"].value - r["seed_acc"].value
        prec = r["sweep_precision"].value - r["seed_precision"].value
        side = "the sweep" if gap > 0 else "the hand study" if gap < 0 else ""
        lead = f"{side} is ahead by {abs(gap) * 100:.1f} accuracy points" if side else "level"
        test = r["mcnemar"].verdict("the sweep is better", "the hand study is better")
        out.append(
            f"{r['view']}: {lead} (macro precision {prec * 100:+.1f} points for the sweep); "
            f"McNemar: {test}"
        )
    return "\n".join(out)


def table(rows: list[dict[str, Any]], spend: dict[str, dict[str, Any]]) -> str:
    """The markdown table for bench/results and RESULTS.md."""
    lines = [
        "| TTA | hand study acc | sweep acc | hand study precision | sweep precision "
        "| McNemar (sweep vs study) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        m = r["mcnemar"]
        lines.append(
            f"| {r['view']} | {r['seed_acc'].format()} | {r['sweep_acc'].format()} "
            f"| {r['seed_precision'].format()} | {r['sweep_precision'].format()} "
            f"| {m.wrong_to_right} fixed / {m.right_to_wrong} broken, p = {m.pvalue:.3g} |"
        )
    lines += ["", "| side | trials | epochs | trial CPU-s | wall s |", "|---|---|---|---|---|"]
    for side, s in spend.items():
        lines.append(
            f"| {side} | {s['trials']} | {s['epochs']} | {s['trial_cpu_seconds']:.0f} "
            f"| {s['wall_s']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def bests(seed: dict[str, Any], sweep: dict[str, Any]) -> str:
    """Which trial each side's best is, and the TTA policy each chose on validation."""
    lines = []
    for side, best in (("hand study", seed), ("sweep", sweep)):
        val = f"validation {best['metric']} {best['val_value']:.4f}"
        lines.append(
            f"- {side} best: trial {best['trial_id']} {best['config']}, epoch {best['epoch']}, "
            f"{val}; TTA chosen on validation: `{best['chosen_policy']}`"
        )
    return "\n".join(lines) + "\n"


def as_json(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    def iv(i: Any) -> dict[str, float]:
        return {"value": i.value, "low": i.low, "high": i.high}

    return [
        {
            **{k: iv(v) for k, v in r.items() if k.endswith(("_acc", "_precision"))},
            "view": r["view"],
            "n_test": r["n_test"],
            "mcnemar": vars(r["mcnemar"]) | {"significant": r["mcnemar"].significant},
        }
        for r in rows
    ]


def placement_for(device: Any) -> dict[str, Any]:
    """CPU: one core per trial, two at once; GPU: fractions sized from each model."""
    if device.type != "cuda":
        return {"max_concurrent": 2, "cpus_per_trial": 1.0, "gpus_per_trial": 0.0}
    import torch

    card = torch.cuda.get_device_properties(device).total_memory
    return {"max_concurrent": 4, "cpus_per_trial": 2.0, "gpus_per_trial": None, "card_bytes": card}


def main(argv: list[str] | None = None) -> int:
    sizes = ", ".join(f"{k} {v.image_size} px x {v.epochs} epochs" for k, v in SIZES.items())
    p = parser(__doc__.split("\n")[0], sizes=SIZES, sizes_help=f"{sizes} (tiny: smoke only)")
    p.add_argument("--epochs", type=int, help="epochs per trial (default: the size's)")
    p.add_argument("--seeds", type=int, default=1, help="training seeds, one pair each (1)")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results", help="table folder")
    p.add_argument("--keep", type=Path, help="keep both experiments under this folder")
    args = p.parse_args(argv)
    for flag in ("epochs", "seeds"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            p.error(f"--{flag} must be at least 1, got {getattr(args, flag)}")
    device = setup(args)
    size = SIZES[args.size]
    if args.epochs is not None:
        size = Size(size.image_size, args.epochs, size.max_train_batches, size.data)
    results = Results("seed_vs_sweep", args, device, argv)
    budget = 9 * size.epochs  # epochs: the hand study's 9 runs, each trained to the end
    placement = placement_for(device)
    storage = Path(args.keep or tempfile.mkdtemp(prefix="cxr-bench-svs-")).resolve()
    temp_dir = start_ray(num_cpus=os.cpu_count() or 1)
    pairs = []
    try:
        for seed in range(args.seeds):
            pairs.append(run_pair(size, budget, storage / f"seed{seed}", placement, seed, device))
    finally:
        stop_ray(temp_dir)
        if args.keep is None:
            shutil.rmtree(storage, ignore_errors=True)
    report(results, args, size, budget, pairs)
    return 0


def run_pair(
    size: Size, budget: int, storage: Path, placement: dict[str, Any], seed: int, device: Any
) -> dict[str, Any]:
    """Both sides under one training seed, each side's best evaluated on test."""
    seed_dir, seed_spend = run_side(
        "hand_study", SEED_SPACE, size, budget, storage, placement, seed
    )
    sweep_dir, sweep_spend = run_side("sweep", SWEEP_SPACE, size, budget, storage, placement, seed)
    return {
        "seed": seed,
        "hand_study": evaluate_best(seed_dir, device.type),
        "sweep": evaluate_best(sweep_dir, device.type),
        "spend": {"hand study": seed_spend, "sweep": sweep_spend},
    }


def per_seed(pairs: list[dict[str, Any]]) -> str:
    """One line per seed: each side's best on validation and its test accuracy without TTA."""
    lines = [
        "| seed | hand study val | sweep val | hand study test acc | sweep test acc "
        "| McNemar (no TTA) |",
        "|---|---|---|---|---|---|",
    ]
    for pair in pairs:
        row = compare(pair["hand_study"], pair["sweep"])[0]
        m = row["mcnemar"]
        lines.append(
            f"| {pair['seed']} | {pair['hand_study']['val_value']:.3f} "
            f"| {pair['sweep']['val_value']:.3f} | {row['seed_acc'].format()} "
            f"| {row['sweep_acc'].format()} "
            f"| {m.wrong_to_right} fixed / {m.right_to_wrong} broken, p = {m.pvalue:.3g} |"
        )
    return "\n".join(lines) + "\n"


def total_spend(pairs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each side's trials, epochs, trial CPU-seconds and wall time summed over seeds."""
    keys = ("trials", "epochs", "trial_cpu_seconds", "wall_s")
    return {
        side: {key: sum(pair["spend"][side][key] for pair in pairs) for key in keys}
        for side in ("hand study", "sweep")
    }


def report(
    results: Results, args: Any, size: Size, budget: int, pairs: list[dict[str, Any]]
) -> None:
    """Print the pooled table, the per-seed lines and the verdict; keep every figure in the
    JSON and the text as markdown."""
    rows = compare(pool([p["hand_study"] for p in pairs]), pool([p["sweep"] for p in pairs]))
    text = table(rows, total_spend(pairs)) + "\n" + per_seed(pairs) + "\n"
    text += "".join(bests(pair["hand_study"], pair["sweep"]) for pair in pairs)
    said = verdict(rows)
    print(text + "\n" + said, flush=True)
    for pair in pairs:
        name = f"seed{pair['seed']}"
        for side in ("hand_study", "sweep"):
            best = {k: v for k, v in pair[side].items() if k not in ("scored", "test_paths")}
            results.figure(f"{name}.{side}.best", best)
        results.figure(f"{name}.spent", pair["spend"])
        results.figure(f"{name}.comparison", as_json(compare(pair["hand_study"], pair["sweep"])))
    results.figure("size", vars(size) | {"epoch_budget": budget, "seeds": len(pairs)})
    results.figure("comparison", as_json(rows))
    results.figure("verdict", said)
    first = rows[0]
    results.ratio(
        "sweep_minus_seed_test_acc",
        first["sweep_acc"].value - first["seed_acc"].value,
        "> 0, McNemar p < 0.05",
        f"no TTA, {len(pairs)} seed(s), n = {first['n_test']}, p = {first['mcnemar'].pvalue:.3g}",
    )
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / f"seed_vs_sweep-{args.size}.md", text + "\n" + said + "\n")
    if results.json_path is None:
        results.json_path = args.out / f"seed_vs_sweep-{args.size}.json"
    results.save()


if __name__ == "__main__":
    import sys

    sys.exit(main())
