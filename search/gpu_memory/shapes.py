"""What a space can choose: its shapes walked from `define` (`space_configs`), the worst case
per model that is measured (`worst_case_configs`), and how a shape or a measurement is named."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from search.gpu_memory.measurement import GIB, Measurement, need_bytes, precision_of
from search.gpu_memory.shares import share_for
from search.space import SpaceDefine
from search.walk import walk
from trainables.config import TrialConfig

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
