"""Measured GPU memory per trial shape, the packing shares it gives, and the per-trial cap.

Ray's fractional GPUs are logical only: a trial can allocate past its share and take its
neighbours down (ray#3947, ray#5902). So on a GPU machine the driver first measures each model
the space can choose, at the space's largest batch and image size with the trial's precision and
frozen setting, with a few real training steps (the product's own `trainables.train` functions on
the real data) in a short-lived subprocess:

    python -m search.gpu_memory --config '{"model": "resnet18", "batch_size": 32, ...}'

It records `torch.cuda.max_memory_reserved()`, the process's CUDA context, the step, evaluation
and checkpoint-save times, and the card's name and total memory into `$CXR_TUNE_CACHE/
gpu_memory.json` (this module owns that file), keyed by all of those and by the train split's
decoded bytes (`MemoryKey.data_bytes`: a figure measured on a small set is never reused for a
large one). The measurement streams the training batches, so `reserved` is the model's own
need; the data is added by `with_data`:

    model = reserved + max(10% of reserved, 256 MiB) + context           (bytes on the card)
    need  = model + data_bytes when the split is kept on the card (`keeps_data`), else model
    share = ceil(need / card_bytes to a multiple of 1/8), at least 1/8   (what Ray is asked for)
    cap   = (share * card_bytes - context) / card_bytes                  (allocator fraction)

Each trial process limits its allocator to `cap` (`torch.cuda.set_per_process_memory_fraction`),
so a trial that needs more fails alone with "out of GPU memory at share f (measured need n GiB)";
the table then records the larger figure and Ray's retry asks for the larger share
(`oom_retry_callback`), or the trial is refused if it does not fit a whole card. Without a GPU
the estimates of `search/resources.py` remain the fallback; `search/resources.py` also runs the
measurement before packing, and its `memory_record` says which figure each shape was packed
from. `search/checkpoints.py` takes each trial's checkpoint cadence from the same measurement.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cxr_tune import prog
from search.space import SpaceDefine
from search.walk import walk
from trainables.cache import atomic_write_text, cache_root, file_lock
from trainables.config import TrialConfig

CACHE_FILE = "gpu_memory.json"
FORMAT_VERSION = 2  # 2: keys carry data_bytes; reserved measured with streamed batches
MIB = 2**20
GIB = 2**30
MARGIN_SHARE = 0.10  # of the measured peak: fragmentation over later epochs, other batch shapes
MARGIN_MIN_BYTES = 256 * MIB
SHARES_PER_CARD = 8  # Ray is asked for multiples of 1/8 of a card, at least 1/8
SHARE_STEP = 1 / SHARES_PER_CARD
OOM_GROWTH = 1.25  # after an OOM the recorded need is the observed peak times this
CONTEXT_FALLBACK_BYTES = 600 * MIB  # CUDA context per process when NVML cannot measure it
MEASURE_STEPS = 3  # timed training steps per measurement, after one warm-up step
MEASURE_TIMEOUT_S = 120.0  # seconds per measurement subprocess
NEED_TAG = "cxr-gpu-need-bytes"  # machine-readable need in the OOM message, for the driver
REPO = Path(__file__).resolve().parents[1]


class GpuMemoryError(RuntimeError):
    """A trial ran out of its GPU share, or cannot fit a whole card."""


# --- keys and the table ----------------------------------------------------------------------


@dataclass(frozen=True)
class MemoryKey:
    """Everything the measured peak depends on. `card` None matches any card of `card_bytes`."""

    model: str
    batch_size: int
    image_size: int  # pixels
    precision: str  # "bf16" or "fp32", as the trial runs on CUDA
    frozen_depth: int
    unfrozen_blocks: int
    compile: bool
    card: str | None
    card_bytes: int
    data_bytes: int = 0  # the train split's decoded bytes (images x image_size^2, uint8)

    def id(self) -> str:
        return "|".join(f"{f.name}={getattr(self, f.name)}" for f in dataclasses.fields(self))

    def same_card(self, other: MemoryKey) -> bool:
        names_match = self.card is None or other.card is None or self.card == other.card
        return names_match and self.card_bytes == other.card_bytes


# The TrialConfig fields a MemoryKey is made of (besides the card).
KEY_FIELDS = (
    "model",
    "batch_size",
    "image_size",
    "amp",
    "frozen_depth",
    "unfrozen_blocks",
    "compile",
)


def precision_of(amp: str) -> str:
    """The numerics a trial runs with on CUDA (`trainables.train.use_bf16`)."""
    return "fp32" if amp == "fp32" else "bf16"


def train_bytes(train_images: int, image_size: int) -> int:
    """Decoded bytes of a train split of `train_images` uint8 squares of `image_size` pixels."""
    return int(train_images) * int(image_size) ** 2


def key_for(
    config: TrialConfig | Mapping[str, Any],
    card: str | None,
    card_bytes: int,
    train_images: int = 0,
) -> MemoryKey:
    """The key of a trial config (a `TrialConfig` or Ray's dict; missing keys take the defaults)
    on a dataset whose train split holds `train_images` images."""
    if not isinstance(config, TrialConfig):
        base = TrialConfig()
        config = replace(base, **{k: v for k, v in config.items() if k in KEY_FIELDS})
    return MemoryKey(
        model=config.model,
        batch_size=int(config.batch_size),
        image_size=int(config.image_size),
        precision=precision_of(config.amp),
        frozen_depth=int(config.frozen_depth),
        unfrozen_blocks=int(config.unfrozen_blocks),
        compile=bool(config.compile),
        card=card,
        card_bytes=int(card_bytes),
        data_bytes=train_bytes(train_images, config.image_size),
    )


@dataclass(frozen=True)
class Measurement:
    key: MemoryKey
    reserved_bytes: int  # torch.cuda.max_memory_reserved() over the steps, evaluation, save
    allocated_bytes: int  # torch.cuda.max_memory_allocated()
    context_bytes: int  # the process's memory outside the allocator (CUDA context, kernels)
    source: str  # "measured", "oom" (grown after a trial ran out) or "too_large"
    step_s: float = 0.0  # seconds per training step at key.batch_size
    eval_s: float = 0.0  # seconds to evaluate the validation split
    save_s: float = 0.0  # seconds to save a checkpoint and copy it once (as Ray persists it)
    checkpoint_bytes: int = 0
    context_source: str = "nvml"  # or "fallback" (CONTEXT_FALLBACK_BYTES)
    detail: str = ""
    measured_at: str = ""  # UTC, ISO 8601

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["need_bytes"] = need_bytes(self)
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Measurement:
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in d.items() if k in names and k != "key"}
        return cls(key=MemoryKey(**d["key"]), **values)


def margin_bytes(reserved: int) -> int:
    return max(int(MARGIN_SHARE * reserved), MARGIN_MIN_BYTES)


def need_bytes(m: Measurement) -> int:
    """Bytes of the card one trial of this shape occupies, margin included."""
    return int(m.reserved_bytes + margin_bytes(m.reserved_bytes) + m.context_bytes)


def keeps_data(model_need: int, data_bytes: int, card_bytes: int, placement: str = "auto") -> bool:
    """Whether a trial keeps its train split on the card (`TrialConfig.data_on_device`): 'auto'
    when the model's need plus the split fit one card; otherwise batches stream from host memory
    and the share holds the model alone."""
    if placement != "auto":
        return placement == "resident"
    return model_need + data_bytes <= card_bytes


def with_data(model_need: int, data_bytes: int, card_bytes: int, placement: str = "auto") -> int:
    """Bytes of the card one trial occupies: the model's need, plus its data when kept there."""
    keep = keeps_data(model_need, data_bytes, card_bytes, placement)
    return int(model_need + (data_bytes if keep else 0))


def data_budget(share: float, model_need: int, card_bytes: int) -> int:
    """Bytes of a trial's share left for its train split after the model's measured need."""
    return max(0, int(share * card_bytes) - int(model_need))


def share_for(need: int, card_bytes: int) -> float:
    """The GPU share Ray is asked for: need over the card, up to a multiple of SHARE_STEP."""
    if card_bytes <= 0 or need < 0:
        raise ValueError(f"need ({need}) must be >= 0 and card_bytes ({card_bytes}) positive")
    steps = -(-int(need) * SHARES_PER_CARD // int(card_bytes))  # ceiling, in exact integers
    return max(1, steps) / SHARES_PER_CARD


def allocator_cap(share: float, context_bytes: int, card_bytes: int) -> float:
    """The fraction of the card this trial's allocator may reserve: its share minus the part of
    the share its CUDA context already occupies (the cap governs the allocator only)."""
    if not (0.0 < share <= 1.0):
        raise ValueError(f"share must be in (0, 1], got {share!r}")
    cap = (share * card_bytes - context_bytes) / card_bytes
    if cap <= 0:
        raise ValueError(
            f"a share of {share:g} of a {card_bytes / GIB:.1f} GiB card leaves nothing beyond "
            f"the {context_bytes / GIB:.2f} GiB CUDA context"
        )
    return cap


class MemoryTable:
    """The measured table in `$CXR_TUNE_CACHE/gpu_memory.json` (or `path`)."""

    def __init__(self, entries: dict[str, Measurement] | None = None, path: Path | None = None):
        self.entries = dict(entries or {})
        self.path = path

    @staticmethod
    def default_path() -> Path:
        return cache_root() / CACHE_FILE

    @classmethod
    def load(cls, path: Path | None = None) -> MemoryTable:
        path = Path(path) if path is not None else cls.default_path()
        if not path.is_file():
            return cls({}, path)
        try:
            data = json.loads(path.read_text())
            if data.get("version") != FORMAT_VERSION:
                return cls({}, path)  # another format: measure again
            entries = {k: Measurement.from_dict(v) for k, v in data["entries"].items()}
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
            raise ValueError(
                f"GPU memory table {path} cannot be read ({err}); delete it to measure again"
            ) from err
        return cls(entries, path)

    def record(self, m: Measurement) -> None:
        """Add or replace one entry, merged with what other processes wrote meanwhile."""
        path = self.path or self.default_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        with file_lock(path.parent / f".{path.name}.lock"):
            merged = MemoryTable.load(path).entries
            merged[m.key.id()] = m
            body = {
                "version": FORMAT_VERSION,
                "entries": {k: v.to_dict() for k, v in merged.items()},
            }
            atomic_write_text(path, json.dumps(body, indent=1, sort_keys=True) + "\n")
        self.entries = merged

    def exact(self, key: MemoryKey) -> Measurement | None:
        found = [
            m for m in self.entries.values() if _same_shape(m.key, key) and m.key.same_card(key)
        ]
        return max(found, key=need_bytes) if found else None

    def lookup(self, key: MemoryKey) -> tuple[Measurement | None, str]:
        """The entry for `key` and how it was found: "measured" (this shape on this dataset's
        size), "upper bound" (same model with a batch, image and dataset at least as large and
        nothing frozen: freezing only removes gradients, Adam state and saved activations), or
        (None, "estimate")."""
        m = self.exact(key)
        if m is not None:
            return m, "measured" if m.source == "measured" else m.source
        bounds = [
            m
            for m in self.entries.values()
            if m.key.same_card(key)
            and (m.key.model, m.key.precision, m.key.compile)
            == (key.model, key.precision, key.compile)
            and m.key.batch_size >= key.batch_size
            and m.key.image_size >= key.image_size
            and m.key.data_bytes >= key.data_bytes
            and m.key.frozen_depth == 0
        ]
        if bounds:
            return min(bounds, key=need_bytes), "upper bound"
        return None, "estimate"


def _same_shape(a: MemoryKey, b: MemoryKey) -> bool:
    skip = {"card", "card_bytes"}
    return all(
        getattr(a, f.name) == getattr(b, f.name)
        for f in dataclasses.fields(MemoryKey)
        if f.name not in skip
    )


# --- measuring (a short-lived subprocess per shape) ------------------------------------------


def measure(
    cfg: TrialConfig,
    *,
    steps: int = MEASURE_STEPS,
    timeout_s: float = MEASURE_TIMEOUT_S,
    table: MemoryTable | None = None,
) -> Measurement:
    """Measure `cfg` in a fresh process on this machine's first visible GPU and record it.

    A fresh process, so the peak holds this shape alone (no cached blocks of another model) and
    the CUDA context it creates is counted as a trial's own would be."""
    command = [sys.executable, "-m", "search.gpu_memory", "--config", json.dumps(cfg.to_dict())]
    command += ["--steps", str(steps)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout_s, env=env, cwd=REPO
        )
    except subprocess.TimeoutExpired as err:
        raise GpuMemoryError(f"measuring {cfg.model} took over {timeout_s:.0f} s") from err
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise GpuMemoryError(f"measuring {cfg.model} failed (exit {done.returncode}): {tail}")
    m = Measurement.from_dict(json.loads(lines[-1]))
    (table or MemoryTable.load()).record(m)
    return m


def measure_here(cfg: TrialConfig, steps: int = MEASURE_STEPS) -> Measurement:
    """In this process: one warm-up step, `steps` timed steps, one evaluation of the validation
    split and one checkpoint save, with the product's own training functions and data."""
    import torch

    from trainables.data import load_for_config

    used_before = _device_used_bytes()  # before this process touches CUDA (its context)
    if not torch.cuda.is_available():
        raise GpuMemoryError("no CUDA device visible: nothing to measure")
    device = torch.device("cuda", torch.cuda.current_device())
    props = torch.cuda.get_device_properties(device)
    data = load_for_config(cfg)
    key = key_for(cfg, props.name, props.total_memory, len(data.train.labels))
    try:
        timings = _train_and_save(cfg, data, device, steps)
    except torch.cuda.OutOfMemoryError as err:
        return Measurement(key, props.total_memory, 0, 0, "too_large", detail=str(err)[:200])
    reserved = torch.cuda.max_memory_reserved(device)
    used_after = _device_used_bytes()
    if used_before is None or used_after is None:
        context, how = CONTEXT_FALLBACK_BYTES, "fallback"
    else:  # everything this process holds on the card, minus what its allocator holds now
        context, how = max(0, used_after - used_before - torch.cuda.memory_reserved(device)), "nvml"
    return Measurement(
        key,
        reserved_bytes=int(reserved),
        allocated_bytes=int(torch.cuda.max_memory_allocated(device)),
        context_bytes=int(context),
        source="measured",
        context_source=how,
        detail=f"{len(data.train.labels)} train images of {cfg.data}, torch {torch.__version__}",
        measured_at=_now(),
        **timings,
    )


def _train_and_save(cfg: TrialConfig, data: Any, device: Any, steps: int) -> dict[str, Any]:
    import torch

    from trainables.train import (
        CHECKPOINT_FILE,
        build_criterion,
        build_training,
        epoch_order,
        evaluate,
        make_generators,
        make_step,
        save_checkpoint,
        train_one_epoch,
    )

    model, optimizer = build_training(cfg, len(data.classes), device)
    samplers = make_generators(cfg, device)
    # Streamed, as a trial whose data does not fit keeps it: the figure is the model's own need,
    # and the dataset's bytes are added where a trial keeps the split on the card (with_data).
    train_x, train_y = data.train.images, data.train.labels
    criterion = build_criterion(cfg, data, device)
    step = make_step(cfg, model, optimizer, criterion, device)
    order = epoch_order(cfg, data, samplers["cpu"])
    # Warm-up: cuDNN autotuning, lazy CUDA modules; then the timed steps.
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda _: None)
    train_one_epoch(
        replace(cfg, max_train_batches=1), step, train_x, train_y, order, samplers["device"], device
    )
    sync(device)
    started = time.perf_counter()
    train_one_epoch(
        replace(cfg, max_train_batches=steps),
        step,
        train_x,
        train_y,
        order,
        samplers["device"],
        device,
    )
    sync(device)
    step_s = (time.perf_counter() - started) / steps
    started = time.perf_counter()
    evaluate(model, data.val, device, cfg=cfg, classes=data.classes)
    eval_s = time.perf_counter() - started
    with tempfile.TemporaryDirectory(prefix="cxr-memsave-") as tmp:
        started = time.perf_counter()
        path = save_checkpoint(Path(tmp), cfg, data, model, optimizer, samplers, 1, [])
        shutil.copy2(path, Path(tmp) / f"{CHECKPOINT_FILE}.copy")  # Ray persists a copy
        save_s = time.perf_counter() - started
        size = path.stat().st_size
    return {"step_s": step_s, "eval_s": eval_s, "save_s": save_s, "checkpoint_bytes": size}


def _device_used_bytes() -> int | None:
    """Bytes in use on the process's first visible GPU, from NVML (no CUDA context needed)."""
    try:
        import pynvml  # nvidia-ml-py, installed with PyTorch's CUDA wheels on GPU machines
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0].strip() or "0"
        handle = (
            pynvml.nvmlDeviceGetHandleByIndex(int(visible))
            if visible.isdigit()
            else pynvml.nvmlDeviceGetHandleByUUID(visible)
        )
        return int(pynvml.nvmlDeviceGetMemoryInfo(handle).used)
    except Exception:  # NVML missing or refused in this container: fall back to the constant
        return None


