"""The lock file, `NAME/cxr_tune.lock`: who runs the experiment now (`LockHolder`). search.lock
takes and releases it; this module names it and reads its holder."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

LOCK_FILE = "cxr_tune.lock"  # search.lock takes it; empty (or absent) when nobody holds it


@dataclass(frozen=True)
class LockHolder:
    """Who holds an experiment's lock: written into `LOCK_FILE` by the process that took it."""

    pid: int
    host: str
    started: str
    """UTC time the holder took the lock, ISO 8601."""
    command: str = ""
    """The holder's command line, shortened (for the refusal message)."""

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self)) + "\n"

    def describe(self) -> str:
        return f"pid {self.pid} on host {self.host} since {self.started}"


def parse_lock(text: str) -> LockHolder | None:
    """The holder a lock file names; None for an empty or unreadable one (nobody to name)."""
    try:
        values = json.loads(text)
        return LockHolder(
            pid=int(values["pid"]),
            host=str(values["host"]),
            started=str(values["started"]),
            command=str(values.get("command", "")),
        )
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        return None
