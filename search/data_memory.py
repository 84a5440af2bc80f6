"""What a sweep's data costs each node, said in the pre-flight before any of it is spent.

    decoded   = images x image_size^2 bytes (uint8) over train and val: one copy per node, in
                the decode cache, memory-mapped by every trial there (the page cache holds it once)
    trial RAM = PREFETCH_BATCHES x batch_size x image_size^2 (streamed batches, pinned)
                + images x TRIAL_BYTES_PER_IMAGE (labels; the pixels are the node's mapped copy)
                + images x LOAD_BYTES_PER_IMAGE while the trial starts (the forked child that
                  lists and hashes the files, `trainables.mapped`; returned when it exits)
    trial GPU = the train split's bytes when it stays on the card, else PREFETCH_BATCHES batches
    node      = decoded + concurrent x trial RAM <= the node's memory (MemTotal);
                concurrent x trial GPU <= the node's GPU memory

A sweep whose data cannot fit is refused with one line naming the numbers and what to change
(--max-concurrent, the space's image_size, --stream-data). `concurrent` is --max-concurrent,
else as many trials as the node's CPUs (and GPU eighths) allow.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from search.gpu_memory import SHARES_PER_CARD, keeps_data, train_bytes
from search.resources import peak_bytes
from trainables.config import TrialConfig

PREFETCH_BATCHES = 2  # the batch being trained and the one gathered ahead
# Per image, measured with bench/scale.py (bench/RESULTS.md): a mapped trial keeps int64 labels
# (one, or one per finding of multi-label data: 128 B covers CheXpert's 14); the full load in
# its child peaks at 1.6-1.9 KB an image (paths, hashes, the listing) and then exits.
TRIAL_BYTES_PER_IMAGE = 128
LOAD_BYTES_PER_IMAGE = 2048


@dataclass(frozen=True)
class DataMemory:
    images: int
    """Train + val images of the run's dataset."""
    train_images: int
    image_size: int  # pixels, the largest the space can choose
    batch_size: int  # the largest the space can choose
    decoded_bytes: int
    trial_ram_bytes: int
    trial_gpu_bytes: int
    on_card: bool
    """The train split stays on the GPU (else streamed; False without GPUs)."""
    concurrent: int
    node_ram_bytes: int
    node_gpu_bytes: int

    def need_ram(self) -> int:
        return self.decoded_bytes + self.concurrent * self.trial_ram_bytes

    def need_gpu(self) -> int:
        return self.concurrent * self.trial_gpu_bytes

    def format(self) -> str:
        where = "kept on the GPU" if self.on_card else "streamed from the mapped copy"
        gpu = (
            f"; GPU for data {gb(self.trial_gpu_bytes)} a trial (train split {where}), "
            f"{gb(self.need_gpu())} of {gb(self.node_gpu_bytes)}"
            if self.node_gpu_bytes
            else ""
        )
        return (
            f"memory: {self.images:,} images at {self.image_size} px decode to "
            f"{gb(self.decoded_bytes)}, mapped once per node (the decode cache); "
            f"each trial's private RAM for data at most {gb(self.trial_ram_bytes)} (batch "
            f"{self.batch_size}, and its start's listing); {self.concurrent} concurrent: "
            f"RAM {gb(self.need_ram())} of "
            f"{gb(self.node_ram_bytes)}{gpu}"
        )

    def refusal(self) -> str:
        """One line naming the numbers and what to change; '' when the data fits the node."""
        if self.node_ram_bytes and self.need_ram() > self.node_ram_bytes:
            fit = (self.node_ram_bytes - self.decoded_bytes) // max(1, self.trial_ram_bytes)
            return (
                f"the data does not fit this node's memory: {gb(self.decoded_bytes)} decoded "
                f"({self.images:,} images at {self.image_size} px) + {self.concurrent} trials x "
                f"{gb(self.trial_ram_bytes)} = {gb(self.need_ram())} > "
                f"{gb(self.node_ram_bytes)}; lower the space's image_size"
                + (f" or --max-concurrent (at most {fit} fit)" if fit > 0 else "")
            )
        if self.node_gpu_bytes and self.need_gpu() > self.node_gpu_bytes:
            fit = self.node_gpu_bytes // max(1, self.trial_gpu_bytes)
            return (
                f"the data does not fit this node's GPUs: {self.concurrent} trials x "
                f"{gb(self.trial_gpu_bytes)} (the {self.train_images:,}-image train split at "
                f"{self.image_size} px kept on the card) = {gb(self.need_gpu())} > "
                f"{gb(self.node_gpu_bytes)}; use --stream-data, --max-concurrent "
                f"{max(1, fit)}, or a smaller image_size"
            )
        return ""


def gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e7 else f"{n / 1e6:.1f} MB"


def node_ram_bytes() -> int:
    """MemTotal of this machine (0 when /proc/meminfo cannot be read)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def data_memory(
    configs: list[TrialConfig],
    images: dict[str, int],
    *,
    max_concurrent: int | None,
    num_samples: int,
    cpus_per_trial: float,
    gpus: int,
    card_bytes: int,
    ram_bytes: int | None = None,
) -> DataMemory:
    """The data's memory for the run's dataset, from the space's configs (largest image and
    batch) and its images per split (`Preflight.images[0]`)."""
    size = max(c.image_size for c in configs)
    batch = max(c.batch_size for c in configs)
    total, train = images["train"] + images["val"], images["train"]
    data = train_bytes(train, size)
    batch_bytes = PREFETCH_BATCHES * batch * size * size
    placement = configs[0].data_on_device
    model = max(peak_bytes(c.model, c.batch_size, c.image_size) for c in configs)
    on_card = bool(gpus) and keeps_data(model, data, card_bytes, placement)
    slots = max(1, math.floor((os.cpu_count() or 1) / max(cpus_per_trial, 1e-9)))
    if gpus:
        slots = min(slots, gpus * SHARES_PER_CARD)
    return DataMemory(
        images=total,
        train_images=train,
        image_size=size,
        batch_size=batch,
        decoded_bytes=train_bytes(total, size),
        trial_ram_bytes=batch_bytes + total * (TRIAL_BYTES_PER_IMAGE + LOAD_BYTES_PER_IMAGE),
        trial_gpu_bytes=(data if on_card else batch_bytes) if gpus else 0,
        on_card=on_card,
        concurrent=max(1, min(num_samples, max_concurrent or slots)),
        node_ram_bytes=node_ram_bytes() if ram_bytes is None else ram_bytes,
        node_gpu_bytes=gpus * card_bytes,
    )