# --- what a space can choose ------------------------------------------------------------------

# Integer names whose every value is a shape (the walk takes the other integers' high end).
ENUMERATED = ("frozen_depth", "unfrozen_blocks")


def space_configs(define: SpaceDefine) -> list[TrialConfig]:
    """Every branch of `define` (the pre-flight's walk: `search.walk.walk`, each frozen
    setting's integers enumerated, numbers at their high end), as TrialConfigs."""
    configs = []
    for probe, returned in walk(
        define, "space", restricted=True, ends=("high",), enumerated=ENUMERATED
    ):
        values = {**define.merge(returned, probe.params), **probe.params}
        configs.append(TrialConfig.from_dict({k: v for k, v in values.items() if k != "epochs"}))
    return configs


def worst_case_configs(configs: Sequence[TrialConfig]) -> list[TrialConfig]:
    """One config per (model, frozen setting, precision, compile) at that model's largest batch
    and image size, least frozen first per model (its figure bounds the others)."""
    from trainables.augment import ops_for

    largest: dict[str, tuple[int, int]] = {}
    for c in configs:
        b, s = largest.get(c.model, (0, 0))
        largest[c.model] = (max(b, c.batch_size), max(s, c.image_size))
    heaviest = max({c.augment for c in configs}, key=lambda a: len(ops_for(a)))
    out: dict[tuple, TrialConfig] = {}
    for c in configs:
        b, s = largest[c.model]
        shape = (c.model, c.frozen_depth, c.unfrozen_blocks, precision_of(c.amp), c.compile)
        out.setdefault(shape, replace(c, batch_size=b, image_size=s, augment=heaviest))
    return sorted(out.values(), key=lambda c: (c.frozen_depth > 0, c.model, c.frozen_depth))


