"""Ray's saved experiment, read and written in one place, on local or URI storage.

Ray saves three files per driver session, every `TUNE_GLOBAL_CHECKPOINT_S` seconds: the trial
table (`experiment_state-*.json`, its format owned by `trainables.experiment.ray_state`), the
search generator's state (`search_gen_state-*.json`, a cloudpickle despite its name) and the
searcher's (`searcher-state-*.pkl`, JSON written by `search.optuna_pruned`). One error policy:
a torn trial table is refused in one line naming the file; a torn search generator or searcher
save (a write cut short) is set aside, so the resume uses the one before it (the searcher's
journal, not its save, holds the search's record).
The files are the ones this sweep's own driver wrote, so reading their pickles is no more
trusting than `Tuner.restore` itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.fs
from ray import cloudpickle

from search.optuna_pruned import SEARCHER_GLOB, read_state
from search.storage import is_uri
from trainables.cache import atomic_write_bytes
from trainables.experiment import (
    RESULT_FILE,
    Results,
    newest_ray_state,
    parse_ray_state,
    parse_results,
    ray_state_trials,
)

PICKLED = "CLOUDPICKLE_FALLBACK"  # how Ray embeds a pickle (hex) in its JSON
SEARCH_GEN_GLOB = "search_gen_state-*.json"  # Ray's SearchGenerator
LIMITER_KEY = "name:ConcurrencyLimiter"  # the limiter's part of the search generator's state
TORN_SUFFIX = ".torn"  # a torn save, renamed out of its glob, kept for inspection


def saved_state(experiment_path: str) -> tuple[pyarrow.fs.FileSystem, str, dict] | None:
    """(fs, path, content) of the newest trial table Ray saved; None when there is none. A torn
    one is refused naming it (`parse_ray_state`)."""
    fs, root = pyarrow.fs.FileSystem.from_uri(_as_uri(experiment_path))
    selector = pyarrow.fs.FileSelector(root, allow_not_found=True)
    newest = newest_ray_state(i.path for i in fs.get_file_info(selector))
    if newest is None:
        return None
    where = newest if not is_uri(experiment_path) else f"{experiment_path}/{Path(newest).name}"
    return fs, newest, parse_ray_state(read(fs, newest), where)


def table_and(experiment_path: str, glob: str) -> tuple[Any, list[dict], str, bytes] | None:
    """(fs, the trials of the newest trial table, the newest file matching `glob` beside it,
    its bytes); None when either is missing."""
    saved = saved_state(experiment_path)
    if saved is None:
        return None
    fs, state_file, state = saved
    other = newest(fs, state_file.rsplit("/", 1)[0], glob.split("*")[0])
    return None if other is None else (fs, ray_state_trials(state), other, read(fs, other))


def newest(fs: pyarrow.fs.FileSystem, root: str, prefix: str) -> str | None:
    """The newest file of `root` named PREFIX<sortable time>... (Ray's saved state files)."""
    selector = pyarrow.fs.FileSelector(root, allow_not_found=True)
    names = [i.path for i in fs.get_file_info(selector) if i.base_name.startswith(prefix)]
    names = [n for n in names if not n.endswith((".tmp", TORN_SUFFIX))]
    return max(names) if names else None


def read(fs: pyarrow.fs.FileSystem, path: str) -> bytes:
    with fs.open_input_stream(path) as stream:
        return stream.read()


def trial_results(fs: pyarrow.fs.FileSystem, trial_root: str) -> Results:
    """A trial folder's result.json rows, local or in a bucket (none when it has no file)."""
    path = f"{trial_root}/{RESULT_FILE}"
    if fs.get_file_info(path).type == pyarrow.fs.FileType.NotFound:
        return Results([])
    return parse_results(read(fs, path).decode(errors="replace"))


def write(fs: pyarrow.fs.FileSystem, path: str, data: bytes) -> None:
    """Local: write beside and rename. Object stores replace an object whole on upload."""
    if fs.type_name == "local":
        atomic_write_bytes(Path(path), data)
        return
    with fs.open_output_stream(path) as out:
        out.write(data)


def search_gen(experiment_path: str) -> tuple[Any, str, dict] | None:
    """(fs, path, state) of the newest search generator save; None when there is none."""
    fs, root = pyarrow.fs.FileSystem.from_uri(_as_uri(experiment_path))
    path = newest(fs, root, SEARCH_GEN_GLOB.split("*")[0])
    if path is None:
        return None
    state = cloudpickle.loads(read(fs, path))
    return (fs, path, state) if isinstance(state, dict) else None


def save_search_gen(fs: pyarrow.fs.FileSystem, path: str, state: dict) -> None:
    write(fs, path, cloudpickle.dumps(state))


def set_aside_torn(experiment_dir: Path) -> list[str]:
    """Rename a torn newest search generator or searcher save out of its glob (module doc)."""
    notes = []
    for glob, load in ((SEARCH_GEN_GLOB, cloudpickle.loads), (SEARCHER_GLOB, read_state)):
        files = sorted(experiment_dir.glob(glob))
        while files and not _loads(load, files[-1]):
            torn = files.pop()
            torn.rename(torn.with_name(torn.name + TORN_SUFFIX))
            left = f"{files[-1].name} is used instead" if files else "none is left"
            notes.append(f"{torn.name} was cut short by the stop (renamed {TORN_SUFFIX}); {left}")
    return notes


def _loads(load: Any, path: Path) -> bool:
    try:
        load(path.read_bytes())
    except Exception:  # any failure to load: empty, cut short, garbled
        return False
    return True


def load_blob(blob: Any) -> Any | None:
    """An object Ray embedded in its JSON as a hex pickle; None when it is not one."""
    if not isinstance(blob, dict) or blob.get("_type") != PICKLED:
        return None
    return cloudpickle.loads(bytes.fromhex(blob["value"]))


def dump_blob(value: Any) -> dict[str, str]:
    return {"_type": PICKLED, "value": cloudpickle.dumps(value).hex()}


def _as_uri(path: str) -> str:
    return path if is_uri(path) else "file://" + path
