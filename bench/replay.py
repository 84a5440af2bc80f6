"""Searchers measured without retraining: learning curves recorded once, replayed many times.

    python -m bench.replay record --size small   # trains the table (configs x seeds x epochs)
    python -m bench.replay replay --size small   # every searcher + ASHA replayed against it

`record` trains configurations of `bench/spaces/replay_cpu.py` with the product's own training
loop (`trainables.train`, no Ray): the space's random samples plus the hand study's settings
(`HAND_SETTINGS`), each with several training seeds, every epoch's validation metric written to
`bench/results/replay_curves-<size>.csv` (one row per config, seed and epoch).

`replay` runs each sampler of the product (`search.tuner.build_sampler`: TPE, GP, random) with
ASHA (`trainables.experiment.asha_milestones`, Ray's cut-off rule: continue when at least the
(1 - 1/rf) quantile of the values recorded at the rung before it) on `workers` simulated
workers, for the epochs the hand study spends (its settings x MAX_EPOCHS). A proposed
configuration trains as its nearest recorded one (same categorical values first, then the
closest numbers on a log scale), with one of its recorded seeds drawn at random, so the noise a
real sweep meets is replayed too. The score of a replay is the *true* value (mean over seeds)
of the configuration and epoch the searcher would export (its best observed epoch): what a
re-run would give, not the lucky draw that picked it. Each arm is replayed `--repeats` times;
the table gives the mean with a 95 % bootstrap interval, beside the hand study's settings
replayed the same way (one seed drawn per setting). TPE and GP are also replayed with the
space's priors (`define_prior`: the learning rate within a decade of the study's; the study's
recipe and its neighbours enqueued first), the way spaces/transfer.py searches.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import REPO, Results, note, parser, setup

SPACE = REPO / "bench" / "spaces" / "replay_cpu.py"
SIZES: dict[str, dict[str, Any]] = {
    # tiny: the smoke test's plumbing (seconds); small: the CPU table (about half an hour).
    # hand: how many of HAND_SETTINGS (all 8 at the CPU size).
    "tiny": {
        "hand": 2,
        "configs": 1,
        "seeds": 2,
        "epochs": 2,
        "image_size": 32,
        "max_train_batches": 1,
    },
    "small": {
        "hand": 8,
        "configs": 24,
        "seeds": 3,
        "epochs": 5,
        "image_size": 32,
        "max_train_batches": 8,
    },
}
SAMPLER_ARMS = ("random", "tpe", "gp")
WORKERS = 2  # trials at once, as the CPU profile's sweep
REPEATS = 200  # replays per arm
COLUMNS = ("config", "kind", "seed", "epoch", "value", "params")


@dataclass(frozen=True)
class Table:
    """Learning curves: `curves[c, s, e]` is config c's metric after epoch e + 1 under seed s."""

    params: list[dict[str, Any]]
    kinds: list[str]  # "hand" or "sampled"
    curves: np.ndarray
    mode: str = "max"

    @property
    def epochs(self) -> int:
        return self.curves.shape[2]

    def hand(self) -> list[int]:
        return [c for c, kind in enumerate(self.kinds) if kind == "hand"]

    def true_value(self, config: int, epoch: int) -> float:
        """The mean over seeds after `epoch` (1-based): what a re-run of it would give."""
        return float(np.nanmean(self.curves[config, :, epoch - 1]))

    def nearest(self, params: dict[str, Any]) -> int:
        """The recorded configuration closest to `params`: fewest categorical differences, then
        the smallest distance of the floats on a log10 scale, each over the table's range."""
        scores = [_distance(params, p, self._ranges) for p in self.params]
        return int(np.argmin(scores))

    @property
    def _ranges(self) -> dict[str, float]:
        spans = {}
        for name in {k for p in self.params for k, v in p.items() if _is_number(v)}:
            logs = [math.log10(p[name]) for p in self.params if _is_number(p.get(name))]
            spans[name] = max(max(logs) - min(logs), 1e-9)
        return spans


def _is_number(value: Any) -> bool:
    """A float on a log scale (lr, weight decay); integers and strings are categories here."""
    return isinstance(value, float) and value > 0


