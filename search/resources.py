"""How much of a machine each trial asks Ray for.

On GPU machines trials get a fractional GPU so small models share a card: what packing buys is
a GPU that stays busy through other trials' start-up, evaluation and checkpointing. The
fraction comes from the trial's peak training memory measured on this card when
`search/gpu_memory/` has measured it (its table in `$CXR_TUNE_CACHE/gpu_memory.json`: the
measured peak plus a margin, in eighths of a card, and each trial's allocator is capped to its
share). Only without a measurement (a machine without a GPU, or a shape not measured yet) the
fraction comes from the estimate below:

    fraction = clamp(ceil_to_quarter(need / card_bytes + margin), 0.25, 1.0)
    need = peak_bytes(model, batch, image_size) + data_bytes   (the split kept on the card)
         = peak_bytes(model, batch, image_size)                (streamed: it does not fit a card)
    peak_bytes = fixed_bytes[model] + per_image_bytes[model] * batch * (image_size / 256) ** 2

`data_bytes` is the train split's decoded size (images x image_size^2 bytes): a trial keeps it
on the card when it fits its share (`search.gpu_memory.keeps_data`), else streams batches.

`fixed_bytes` covers weights, gradients and Adam state (16 bytes per trainable parameter in
fp32) plus the CUDA context; `per_image_bytes` is the activation memory per 256x256 training
image under bf16 autocast. The figures in `PEAK_MEMORY` are estimates from parameter counts and
layer shapes, the fallback for shapes the measured table lacks. CPU-only machines run CPU
trials (no GPU key).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

from search.gpu_memory import (
    GIB,
    GpuMemoryError,
    MemoryTable,
    describe,
    keeps_data,
    key_for,
    measure,
    need_bytes,
    shape_name,
    share_for,
    space_configs,
    with_data,
    worst_case_configs,
)
from trainables.config import TrialConfig

MIB = 2**20
CUDA_CONTEXT_BYTES = 600 * MIB  # per process, on top of the model
MARGIN = 0.05  # share of the card kept free for allocator fragmentation
MIN_FRACTION = 0.25

# model -> (fixed bytes, activation bytes per 256 px training image). Estimates, see above.
PEAK_MEMORY: dict[str, tuple[int, int]] = {
    "simple_cnn": (135_000_000 * 16 + CUDA_CONTEXT_BYTES, 24 * MIB),
    "simple_cnn_10m": (10_100_000 * 16 + CUDA_CONTEXT_BYTES, 30 * MIB),
    "resnet18": (11_700_000 * 16 + CUDA_CONTEXT_BYTES, 45 * MIB),
    "resnet50": (26_000_000 * 16 + CUDA_CONTEXT_BYTES, 130 * MIB),
    "densenet121": (8_000_000 * 16 + CUDA_CONTEXT_BYTES, 160 * MIB),
}
DEFAULT_PEAK = (100_000_000 * 16 + CUDA_CONTEXT_BYTES, 160 * MIB)  # an unlisted model


def peak_bytes(model: str, batch_size: int, image_size: int) -> int:
    """Estimated peak GPU memory of one training trial, bytes."""
    fixed, per_image = PEAK_MEMORY.get(model, DEFAULT_PEAK)
    return int(fixed + per_image * batch_size * (image_size / 256) ** 2)


def gpu_fraction(
    model: str,
    batch_size: int,
    image_size: int,
    card_bytes: int,
    data_bytes: int = 0,
    placement: str = "auto",
) -> float:
    """The share of one card a trial asks for: a multiple of 1/4, at least 1/4, at most 1;
    with the train split's `data_bytes` when the trial keeps it on the card."""
    if card_bytes <= 0:
        raise ValueError(f"card_bytes must be positive, got {card_bytes!r}")
    peak = peak_bytes(model, batch_size, image_size)
    need = with_data(peak, data_bytes, card_bytes, placement) / card_bytes + MARGIN
    return min(1.0, max(MIN_FRACTION, math.ceil(need * 4) / 4))


def sized_share(
    config: dict[str, Any],
    card_bytes: int,
    memory: MemoryTable | None = None,
    train_images: int = 0,
) -> tuple[float, str]:
    """(GPU share, where it came from) for a trial config on a card of `card_bytes`: the measured
    table's figure ("measured", "upper bound", "oom") or the estimate ("estimate"). Never above
    one card: a shape too large for a card is refused by the measurement and by the trial."""
    table = memory if memory is not None else MemoryTable.load()
    key = key_for(config, None, card_bytes, train_images)
    placement = str(config.get("data_on_device", "auto"))
    m, how = table.lookup(key)
    if m is None:
        return (
            gpu_fraction(
                key.model, key.batch_size, key.image_size, card_bytes, key.data_bytes, placement
            ),
            "estimate",
        )
    need = with_data(need_bytes(m), key.data_bytes, card_bytes, placement)
    return min(1.0, share_for(need, card_bytes)), how


