"""Goal 6: does torch.compile pay for trials of a few epochs, and does a larger batch with a
linearly scaled learning rate?

Side by side in one run, each a real `trainables.train.train` of a few epochs on the same data:

- compile: `compile=False` against `compile=True`, wall time of the whole trial (compilation and
  any recompilation for a short last batch included) and steady epochs (after the first), with
  an empty inductor cache (a model's first trial on a machine) and a warm one (later trials);
- batch: the base batch and lr against `--scale` times the batch with `--scale` times the lr
  (the linear scaling rule), as time to reach the validation accuracy the base run reaches.

    python -m bench.compile_batch --size small     # CPU: 64 px, simple_cnn_10m, 3 + 6 epochs
    python -m bench.compile_batch --size full      # GPU: 256 px, bf16
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import replace
from typing import Any

from bench.common import Results, median, note, parser, setup
from trainables.config import TrialConfig
from trainables.data import Dataset, load_for_config
from trainables.train import train

PROFILES: dict[str, dict[str, Any]] = {
    "tiny": {
        "data": "phantom:small",
        "image_size": 32,
        "model": "simple_cnn_10m",
        "batch_size": 16,
        "lr": 1e-3,
        "compile_epochs": 2,
        "compile_batches": 1,
        "batch_epochs": 1,
        "batch_batches": 4,  # steps per epoch at the base batch (0: full epochs)
    },
    "small": {
        "data": "phantom:small",
        "image_size": 64,
        "model": "simple_cnn_10m",
        "batch_size": 32,
        "lr": 1e-3,
        "compile_epochs": 3,
        "compile_batches": 4,  # steps per epoch of the compile comparison
        "batch_epochs": 5,
        "batch_batches": 0,
    },
    "full": {
        "data": "phantom:full",
        "image_size": 256,
        "model": "simple_cnn_10m",
        "batch_size": 32,
        "lr": 1e-3,
        "compile_epochs": 4,
        "compile_batches": 0,  # full epochs (a short last batch may trigger a recompile)
        "batch_epochs": 10,
        "batch_batches": 0,
    },
}
TOLERANCE = 0.01  # "reached" = within one point of the base run's best validation accuracy


def run_trial(cfg: TrialConfig, data: Dataset, device: Any) -> tuple[float, list[dict[str, float]]]:
    """(wall seconds of the whole trial, per-epoch metrics)."""
    history: list[dict[str, float]] = []
    started = time.perf_counter()
    train(cfg, lambda metrics, _ckpt: history.append(dict(metrics)), dataset=data, device=device)
    return time.perf_counter() - started, history


def compare_compile(
    base: TrialConfig, data: Dataset, device: Any, epochs: int, batches: int, results: Results
) -> None:
    """compile off, then on with an empty inductor cache (the first trial of a model on a
    machine), then on again with that cache warm (every later trial of the same model, batch
    and image size on the machine: inductor caches compiled graphs on disk)."""
    import torch._dynamo

    cfg = replace(base, epochs=epochs, max_train_batches=batches)
    off_runs = [run_trial(replace(cfg, compile=False), data, device)]
    runs = {}
    with tempfile.TemporaryDirectory(prefix="cxr-bench-inductor-") as cache:
        previous = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache  # read when inductor first needs it
        try:
            for kind in ("cold", "warm"):
                torch._dynamo.reset()  # in-memory graphs go; only the disk cache remains
                torch._dynamo.utils.counters.clear()
                wall, hist = run_trial(replace(cfg, compile=True), data, device)
                graphs = int(torch._dynamo.utils.counters["stats"].get("unique_graphs", 0))
                runs[kind] = (wall, hist, graphs)
        finally:
            if previous is None:
                os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
            else:
                os.environ["TORCHINDUCTOR_CACHE_DIR"] = previous
    # Uncompiled again after the compiled runs; the faster of the two counts (other processes
    # on a shared machine only ever add time, and a slow baseline would flatter compile).
    off_runs.append(run_trial(replace(cfg, compile=False), data, device))
    off_wall, off = min(off_runs, key=lambda run: run[0])
    off_epoch = median([h["train_time"] for h in off[1:]])
    figures: dict[str, Any] = {
        "epochs": epochs,
        "steps_per_epoch": batches or "full epoch",
        "off_wall_s": off_wall,
        "off_walls_s": [run[0] for run in off_runs],
        "off_train_time_per_epoch": [h["train_time"] for h in off],
    }
    for kind, (wall, hist, graphs) in runs.items():
        on_epoch = median([h["train_time"] for h in hist[1:]])
        cost = hist[0]["train_time"] - on_epoch  # seconds the first compiled epoch paid extra
        saving = off_epoch - on_epoch  # seconds per steady epoch
        break_even = cost / saving if saving > 0 else float("inf")
        figures[kind] = {
            "wall_s": wall,
            "train_time_per_epoch": [h["train_time"] for h in hist],
            "compile_seconds": cost,
            "break_even_epochs": break_even,
            "compiled_graphs": graphs,
        }
        note(
            f"compile on, {kind} cache: {wall:.1f} s for {epochs} epochs against {off_wall:.1f} s "
            f"off (first epoch {hist[0]['train_time']:.1f} s, steady {on_epoch:.2f} s vs "
            f"{off_epoch:.2f} s; {graphs} graphs compiled)"
        )
        results.ratio(
            f"compile.trial_speedup_{kind}_cache",
            off_wall / wall,
            "> 1 pays",
            f"whole {epochs}-epoch trial, compilation included ({cost:.1f} s); steady epochs "
            f"{off_epoch / on_epoch:.2f}x faster, paid back after {break_even:.1f} epochs",
        )
    results.figure("compile", figures)


def reached(history: list[dict[str, float]], target: float) -> tuple[float | None, int | None]:
    """(seconds, epoch) when val_acc first reached `target`, else (None, None). Seconds are the
    epochs needed times the run's fastest epoch (training + validation): the two runs are timed
    one after the other, and on a shared machine a busy moment would otherwise decide."""
    fastest = min(h["epoch_time"] for h in history)
    for h in history:
        if h["val_acc"] >= target:
            return int(h["epoch"]) * fastest, int(h["epoch"])
    return None, None


def compare_batch(
    base: TrialConfig,
    data: Dataset,
    device: Any,
    epochs: int,
    batches: int,
    scale: int,
    results: Results,
) -> None:
    cfg = replace(base, epochs=epochs, max_train_batches=batches)
    # The same images per epoch at both batch sizes.
    large = replace(
        cfg,
        batch_size=cfg.batch_size * scale,
        lr=cfg.lr * scale,
        max_train_batches=max(1, batches // scale) if batches else 0,
    )
    _, small_hist = run_trial(cfg, data, device)
    _, large_hist = run_trial(large, data, device)
    best_small = max(h["val_acc"] for h in small_hist)
    best_large = max(h["val_acc"] for h in large_hist)
    target = best_small - TOLERANCE
    t_small, e_small = reached(small_hist, target)
    t_large, e_large = reached(large_hist, target)
    rate = [median([h["train_images_per_s"] for h in hist]) for hist in (small_hist, large_hist)]
    results.figure(
        "batch",
        {
            "base": {"batch_size": cfg.batch_size, "lr": cfg.lr, "history": small_hist},
            "large": {"batch_size": large.batch_size, "lr": large.lr, "history": large_hist},
            "target_val_acc": target,
            "seconds_to_target": [t_small, t_large],
            "epochs_to_target": [e_small, e_large],
        },
    )
    note(
        f"batch {cfg.batch_size} lr {cfg.lr:g}: best val_acc {best_small:.3f}, "
        f"{rate[0]:,.0f} img/s; batch {large.batch_size} lr {large.lr:g}: best {best_large:.3f}, "
        f"{rate[1]:,.0f} img/s; target {target:.3f} reached after "
        f"{_fmt(t_small, e_small)} vs {_fmt(t_large, e_large)}"
    )
    results.ratio(
        "batch.throughput_ratio",
        rate[1] / rate[0],
        detail=f"training img/s at batch {large.batch_size} over batch {cfg.batch_size}",
    )
    if t_large is None:
        results.ratio(
            "batch.time_to_accuracy_speedup",
            0.0,
            "> 1 pays",
            f"batch {large.batch_size} never reached val_acc {target:.3f} in {epochs} epochs "
            f"(best {best_large:.3f}); 0 means never",
        )
    else:
        results.ratio(
            "batch.time_to_accuracy_speedup",
            t_small / t_large,
            "> 1 pays",
            f"epochs x fastest epoch to val_acc >= {target:.3f}: {t_small:.1f} s at batch "
            f"{cfg.batch_size}, "
            f"{t_large:.1f} s at batch {large.batch_size} (lr x{scale})",
        )


def _fmt(seconds: float | None, epoch: int | None) -> str:
    return "never" if seconds is None else f"{seconds:.1f} s (epoch {epoch})"


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--compile-epochs", type=int, help="epochs of each compile on/off trial")
    p.add_argument("--batch-epochs", type=int, help="epochs of each batch-size trial")
    p.add_argument("--scale", type=int, default=4, help="batch and lr multiplier (default 4)")
    p.add_argument("--skip", choices=("compile", "batch"), help="leave one comparison out")
    args = p.parse_args(argv)
    device = setup(args)
    prof = PROFILES[args.size]
    compile_epochs = args.compile_epochs or prof["compile_epochs"]
    batch_epochs = args.batch_epochs or prof["batch_epochs"]
    if compile_epochs < 2 or batch_epochs < 1 or args.scale < 2:
        raise ValueError("--compile-epochs must be >= 2, --batch-epochs >= 1, --scale >= 2")
    base = TrialConfig(
        model=prof["model"],
        data=prof["data"],
        image_size=prof["image_size"],
        batch_size=prof["batch_size"],
        lr=prof["lr"],
        balance="oversample",
        augment="seed",
        checkpoint_every=100000,  # only the last epoch saves; this measures training
    )
    data = load_for_config(base)
    note(
        f"{base.model} at {base.image_size} px on {device}: {len(data.train)} train / "
        f"{len(data.val)} val images"
    )
    results = Results("compile_batch", args, device, argv)
    if args.skip != "compile":
        compare_compile(base, data, device, compile_epochs, prof["compile_batches"], results)
    if args.skip != "batch":
        compare_batch(base, data, device, batch_epochs, prof["batch_batches"], args.scale, results)
    results.save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
