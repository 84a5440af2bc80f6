"""Where experiments live: a local folder or an object-store URI (`s3://bucket/prefix`).

Local paths are written atomically (`trainables.cache`); URIs through pyarrow filesystems, as
Ray itself writes them. Only small files (the experiment record, the summary) go through here;
Ray moves trial results and checkpoints itself.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from trainables.experiment import (
    EXPERIMENT_FILE,
    ExperimentRecord,
    holds_experiment,
    parse_record,
    record_path,
)


def is_uri(storage: str) -> bool:
    return "://" in storage


def join_storage(base: str, *parts: str) -> str:
    """Append path parts to a local path or a URI, keeping a URI's query string at the end
    (`s3://b/p?endpoint_override=...` + `name` -> `s3://b/p/name?endpoint_override=...`)."""
    if not is_uri(base):
        return "/".join([base.rstrip("/"), *parts])
    url = urlsplit(base)
    return urlunsplit(url._replace(path="/".join([url.path.rstrip("/"), *parts])))


def experiment_path(storage: str, name: str) -> str:
    return join_storage(storage, name)


def write_text(storage_path: str, text: str) -> None:
    """Write a small file at a local path or a URI (pyarrow filesystems, as Ray uses)."""
    if not is_uri(storage_path):
        from trainables.cache import atomic_write_text

        atomic_write_text(Path(storage_path), text)
        return
    import pyarrow.fs

    fs, path = pyarrow.fs.FileSystem.from_uri(storage_path)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as out:
        out.write(text.encode())


def read_text(storage_path: str) -> str | None:
    if not is_uri(storage_path):
        path = Path(storage_path)
        return path.read_text() if path.is_file() else None
    import pyarrow.fs

    fs, path = pyarrow.fs.FileSystem.from_uri(storage_path)
    if fs.get_file_info(path).type == pyarrow.fs.FileType.NotFound:
        return None
    with fs.open_input_stream(path) as stream:
        return stream.read().decode()


def newest_experiment(storage: str) -> str | None:
    """The name of the most recently created experiment in a local `storage`, or None."""
    root = Path(storage)
    if not root.is_dir():
        return None
    found = [p for p in root.iterdir() if holds_experiment(p)]
    return max(found, key=lambda p: record_path(p).stat().st_mtime).name if found else None


def read_record(experiment_path: str) -> ExperimentRecord | None:
    """The experiment record at a local path or a URI; None when there is none."""
    where = join_storage(experiment_path, EXPERIMENT_FILE)
    text = read_text(where)
    return None if text is None else parse_record(text, where)


def write_record(record: ExperimentRecord) -> None:
    """Write `record` to its experiment (`record.path`, local or a URI)."""
    write_text(join_storage(record.path, EXPERIMENT_FILE), record.to_json())
