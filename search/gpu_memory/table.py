"""The measured table, `$CXR_TUNE_CACHE/gpu_memory.json` (`MemoryTable`, format
`FORMAT_VERSION`): the one owner of that file, and the lookup of a shape in it (measured, an
upper bound, or none: estimate)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from search.gpu_memory.measurement import Measurement, MemoryKey, need_bytes
from trainables.cache import atomic_write_text, cache_root, file_lock

CACHE_FILE = "gpu_memory.json"
FORMAT_VERSION = 2  # 2: keys carry data_bytes; reserved measured with streamed batches


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
