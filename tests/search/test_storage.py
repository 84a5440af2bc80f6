"""Experiment storage (search.storage): local folders and URIs, the record read back."""

from __future__ import annotations

import os
import time
from pathlib import Path

from search.storage import (
    experiment_path,
    join_storage,
    newest_experiment,
    read_record,
    write_record,
)
from trainables.experiment import ExperimentRecord, record_path


def test_join_keeps_a_uris_query_string_at_the_end() -> None:
    uri = "s3://bucket/prefix?endpoint_override=localhost:9000"
    assert (
        join_storage(uri, "exp", "cxr")
        == "s3://bucket/prefix/exp/cxr?endpoint_override=localhost:9000"
    )
    assert join_storage("/runs/", "exp") == "/runs/exp"
    assert experiment_path("s3://b/p", "exp") == "s3://b/p/exp"


def test_record_round_trips_and_the_newest_experiment_is_found(tmp_path: Path) -> None:
    names = ["older", "newer"]
    for i, name in enumerate(names):
        path = experiment_path(str(tmp_path), name)
        record = ExperimentRecord(name=name, metric="val_acc", mode="max", path=path)
        write_record(record)
        assert read_record(path) == record
        stamp = time.time() - 100 + i  # seconds: "newer" was written last
        os.utime(record_path(Path(path)), (stamp, stamp))
    (tmp_path / "not-an-experiment").mkdir()
    assert newest_experiment(str(tmp_path)) == "newer"
    assert read_record(str(tmp_path / "not-an-experiment")) is None
    assert newest_experiment(str(tmp_path / "missing")) is None