def trial_resources(
    cpus_per_trial: float,
    gpus_per_trial: float | None,
    card_bytes: int | None,
    memory: MemoryTable | None = None,
    train_images: int = 0,
) -> Callable[[dict[str, Any]], Any]:
    """A function of the trial config for `tune.with_resources` (a PlacementGroupFactory).

    `gpus_per_trial` None means "size it from the model" on GPU machines (`card_bytes` set);
    0 or `card_bytes` None means CPU trials. `memory` None reads the measured table when called.
    """

    def resources(config: dict[str, Any]) -> Any:
        from ray.tune.execution.placement_groups import PlacementGroupFactory

        return PlacementGroupFactory(
            [
                resource_request(
                    config, cpus_per_trial, gpus_per_trial, card_bytes, memory, train_images
                )
            ]
        )

    return resources


def resource_request(
    config: dict[str, Any],
    cpus_per_trial: float,
    gpus_per_trial: float | None,
    card_bytes: int | None,
    memory: MemoryTable | None = None,
    train_images: int = 0,
) -> dict[str, float]:
    bundle: dict[str, float] = {"CPU": cpus_per_trial}
    if gpus_per_trial is None and card_bytes:
        bundle["GPU"] = sized_share(config, card_bytes, memory, train_images)[0]
    elif gpus_per_trial:
        bundle["GPU"] = gpus_per_trial
    return bundle


# --- the driver hook --------------------------------------------------------------------------


def measure_before_packing(
    define: Callable[[Any], Any],
    card_bytes: int,
    *,
    budget_s: float = 120.0,
    log: Callable[[str], None] = print,
    train_images: int = 0,
) -> dict[str, Any]:
    """Before packing trials on this machine's GPU: measure every shape the space can choose
    that the table lacks (upper bounds first, then exact frozen settings, within `budget_s`
    seconds), refuse shapes that do not fit a whole card, and return the experiment record's
    `gpu_memory` entry (`memory_record`). `train_images`: the train split's size, part of every
    key. Without a local GPU it measures nothing."""
    import torch

    if not card_bytes or not torch.cuda.is_available():
        return {
            "source": "estimate",
            "why": "no local GPU: fractions from search/resources.py",
            "train_images": train_images,
        }
    props = torch.cuda.get_device_properties(0)
    table = MemoryTable.load()
    shapes = worst_case_configs(space_configs(define))
    started = time.monotonic()
    for cfg in shapes:
        key = key_for(cfg, props.name, props.total_memory, train_images)
        if table.exact(key) is not None:
            continue
        if time.monotonic() - started > budget_s:
            log(f"gpu memory: budget of {budget_s:.0f} s spent; {cfg.model} uses an upper bound")
            continue
        try:
            m = measure(cfg, table=table)
        except GpuMemoryError as err:  # the trial's cap still guards the card
            log(f"gpu memory: {shape_name(cfg)} not measured ({err}); packed from the estimate")
            continue
        log(f"gpu memory: {describe(m)}")
    record = memory_record(table, shapes, props.name, props.total_memory, train_images)
    too_large = [r for r in record["shapes"] if r["need_bytes"] > props.total_memory]
    if too_large:
        first = too_large[0]
        raise ValueError(
            f"{first['shape']} needs {first['need_bytes'] / GIB:.1f} GiB measured, more than a "
            f"whole {props.name} ({props.total_memory / GIB:.1f} GiB) even with the data "
            f"streamed: lower the space's batch_size or image_size"
        )
    return record


def memory_record(
    table: MemoryTable,
    shapes: Sequence[TrialConfig],
    card: str,
    card_bytes: int,
    train_images: int = 0,
) -> dict[str, Any]:
    """Which figure each shape of the sweep was packed from: for the experiment record."""
    rows = []
    for cfg in shapes:
        key = key_for(cfg, card, card_bytes, train_images)
        m, how = table.lookup(key)
        model = need_bytes(m) if m else peak_bytes(cfg.model, cfg.batch_size, cfg.image_size)
        need = with_data(model, key.data_bytes, card_bytes, cfg.data_on_device)
        share = (
            share_for(need, card_bytes)
            if m
            else gpu_fraction(cfg.model, cfg.batch_size, cfg.image_size, card_bytes, key.data_bytes)
        )
        rows.append(
            {
                "shape": shape_name(cfg),
                "source": how,
                "need_bytes": need,
                "model_bytes": model,
                "data_bytes": key.data_bytes,
                "data_on_card": keeps_data(model, key.data_bytes, card_bytes, cfg.data_on_device),
                "share": share,
            }
        )
    sources = {r["source"] for r in rows}
    return {
        "source": "measured" if sources <= {"measured", "upper bound", "oom"} else "mixed",
        "card": card,
        "card_bytes": card_bytes,
        "table": str(table.path or MemoryTable.default_path()),
        "train_images": train_images,
        "shapes": rows,
    }
