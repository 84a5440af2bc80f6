"""The packing arithmetic: the GPU share Ray is asked for (multiples of 1/8 of a card), whether
a trial keeps its train split on the card, and the allocator cap a share gives."""

from __future__ import annotations

from search.gpu_memory.measurement import GIB

SHARES_PER_CARD = 8  # Ray is asked for multiples of 1/8 of a card, at least 1/8
SHARE_STEP = 1 / SHARES_PER_CARD


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
