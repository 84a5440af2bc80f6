"""One writer per experiment (search.lock): a live holder is refused at once by name, a dead
one's lock is taken over with a message; locally (flock) and on S3 (a conditional write, against
a moto server on loopback). Holders are real processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from moto_s3 import moto_bucket

from search.lock import LockedError, experiment_lock
from trainables.experiment import LOCK_FILE, LockHolder, parse_lock

REPO = Path(__file__).resolve().parents[2]
HOLD = """
import sys, time
from search.lock import experiment_lock
with experiment_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(600)
"""


def _holder(path: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, path],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def _kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


def test_local_lock_refuses_a_live_holder_and_takes_over_a_killed_one(tmp_path: Path) -> None:
    exp = tmp_path / "runs" / "exp"
    holder = _holder(str(exp))
    try:
        started = time.monotonic()
        with pytest.raises(LockedError) as refused:
            with experiment_lock(str(exp)):
                pass
        assert time.monotonic() - started < 1.0  # at once, not after a wait
        message = str(refused.value)
        assert f"pid {holder.pid} on host {socket.gethostname()}" in message
        assert str(exp / LOCK_FILE) in message
    finally:
        _kill(holder)  # SIGKILL: no clean-up ran, the file still names the dead holder
    assert parse_lock((exp / LOCK_FILE).read_text()).pid == holder.pid
    notes: list[str] = []
    with experiment_lock(str(exp), notes) as me:
        assert parse_lock((exp / LOCK_FILE).read_text()) == me
    assert len(notes) == 1
    assert notes[0].startswith(
        f"took over the stale lock of pid {holder.pid} on host {socket.gethostname()} since "
    )
    assert notes[0].endswith("(that process is gone)")
    # A clean release leaves an empty file: the next holder takes it without a stale note.
    assert (exp / LOCK_FILE).read_text() == ""
    notes = []
    with experiment_lock(str(exp), notes):
        pass
    assert notes == []


@pytest.fixture(scope="module")
def s3_uri(tmp_path_factory):
    with moto_bucket("locks", tmp_path_factory.mktemp("moto")) as (uri, client):
        yield uri("runs/exp"), client


def test_s3_lock_is_a_conditional_write_refused_while_held(s3_uri) -> None:
    uri, client = s3_uri
    holder = _holder(uri)
    try:
        body = client.get_object(Bucket="locks", Key=f"runs/exp/{LOCK_FILE}")["Body"].read()
        assert parse_lock(body.decode()).pid == holder.pid
        with pytest.raises(LockedError) as refused:
            with experiment_lock(uri):
                pass
        assert f"pid {holder.pid} on host {socket.gethostname()}" in str(refused.value)
    finally:
        _kill(holder)
    # The killed holder's marker stays; its pid is gone on this host, so it is taken over.
    notes: list[str] = []
    with experiment_lock(uri, notes):
        assert "took over the stale lock of pid" in notes[0]
    listed = client.list_objects_v2(Bucket="locks", Prefix="runs/exp/").get("Contents", [])
    assert listed == []  # a clean exit deletes the marker


def test_s3_lock_of_another_host_is_refused_naming_the_object(s3_uri) -> None:
    uri, client = s3_uri
    other = LockHolder(pid=1, host="elsewhere", started="2026-01-01T00:00:00+00:00")
    client.put_object(Bucket="locks", Key=f"runs/exp/{LOCK_FILE}", Body=other.to_json())
    try:
        with pytest.raises(LockedError) as refused:
            with experiment_lock(uri):
                pass
        assert "pid 1 on host elsewhere" in str(refused.value)
        assert f"s3://locks/runs/exp/{LOCK_FILE}" in str(refused.value)
    finally:
        client.delete_object(Bucket="locks", Key=f"runs/exp/{LOCK_FILE}")


def test_the_holders_command_is_quoted_as_typed(monkeypatch, capsys) -> None:
    from cxr_tune import cli
    from search.lock import this_holder

    monkeypatch.setattr(sys, "argv", ["/venv/bin/cxr-tune", "models", "--help"])
    # The dispatcher runs `models --help`; the command is then what the user typed, once.
    assert cli.main(sys.argv[1:]) == 0
    assert this_holder().command == "cxr-tune models --help"
    monkeypatch.setattr(sys, "argv", ["cxr-tune sweep", "--space", "my space.py"])
    assert this_holder().command == "cxr-tune sweep --space 'my space.py'"
    capsys.readouterr()
