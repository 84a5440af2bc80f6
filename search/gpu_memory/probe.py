"""The measurement itself: a short-lived subprocess per shape (`measure`, which runs
`python -m search.gpu_memory`), and in it a few real training steps, an evaluation and a
checkpoint save with the product's own training functions (`measure_here`); its command line."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from cxr_tune import prog
from search.gpu_memory.measurement import (
    CONTEXT_FALLBACK_BYTES,
    GpuMemoryError,
    Measurement,
    key_for,
)
from search.gpu_memory.table import MemoryTable
from trainables.config import TrialConfig

MEASURE_STEPS = 3  # timed training steps per measurement, after one warm-up step
MEASURE_TIMEOUT_S = 120.0  # seconds per measurement subprocess
REPO = Path(__file__).resolve().parents[2]


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