def shape_name(cfg: TrialConfig) -> str:
    frozen = f" frozen {cfg.frozen_depth}/{cfg.unfrozen_blocks}" if cfg.frozen_depth else ""
    return f"{cfg.model} batch {cfg.batch_size} {cfg.image_size} px {precision_of(cfg.amp)}{frozen}"


def describe(m: Measurement) -> str:
    k = m.key
    frozen = f" frozen {k.frozen_depth}/{k.unfrozen_blocks}" if k.frozen_depth else ""
    return (
        f"{k.model} batch {k.batch_size} {k.image_size} px {k.precision}{frozen} on {k.card}: "
        f"reserved {m.reserved_bytes / GIB:.2f} GiB + context {m.context_bytes / GIB:.2f} GiB, "
        f"need {need_bytes(m) / GIB:.2f} GiB = share {share_for(need_bytes(m), k.card_bytes):g}; "
        f"step {m.step_s * 1e3:.1f} ms, save {m.save_s:.2f} s ({m.source})"
    )


# --- the per-trial cap (in the trial process) -------------------------------------------------


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


# --- command line (the measuring subprocess) --------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog=prog("search.gpu_memory"),
        description="Measure one trial shape's GPU memory with a few real training steps and "
        "print it as one JSON line (the driver runs this in a short-lived subprocess).",
    )
    p.add_argument("--config", required=True, help="a TrialConfig as a JSON object")
    p.add_argument("--steps", type=int, default=MEASURE_STEPS, help="timed training steps")
    args = p.parse_args(argv)
    try:
        cfg = TrialConfig.from_dict(json.loads(args.config))
        if args.steps < 1:
            raise ValueError(f"--steps must be >= 1, got {args.steps}")
    except (ValueError, json.JSONDecodeError) as err:
        print(f"error: --config: {err}", file=sys.stderr)
        return 2
    try:
        m = measure_here(cfg, args.steps)
    except GpuMemoryError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(m.to_dict()), flush=True)
    return 0


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


if __name__ == "__main__":
    sys.exit(main())
