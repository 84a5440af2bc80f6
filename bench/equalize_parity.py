"""Where does histogram equalization belong: preprocessing (train and evaluate on equalized
images) or a random training augmentation (equalize a share p of training images, evaluate on
plain ones)? Trains each variant with the seed's recipe on the same data and seeds and prints
the best and last validation accuracy and macro precision.

    python -m bench.equalize_parity --epochs 10 --seeds 0 1 2 --threads 1 \
        --json bench/results/equalize_parity-small.json

Variants (`old` is main before the parity fix: equalize on every training image, never at
evaluation):
    none, geometric                 baselines without equalization
    eq_pre, eq_p05, eq_old          the `equalize` set: preprocessing / random p=0.5 / old
    seed_pre, seed_p05, seed_old    the `seed` set (equalize + rotate, hflip, shift), likewise
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import time
from pathlib import Path

import torch

from trainables.augment import AugmentSet, register_set
from trainables.config import TrialConfig
from trainables.data import load_for_config
from trainables.train import train

GEOMETRIC = (("rotate", 1.0), ("hflip", 1.0), ("shift", 1.0))
VARIANTS: dict[str, AugmentSet] = {
    "none": AugmentSet(),
    "geometric": AugmentSet((), GEOMETRIC),
    "eq_pre": AugmentSet(("equalize",)),
    "eq_p05": AugmentSet((), (("equalize", 0.5),)),
    "eq_old": AugmentSet((), (("equalize", 1.0),)),
    "seed_pre": AugmentSet(("equalize",), GEOMETRIC),
    "seed_p05": AugmentSet((), (("equalize", 0.5), *GEOMETRIC)),
    "seed_old": AugmentSet((), (("equalize", 1.0), *GEOMETRIC)),
}


def run_variant(name: str, seed: int, args: argparse.Namespace, data) -> dict[str, float]:
    key = f"bench_{name}"
    register_set(key, VARIANTS[name])  # registered for this process only
    cfg = TrialConfig(
        model="simple_cnn_10m",
        balance="oversample",
        augment=key,
        lr=1e-4,
        weight_decay=5e-5,
        batch_size=32,
        epochs=args.epochs,
        image_size=args.image_size,
        seed=seed,
        data="phantom:small",
        checkpoint_every=args.epochs,
    )
    history: list[dict[str, float]] = []
    started = time.perf_counter()
    train(cfg, lambda m, _ckpt: history.append(m), dataset=data, device="cpu")
    return {
        "best_val_acc": max(m["val_acc"] for m in history),
        "last_val_acc": history[-1]["val_acc"],
        "best_val_precision": max(m["val_precision"] for m in history),
        "last_val_precision": history[-1]["val_precision"],
        "seconds": time.perf_counter() - started,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    torch.set_num_threads(args.threads or (os.cpu_count() or 1))
    base = TrialConfig(image_size=args.image_size, data="phantom:small")
    data = load_for_config(base)
    majority = torch.bincount(data.val.labels).max().item() / len(data.val.labels)
    print(f"{len(data.train.labels)} train / {len(data.val.labels)} val, majority {majority:.3f}")
    rows = {}
    for name in args.variants:
        runs = [run_variant(name, s, args, data) for s in args.seeds]
        rows[name] = runs
        summary = " | ".join(
            f"{k} {statistics.mean(r[k] for r in runs):.3f}"
            f" ({', '.join(f'{r[k]:.3f}' for r in runs)})"
            for k in ("best_val_acc", "last_val_acc", "last_val_precision")
        )
        print(f"{name:10s} {summary} | {sum(r['seconds'] for r in runs):.0f} s", flush=True)
    if args.json:
        payload = {
            "command": "python -m bench.equalize_parity " + " ".join(os.sys.argv[1:]),
            "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "majority_val_acc": majority,
            "seeds": args.seeds,
            "epochs": args.epochs,
            "image_size": args.image_size,
            "runs": rows,
        }
        args.json.write_text(json.dumps(payload, indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
