"""The per-trial cap (`capped`, in the trial process): the allocator limited to the trial's
share, an out-of-memory turned into `GpuMemoryError` with the larger need recorded; and the
retry at a larger share that need gives (`retry_share`, `oom_retry_callback`, in the driver)."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from search.gpu_memory.measurement import (
    CONTEXT_FALLBACK_BYTES,
    GIB,
    MIB,
    GpuMemoryError,
    Measurement,
    MemoryKey,
    key_for,
    need_bytes,
)
from search.gpu_memory.shares import allocator_cap, data_budget, share_for
from search.gpu_memory.table import MemoryTable
from trainables.config import TrialConfig

OOM_GROWTH = 1.25  # after an OOM the recorded need is the observed peak times this
NEED_TAG = "cxr-gpu-need-bytes"  # machine-readable need in the OOM message, for the driver


@contextlib.contextmanager
def capped(
    cfg: TrialConfig,
    share: float | None,
    table: MemoryTable | None = None,
    train_images: int = 0,
) -> Iterator[int | None]:
    """Limit this process's CUDA allocator to its `share` of the card while the block runs; turn
    an out-of-memory error into `GpuMemoryError` and record the larger need for the retry.
    Yields the bytes of the share left for the train split (`data_budget`) when the model's need
    was measured, else None (the trial then keeps it only within half the card's free memory)."""
    import torch

    if share is None or not torch.cuda.is_available():
        yield None
        return
    share = min(share, 1.0)  # a trial given several GPUs trains on one of them
    device = torch.cuda.current_device()
    props = torch.cuda.get_device_properties(device)
    table = table if table is not None else MemoryTable.load()
    key = key_for(cfg, props.name, props.total_memory, train_images)
    m, _ = table.lookup(key)
    if m is not None and need_bytes(m) > props.total_memory:
        raise GpuMemoryError(refusal(key, need_bytes(m)))
    context = m.context_bytes if m is not None else CONTEXT_FALLBACK_BYTES
    cap = allocator_cap(share, context, props.total_memory)
    torch.cuda.set_per_process_memory_fraction(cap, device)
    try:
        yield None if m is None else data_budget(share, need_bytes(m), props.total_memory)
    except torch.cuda.OutOfMemoryError as err:
        observed = torch.cuda.max_memory_reserved(device) + requested_bytes(str(err))
        grown = grown_measurement(key, m, observed, context)
        table.record(grown)
        torch.cuda.empty_cache()
        raise GpuMemoryError(oom_message(key, share, cap, m, grown)) from err
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, device)  # a reused actor starts clean


def requested_bytes(message: str) -> int:
    """The allocation an out-of-memory message says failed ("Tried to allocate 1.50 GiB")."""
    found = re.search(r"Tried to allocate ([\d.]+) (B|KiB|MiB|GiB|TiB)", message)
    if not found:
        return 0
    units = {"B": 1, "KiB": 2**10, "MiB": MIB, "GiB": GIB, "TiB": 2**40}
    return int(float(found.group(1)) * units[found.group(2)])


def grown_measurement(
    key: MemoryKey, old: Measurement | None, observed: int, context: int
) -> Measurement:
    """The table entry after a trial of `key` ran out at `observed` reserved bytes."""
    reserved = int(max(observed, old.reserved_bytes if old else 0) * OOM_GROWTH)
    if old is not None and old.key == key:
        return replace(old, reserved_bytes=reserved, source="oom")
    return Measurement(key, reserved, reserved, context, "oom", detail="grown after an OOM")


def oom_message(
    key: MemoryKey, share: float, cap: float, old: Measurement | None, grown: Measurement
) -> str:
    card = key.card_bytes
    measured = f"{need_bytes(old) / GIB:.1f} GiB" if old is not None else "not measured"
    new = need_bytes(grown)
    then = (
        f"does not fit a whole card: {refusal(key, new)}"
        if new > card
        else f"a retry asks for share {share_for(new, card):g}"
    )
    return (
        f"out of GPU memory at share {share:g} (measured need {measured}; the allocator was "
        f"capped at {cap * card / GIB:.1f} GiB of the {card / GIB:.0f} GiB {key.card}): "
        f"{key.model} batch {key.batch_size} at {key.image_size} px now records "
        f"{new / GIB:.1f} GiB, so {then} [{NEED_TAG}={new}]"
    )


def refusal(key: MemoryKey, need: int) -> str:
    return (
        f"{key.model} batch {key.batch_size} at {key.image_size} px needs {need / GIB:.1f} GiB, "
        f"more than a whole {key.card} ({key.card_bytes / GIB:.1f} GiB): refused; lower "
        f"batch_size or image_size"
    )


# --- the retry at a larger share (in the driver) ----------------------------------------------


def retry_share(error_text: str, current: float, card_bytes: int) -> float | None:
    """The share a failed trial's retry asks for, from the need its OOM message recorded; None
    when the error was not an out-of-memory of this module. Never above one card."""
    found = re.findall(rf"\[{NEED_TAG}=(\d+)\]", error_text)
    if not found or card_bytes <= 0:
        return None
    need = int(found[-1])
    return min(1.0, max(current, share_for(need, card_bytes)))


def oom_retry_callback(cpus_per_trial: float, card_bytes: int) -> Any:
    """A Ray Tune callback: when Ray requeues a trial that ran out of its share, ask for the
    larger share before it restarts (the trial is PENDING again in `on_trial_recover`)."""
    from ray import tune

    class RetryAtLargerShare(tune.Callback):
        def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            path = getattr(trial, "error_file", None)
            text = Path(path).read_text() if path and Path(path).is_file() else ""
            current = float(trial.placement_group_factory.required_resources.get("GPU", 0.0))
            share = retry_share(text, current, card_bytes)
            if share is not None and share > current:
                trial.update_resources({"CPU": cpus_per_trial, "GPU": share})
                print(f"{trial.trial_id}: out of GPU memory; retrying at share {share:g}")

    return RetryAtLargerShare()
