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