def _distance(a: dict[str, Any], b: dict[str, Any], spans: dict[str, float]) -> float:
    mismatched = sum(
        a.get(k) != b.get(k) for k in set(a) | set(b) if k not in spans
    )  # categorical names (and names only one side has)
    near = sum(
        abs(math.log10(a[k]) - math.log10(b[k])) / spans[k]
        for k in spans
        if _is_number(a.get(k)) and _is_number(b.get(k))
    )
    return mismatched * 1e3 + near  # a category outweighs any numeric distance


def read_table(path: Path, mode: str = "max") -> Table:
    """The table `record` wrote (rows in any order; a missing epoch stays NaN)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or set(COLUMNS) - set(rows[0]):
        raise ValueError(f"{path}: expected columns {list(COLUMNS)}")
    configs = sorted({int(r["config"]) for r in rows})
    seeds = sorted({int(r["seed"]) for r in rows})
    epochs = max(int(r["epoch"]) for r in rows)
    curves = np.full((len(configs), len(seeds), epochs), np.nan)
    params: dict[int, dict[str, Any]] = {}
    kinds: dict[int, str] = {}
    for r in rows:
        c = int(r["config"])
        curves[configs.index(c), seeds.index(int(r["seed"])), int(r["epoch"]) - 1] = float(
            r["value"]
        )
        params[c], kinds[c] = json.loads(r["params"]), r["kind"]
    return Table([params[c] for c in configs], [kinds[c] for c in configs], curves, mode)


# --- the replay --------------------------------------------------------------------------------


@dataclass
class _Running:
    trial: Any  # an Optuna trial
    config: int
    seed: int
    epoch: int = 0
    values: list[float] = field(default_factory=list)


@dataclass
class _Incumbent:
    """The best observed (config, epoch) so far: what an export would pick."""

    observed: float = -math.inf
    true: float = math.nan
    trace: list[tuple[int, float]] = field(default_factory=list)

    def offer(self, table: Table, run: _Running, value: float, spent: int) -> None:
        signed = value if table.mode == "max" else -value
        if signed > self.observed:
            self.observed, self.true = signed, table.true_value(run.config, run.epoch)
        self.trace.append((spent, self.true))


def asha_stops(rung: list[float], value: float, reduction_factor: int) -> bool:
    """Ray's ASHA at a rung: stop when below the (1 - 1/rf) quantile of the values recorded
    there before this one (the first trial at a rung always continues)."""
    stop = bool(rung) and value < np.nanpercentile(rung, (1 - 1 / reduction_factor) * 100)
    rung.append(value)
    return stop


def replay_search(
    table: Table,
    sampler: Any,
    define: Callable[[Any], Any],
    *,
    budget: int,
    grace: int,
    reduction_factor: int,
    workers: int = WORKERS,
    seed: int = 0,
    points: Sequence[dict[str, Any]] = (),
) -> _Incumbent:
    """One replay of a sampler + ASHA for `budget` epochs on `workers` simulated workers."""
    import optuna

    from trainables.experiment import asha_milestones

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    direction = "maximize" if table.mode == "max" else "minimize"
    study = optuna.create_study(direction=direction, sampler=sampler)
    for point in points:
        study.enqueue_trial(point)
    rungs = {r: [] for r in asha_milestones(grace, reduction_factor, table.epochs)}
    rng, best, running, spent = np.random.default_rng(seed), _Incumbent(), [], 0
    while spent < budget:
        while len(running) < workers:
            trial = study.ask()
            define(trial)
            config = table.nearest(trial.params)
            running.append(_Running(trial, config, int(rng.integers(table.curves.shape[1]))))
        for run in list(running):
            if spent >= budget:
                break
            run.epoch += 1
            spent += 1
            value = float(table.curves[run.config, run.seed, run.epoch - 1])
            run.values.append(value)
            run.trial.report(value, run.epoch)
            best.offer(table, run, value, spent)
            _advance(study, run, rungs, table, reduction_factor, running)
    return best


def _advance(study, run, rungs, table, reduction_factor, running) -> None:
    """Tell Optuna a trial's end: COMPLETE with its best epoch at MAX_EPOCHS (the product's
    rule), PRUNED when ASHA stops it at a rung."""
    from optuna.trial import TrialState

    signed = run.values[-1] if table.mode == "max" else -run.values[-1]
    if run.epoch >= table.epochs:
        pick = max if table.mode == "max" else min
        study.tell(run.trial, pick(run.values))
        running.remove(run)
    elif run.epoch in rungs and asha_stops(rungs[run.epoch], signed, reduction_factor):
        study.tell(run.trial, state=TrialState.PRUNED)
        running.remove(run)


def replay_hand(table: Table, seed: int = 0) -> _Incumbent:
    """The hand study replayed: each of its settings trained to the end under a drawn seed."""
    rng, best, spent = np.random.default_rng(seed), _Incumbent(), 0
    for config in table.hand():
        run = _Running(None, config, int(rng.integers(table.curves.shape[1])))
        for run.epoch in range(1, table.epochs + 1):
            spent += 1
            best.offer(table, run, float(table.curves[config, run.seed, run.epoch - 1]), spent)
    return best


def summarize(finals: Sequence[float], seed: int = 0) -> dict[str, float]:
    """Mean of the replays' final true values with a 95 % percentile bootstrap interval."""
    from scipy.stats import bootstrap

    x = np.asarray(finals, dtype=float)
    if np.ptp(x) == 0:
        return {"mean": float(x[0]), "low": float(x[0]), "high": float(x[0]), "n": len(x)}
    ci = bootstrap((x,), np.mean, confidence_level=0.95, method="percentile", random_state=seed)
    return {
        "mean": float(x.mean()),
        "low": float(ci.confidence_interval.low),
        "high": float(ci.confidence_interval.high),
        "n": len(x),
    }


