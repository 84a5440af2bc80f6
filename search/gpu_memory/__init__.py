"""Measured GPU memory per trial shape, the packing shares it gives, and the per-trial cap.

Ray's fractional GPUs are logical only: a trial can allocate past its share and take its
neighbours down (ray#3947, ray#5902). So on a GPU machine the driver first measures each model
the space can choose, at the space's largest batch and image size with the trial's precision and
frozen setting, with a few real training steps (the product's own `trainables.train` functions on
the real data) in a short-lived subprocess:

    python -m search.gpu_memory --config '{"model": "resnet18", "batch_size": 32, ...}'

It records `torch.cuda.max_memory_reserved()`, the process's CUDA context, the step, evaluation
and checkpoint-save times, and the card's name and total memory into `$CXR_TUNE_CACHE/
gpu_memory.json` (`table` owns that file), keyed by all of those and by the train split's
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

The submodules, one concern each (this package re-exports their public names):

- `measurement`: `MemoryKey`, `Measurement`, `need_bytes` (a shape's key and its figures)
- `shares`: the share Ray is asked for, `keeps_data`, the allocator cap arithmetic
- `table`: `MemoryTable`, the file `gpu_memory.json`
- `probe`: `measure` (the subprocess), `measure_here` (in it) and its command line
- `shapes`: the shapes a space can choose and their names (`space_configs`, `describe`)
- `cap`: `capped` (in the trial) and the retry at a larger share (`oom_retry_callback`)
"""

from __future__ import annotations

from search.gpu_memory.cap import (
    NEED_TAG,
    OOM_GROWTH,
    capped,
    grown_measurement,
    oom_message,
    oom_retry_callback,
    refusal,
    requested_bytes,
    retry_share,
)
from search.gpu_memory.measurement import (
    CONTEXT_FALLBACK_BYTES,
    GIB,
    KEY_FIELDS,
    MARGIN_MIN_BYTES,
    MARGIN_SHARE,
    MIB,
    GpuMemoryError,
    Measurement,
    MemoryKey,
    key_for,
    margin_bytes,
    need_bytes,
    precision_of,
    train_bytes,
)
from search.gpu_memory.probe import (
    MEASURE_STEPS,
    MEASURE_TIMEOUT_S,
    main,
    measure,
    measure_here,
)
from search.gpu_memory.shapes import (
    ENUMERATED,
    describe,
    shape_name,
    space_configs,
    worst_case_configs,
)
from search.gpu_memory.shares import (
    SHARE_STEP,
    SHARES_PER_CARD,
    allocator_cap,
    data_budget,
    keeps_data,
    share_for,
    with_data,
)
from search.gpu_memory.table import (
    CACHE_FILE,
    FORMAT_VERSION,
    MemoryTable,
)

__all__ = [
    "CACHE_FILE",
    "CONTEXT_FALLBACK_BYTES",
    "ENUMERATED",
    "FORMAT_VERSION",
    "GIB",
    "GpuMemoryError",
    "KEY_FIELDS",
    "MARGIN_MIN_BYTES",
    "MARGIN_SHARE",
    "MEASURE_STEPS",
    "MEASURE_TIMEOUT_S",
    "MIB",
    "Measurement",
    "MemoryKey",
    "MemoryTable",
    "NEED_TAG",
    "OOM_GROWTH",
    "SHARES_PER_CARD",
    "SHARE_STEP",
    "allocator_cap",
    "capped",
    "data_budget",
    "describe",
    "grown_measurement",
    "keeps_data",
    "key_for",
    "main",
    "margin_bytes",
    "measure",
    "measure_here",
    "need_bytes",
    "oom_message",
    "oom_retry_callback",
    "precision_of",
    "refusal",
    "requested_bytes",
    "retry_share",
    "shape_name",
    "share_for",
    "space_configs",
    "train_bytes",
    "with_data",
    "worst_case_configs",
]
