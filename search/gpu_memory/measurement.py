"""One measurement of one trial shape: its key (`MemoryKey`: everything the peak depends on,
the card and the train split's bytes included), the figures measured (`Measurement`) and the
bytes on the card they add up to (`need_bytes`, margin and CUDA context included)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from trainables.config import TrialConfig

MIB = 2**20
GIB = 2**30
MARGIN_SHARE = 0.10  # of the measured peak: fragmentation over later epochs, other batch shapes
MARGIN_MIN_BYTES = 256 * MIB
CONTEXT_FALLBACK_BYTES = 600 * MIB  # CUDA context per process when NVML cannot measure it


class GpuMemoryError(RuntimeError):
    """A trial ran out of its GPU share, or cannot fit a whole card."""


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