def make_sampler(name: str, seed: int, trials: int) -> Any:
    """The product's sampler `name` (`search.tuner.build_sampler`) for a sweep of `trials`."""
    from search.tuner import TunerSettings, build_sampler

    settings = TunerSettings(
        name="replay", storage="", metric="value", mode="max", max_epochs=1, grace_period=1,
        reduction_factor=2, num_samples=trials, seed=seed, search=name,
    )  # fmt: skip
    return build_sampler(settings)


@dataclass(frozen=True)
class Arm:
    """A searcher to replay: a product sampler over a space's define, with enqueued points."""

    sampler: str
    define: Callable[[Any], Any]
    points: Sequence[dict[str, Any]] = ()


def arms_of(module: Any) -> dict[str, Arm]:
    """Each sampler over the space as written, and TPE and GP with the space's priors
    (`define_prior`, `PRIOR_POINTS`) where it has them."""
    arms = {name: Arm(name, module.define) for name in SAMPLER_ARMS}
    if hasattr(module, "define_prior"):
        for name in ("tpe", "gp"):
            arms[f"{name} + priors"] = Arm(name, module.define_prior, module.PRIOR_POINTS)
    return arms


def replay_arms(table: Table, arms: dict[str, Arm], repeats: int, grace: int, rf: int) -> dict:
    """Every arm replayed `repeats` times at the hand study's compute; per arm its summary and
    P(arm > hand) over all pairs of replays."""
    budget = len(table.hand()) * table.epochs  # epochs the hand study spends
    trials = len(table.hand()) * rf  # about what ASHA affords in that budget
    finals: dict[str, list[float]] = {"hand study": [], **{a: [] for a in arms}}
    for rep in range(repeats):
        finals["hand study"].append(replay_hand(table, seed=rep).true)
        for label, arm in arms.items():
            best = replay_search(
                table, make_sampler(arm.sampler, rep, trials), arm.define, budget=budget,
                grace=grace, reduction_factor=rf, seed=rep, points=arm.points,
            )  # fmt: skip
            finals[label].append(best.true)
    hand = np.asarray(finals["hand study"])
    out = {}
    for arm, values in finals.items():
        x = np.asarray(values)
        beats = float(np.mean(x[:, None] > hand[None, :]) + 0.5 * np.mean(x[:, None] == hand))
        out[arm] = {**summarize(values), "p_beats_hand": beats}
    return {"budget_epochs": budget, "arms": out}


