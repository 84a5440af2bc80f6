"""A trial's dataset, mapped: no Python object per image stays in the trial's process.

A trial needs the pixels (memory-mapped from the decode cache, shared by every process on the
node), the labels and the data report. It does not need the listing, the content hashes or the
paths, which cost about 0.8 KB of Python objects per file while they are built and leave that
much behind in the allocator once freed (measured with `bench/scale.py`: 26 MB for 32,000 files,
a fifth of the 64 px pixels they describe). So `load_mapped` runs the full load
(`trainables.data.load_dataset`: listing, hashing and, on a cold node, decoding and splitting)
in a forked child process, which stores the view's record (`decode_cache.save_record`) and
exits, handing its memory back; the trial then maps the view and reads the record's labels.
Paths and patients are read from the record only if something asks for them.

The child re-lists the files every time, so a trial trains on the data as it is now, exactly as
a full load would. Where `os.fork` does not exist the full load runs in-process instead.
"""

from __future__ import annotations

import builtins
import ctypes
import os
import pickle
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from trainables.data import (
    DATASET_FIELDS,
    DataReport,
    Dataset,
    Split,
    dataset_key,
    load_dataset,
    pixels,
)
from trainables.decode_cache import Record, open_record, save_record

T = TypeVar("T")


def load_mapped(cfg: Any) -> Dataset:
    """`cfg`'s train and validation splits (a `TrialConfig`'s data fields), mapped."""
    fields = dict(zip(DATASET_FIELDS, dataset_key(cfg), strict=True))
    for _ in range(3):  # the view can be replaced (data changed) between the child and the map
        view, decoded = in_child(_prepare, fields)
        dataset = open_mapped(Path(view), decoded)
        if dataset is not None:
            return dataset
    raise RuntimeError(f"{fields['data']}: its decode cache changed three times while mapping it")


def _prepare(fields: dict[str, Any]) -> tuple[str, int]:
    """The child's work: the full load, then (once per view) the record a mapped load reads."""
    dataset = load_dataset(**fields)
    assert dataset.view is not None
    save_record(dataset.view, lambda: _record(dataset))
    return str(dataset.view), dataset.decoded


def _record(dataset: Dataset) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The record's meta and columns: labels, paths and patients per split."""
    splits = {"train": dataset.train, "val": dataset.val}
    if dataset.test is not None:
        splits["test"] = dataset.test
    columns = {}
    for name, split in splits.items():
        columns[f"{name}.labels"] = split.labels.numpy()
        columns[f"{name}.paths"] = np.array(split.paths, dtype=str)
        columns[f"{name}.patients"] = np.array(split.patients, dtype=str)
    meta = {
        "root": str(dataset.root),
        "classes": dataset.classes,
        "report": dataset.report.to_dict(),
        "split_hash": dataset.split_record["hash"],
    }
    return meta, columns


def open_mapped(view: Path, decoded: int = 0) -> Dataset | None:
    """The dataset of a decode-cache view from its record; None when the view or its record is
    gone. `Dataset.split_record` holds only the split's hash."""
    record = open_record(view)
    if record is None:
        return None
    meta = record.meta
    report = DataReport.from_dict(meta["report"])
    report.decoded = decoded
    splits = {name: _split(record, name, report.image_size) for name in record.images}
    return Dataset(
        Path(meta["root"]),
        list(meta["classes"]),
        splits["train"],
        splits["val"],
        splits.get("test"),
        report,
        {"hash": meta["split_hash"]},
        decoded,
        view,
    )


def _split(record: Record, name: str, size: int) -> Split:
    columns = record.columns

    def rows() -> tuple[list[str], list[str]]:
        return columns[f"{name}.paths"].tolist(), columns[f"{name}.patients"].tolist()

    labels = torch.from_numpy(np.ascontiguousarray(columns[f"{name}.labels"], np.int64))
    return Split(pixels(record.images[name], size), labels, rows=rows)


# ---------------------------------------------------------------------------- the child


def in_child(fn: Callable[[Any], T], arg: Any) -> T:
    """`fn(arg)` in a forked child process; its result (pickled) or its exception comes back.

    The child dies with its parent (a trial stopped by Ray, Ctrl-C) and uses one torch thread
    (OpenMP's pool does not survive a fork, as in torch's DataLoader workers)."""
    if not hasattr(os, "fork"):
        return fn(arg)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        _child(fn, arg, write)
    os.close(write)
    done = False
    try:
        with os.fdopen(read, "rb") as fh:
            body = fh.read()
        done = True
    finally:
        if not done:
            os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
    if not body:
        raise RuntimeError(f"loading the data failed: its child process ended ({status=})")
    answer = pickle.loads(body)
    if answer[0] == "ok":
        return answer[1]
    _, name, message = answer
    kind = getattr(builtins, name, None)
    if isinstance(kind, type) and issubclass(kind, BaseException):
        raise kind(message)
    raise RuntimeError(f"{name}: {message}")


def _child(fn: Callable[[Any], Any], arg: Any, write: int) -> None:
    """Never returns: sends ("ok", result) or ("error", type name, message) and exits."""
    try:
        # The parent's handlers (a Ray worker's) are not the child's: SIGTERM ends it at once.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if sys.platform == "linux":  # PR_SET_PDEATHSIG: SIGTERM when the parent dies
            ctypes.CDLL(None).prctl(1, signal.SIGTERM)
        torch.set_num_threads(1)
        answer: tuple = ("ok", fn(arg))
    except BaseException as err:  # noqa: BLE001 - every failure goes back to the parent
        answer = ("error", type(err).__name__, str(err))
    try:
        with os.fdopen(write, "wb") as fh:
            pickle.dump(answer, fh)
    finally:
        os._exit(0)
