"""The command-line parsers of `trainables.train`, `.models` and `.phantom`, kept apart from
those modules (torch, or numpy and PIL) so `cxr-tune train --help` answers in a blink."""

from __future__ import annotations

import argparse
from pathlib import Path

from cxr_tune import prog
from trainables.vocab import PHANTOM_PRESETS


def train_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog("trainables.train"),
        description="Train one TrialConfig without Ray and print a line per epoch.",
    )
    parser.add_argument(
        "--config", required=True, type=Path, help="a JSON file of TrialConfig fields"
    )
    parser.add_argument(
        "--data", help="override cfg.data: an image folder, chest_xray, phantom:small|full"
    )
    parser.add_argument("--epochs", type=int, help="override cfg.epochs")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    parser.add_argument("--out", type=Path, help="keep the last checkpoint and history.json here")
    return parser


def models_parser() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(
        prog=prog("trainables.models"),
        description="Print the model registry with parameter counts at 256 px.",
    )


def phantom_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog("trainables.phantom"),
        description=(
            "Generate the synthetic chest X-ray phantom (NORMAL / BACTERIA / VIRAL) as an image "
            "folder OUT/{train,test}/<CLASS>/*.png|jpg plus OUT/metadata.csv. Deterministic for "
            "(preset, seed, confounder)."
        ),
    )
    parser.add_argument("--out", required=True, type=Path, help="new or empty output folder")
    parser.add_argument(
        "--preset",
        default="small",
        metavar="{" + ",".join(PHANTOM_PRESETS) + "}",
        help="dataset size: small (480 images, seconds) or full (5,560 images, about 300 MB); "
        "default small",
    )
    parser.add_argument("--seed", type=int, default=0, help="dataset seed (default 0)")
    parser.add_argument(
        "--confounder",
        action="store_true",
        help="plant a bright square tag on 80%% of VIRAL train images (5%% of the others, "
        "and class-independent in test) for shortcut audits",
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=None,
        help="worker processes (default: 1 for small, the CPU count up to 8 for full); "
        "the files are identical whatever the count",
    )
    return parser


def cache_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog("trainables.decode_cache"),
        description=(
            "List or prune the decode cache of this machine ($CXR_TUNE_CACHE/decoded): every "
            "dataset setting decoded once, memory-mapped by all trials on the node."
        ),
    )
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("list", help="each cached dataset: root, image size, images, bytes, last use")
    prune = sub.add_parser(
        "prune",
        help="remove leftovers of killed builds, unused arrays and other versions; with "
        "--older-than or --all also cached datasets",
    )
    prune.add_argument(
        "--older-than",
        type=float,
        metavar="DAYS",
        help="also remove dataset settings not loaded for DAYS days (they decode again)",
    )
    prune.add_argument("--all", action="store_true", help="remove the whole decode cache")
    return parser