def record(size: str, out: Path, space: Path = SPACE) -> Path:
    """Train the table: the space's random samples and its HAND_SETTINGS, each under every
    seed, one row per epoch; the CSV is rewritten atomically after each configuration."""
    import torch

    from search.space import SpaceDefine, load_module
    from trainables.cache import atomic_write_text
    from trainables.config import TrialConfig
    from trainables.data import load_for_config
    from trainables.train import train

    spec, module = SIZES[size], load_module(space)
    configs = [("hand", p) for p in module.HAND_SETTINGS[: spec["hand"]]]
    configs += [("sampled", p) for p in _samples(SpaceDefine(space), spec["configs"])]
    run = {k: spec[k] for k in ("image_size", "max_train_batches", "epochs")}
    data, rows = None, []
    for c, (kind, params) in enumerate(configs):
        for seed in range(spec["seeds"]):
            cfg = TrialConfig.from_dict({**params, **run, "data": "phantom:small", "seed": seed})
            data = data or load_for_config(cfg)
            curve = _train_curve(train, cfg, data, module.METRIC)
            rows += [(c, kind, seed, e + 1, v, json.dumps(params)) for e, v in enumerate(curve)]
        atomic_write_text(out, _csv(rows))
        note(f"config {c + 1}/{len(configs)} {kind} {params}: {rows[-1][4]:.3f} (threads "
             f"{torch.get_num_threads()})")  # fmt: skip
    return out


def _train_curve(train: Callable, cfg: Any, data: Any, metric: str) -> list[float]:
    """The metric after each epoch of one training run."""
    curve: list[float] = []
    train(cfg, lambda metrics, _checkpoint=None: curve.append(metrics[metric]), dataset=data)
    return curve


def _samples(define: Callable, n: int, seed: int = 0) -> list[dict[str, Any]]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    out = []
    for _ in range(n):
        trial = study.ask()
        define(trial)
        out.append(dict(trial.params))
        study.tell(trial, 0.0)
    return out


def _csv(rows: list[tuple]) -> str:
    import io

    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(COLUMNS)
    writer.writerows(rows)
    return buf.getvalue()


def markdown(result: dict) -> str:
    lines = [
        f"budget: {result['budget_epochs']} epochs (the hand study's)",
        "",
        "| arm | mean true val score | 95 % interval | P(beats hand study) | replays |",
        "|---|---|---|---|---|",
    ]
    for arm, s in result["arms"].items():
        lines.append(
            f"| {arm} | {s['mean']:.4f} | [{s['low']:.4f}, {s['high']:.4f}] | "
            f"{s['p_beats_hand']:.2f} | {s['n']} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0], sizes=tuple(SIZES), sizes_help="tiny: plumbing; small: CPU")
    p.add_argument("step", choices=["record", "replay"])
    p.add_argument("--table", type=Path, help="default bench/results/replay_curves-<size>.csv")
    p.add_argument("--repeats", type=int, default=REPEATS)
    args = p.parse_args(argv)
    device = setup(args)
    table_path = args.table or REPO / "bench" / "results" / f"replay_curves-{args.size}.csv"
    if args.step == "record":
        note(f"wrote {record(args.size, table_path)}")
        return 0
    from search.space import load_module

    module = load_module(SPACE)
    table = read_table(table_path, module.MODE)
    result = replay_arms(
        table, arms_of(module), args.repeats, module.GRACE_PERIOD, module.REDUCTION_FACTOR
    )
    results = Results("replay", args, device, argv)
    for arm, s in result["arms"].items():
        results.figure(arm, s)
        if arm != "hand study":
            hand = result["arms"]["hand study"]["mean"]
            results.ratio(
                f"{arm}_over_hand", s["mean"] / hand, ">= 1", f"P(beats) {s['p_beats_hand']:.2f}"
            )
    results.figure("budget_epochs", result["budget_epochs"])
    print(markdown(result))
    results.save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
