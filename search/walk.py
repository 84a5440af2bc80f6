"""The one walker of a define-by-run space: every categorical branch of `define`, each at the
numeric ends (`walk`), and what a space file can make a trial, in words (`space_values`, kept in
the experiment record so a resume can name an edit: `space_changes`).

The pre-flight (`search.preflight`) checks each branch against the registries and TrialConfig,
`search.gpu_memory` measures each model shape, `search.checks` compares a resumed space with its
record. Plain Python over `search.space`: importing it loads no data or model code.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from pathlib import Path
from typing import Any

from search.space import SpaceDefine, load_module

EXPLORE_LIMIT = 4096  # define() calls; a space with more branches is checked on the first ones


class Probe:
    """A stand-in Optuna trial that follows one path through the categorical choices (and the
    values of the integers named in `enumerated`) and puts every other numeric suggestion at its
    low or its high end."""

    def __init__(self, path: list[int], end: str, enumerated: Collection[str] = ()) -> None:
        self.path, self.end, self.enumerated = path, end, enumerated
        self.taken: list[int] = []
        self.counts: list[int] = []
        self.params: dict[str, Any] = {}
        self.categorical: dict[str, list[Any]] = {}
        self.offered: dict[str, str] = {}
        """What each suggestion offered, in words ("choices [...]", "float in [a, b] (log)")."""
        self.number = 0

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        choices = list(choices)
        if not choices:
            raise ValueError(f"suggest_categorical({name!r}) has no choices")
        self.categorical.setdefault(name, []).extend(choices)
        self.offered[name] = f"choices {choices!r}"
        return self._branch(name, choices)

    def _branch(self, name: str, values: list[Any]) -> Any:
        i = len(self.taken)
        pick = self.path[i] if i < len(self.path) else 0
        self.taken.append(pick)
        self.counts.append(len(values))
        self.params[name] = values[pick]
        return values[pick]

    def suggest_int(self, name: str, low: int, high: int, step: int = 1, log: bool = False) -> int:
        self.offered[name] = _numeric("int", low, high, step if step != 1 else None, log)
        if name in self.enumerated:
            return self._branch(name, list(range(low, high + 1, step)))
        value = low if self.end == "low" else high - (high - low) % step
        self.params[name] = value
        return value

    def suggest_float(self, name: str, low: float, high: float, *, step=None, log=False) -> float:
        value = float(low if self.end == "low" else high)
        self.offered[name] = _numeric("float", low, high, step, log)
        self.params[name] = value
        return value

    def set_user_attr(self, key: str, value: Any) -> None:  # harmless in a probe
        pass


def _numeric(kind: str, low: float, high: float, step: float | None, log: bool) -> str:
    return (
        f"{kind} in [{low!r}, {high!r}]"
        + (f" step {step!r}" if step is not None else "")
        + (" (log)" if log else "")
    )


def walk(
    define: SpaceDefine,
    where: str,
    restricted: bool = False,
    *,
    ends: Sequence[str] = ("low", "high"),
    enumerated: Collection[str] = (),
) -> Iterator[tuple[Probe, dict[str, Any]]]:
    """Every categorical branch of `define`, each at both numeric ends: (the probe that followed
    it, what the file's define() returned); at most `EXPLORE_LIMIT` calls. The one rule for how a
    space is walked (the pre-flight, the space's record, the GPU memory shapes). `restricted`
    walks only the choices the run keeps (CPU_CHOICES); `ends` the numeric ends taken;
    `enumerated` the integer names whose every value is a branch (`search.gpu_memory`)."""
    unrestricted = SpaceDefine(define.path, restrict=define.restrict if restricted else None)
    stack, pushed, calls = [[]], {()}, 0
    while stack and calls < EXPLORE_LIMIT:
        path = stack.pop()
        for end in ends:
            probe = Probe(path, end, enumerated)
            yield probe, _call(unrestricted, probe, where)
            calls += 1
            for j in range(len(path), len(probe.counts)):
                for alt in range(1, probe.counts[j]):
                    child = tuple(probe.taken[:j]) + (alt,)
                    if child not in pushed:
                        pushed.add(child)
                        stack.append(list(child))


# Module constants of a space file that decide what its sweep trains (`search.space`).
SPACE_CONSTANTS = (
    "METRIC",
    "MODE",
    "MAX_EPOCHS",
    "GRACE_PERIOD",
    "REDUCTION_FACTOR",
    "NUM_SAMPLES",
    "POINTS_TO_EVALUATE",
    "CPU_CHOICES",
)


def space_values(
    path: str | Path, walked: Sequence[tuple[Probe, dict[str, Any]]] | None = None
) -> dict[str, list[str]]:
    """What the space file at `path` can make a trial: each name its define() suggests (with its
    choices or range) or returns (with its values) on any branch, and its module constants, in
    words: the experiment record keeps it, so a resume can name what an edit changed. `walked`:
    the file's `walk`, when the caller has it."""
    if walked is None:
        walked = list(walk(SpaceDefine(path), f"space file {path}"))
    values: dict[str, set[str]] = {}
    for probe, returned in walked:
        for name, offered in probe.offered.items():
            values.setdefault(name, set()).add(offered)
        for name, value in returned.items():
            if name not in probe.params:
                values.setdefault(name, set()).add(repr(value))
    module = load_module(Path(path))
    for name in SPACE_CONSTANTS:
        if hasattr(module, name):
            values[name] = {repr(getattr(module, name))}
    return {name: sorted(found) for name, found in sorted(values.items())}


def space_changes(before: dict[str, list[str]], after: dict[str, list[str]]) -> list[str]:
    """Each name whose values differ between two `space_values`, as 'name: old -> new'."""
    changes = []
    for name in sorted(set(before) | set(after)):
        old, new = list(before.get(name, [])), list(after.get(name, []))
        if old != new:
            changes.append(
                f"{name}: {' | '.join(old) or 'absent'} -> {' | '.join(new) or 'absent'}"
            )
    return changes


def _call(define: SpaceDefine, probe: Probe, where: str) -> dict[str, Any]:
    try:
        return define(probe)
    except Exception as err:  # user code failing on one branch
        if str(err).startswith("space file"):
            raise
        raise ValueError(
            f"{where}: define() fails on the branch {probe.params}: {type(err).__name__}: {err}"
        ) from err
