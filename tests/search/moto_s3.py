"""A moto S3 server on the loopback address, for tests of bucket storage: real S3 requests from
pyarrow and boto3, no internet, no credentials of anyone's."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def moto_bucket(bucket: str, log_dir: Path) -> Iterator[tuple[Callable[[str], str], Any]]:
    """(uri of a key prefix in `bucket`, a boto3 client) while a moto server runs; the fake
    credentials are set in os.environ meanwhile."""
    boto3 = pytest.importorskip("boto3")
    port = free_port()
    log = (log_dir / "moto.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    patch = pytest.MonkeyPatch()
    for key, value in CREDENTIALS.items():
        patch.setenv(key, value)
    client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1")
    query = f"endpoint_override=127.0.0.1:{port}&scheme=http&region=us-east-1"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                client.create_bucket(Bucket=bucket)
                break
            except Exception:
                assert server.poll() is None and time.monotonic() < deadline, "no moto server"
                time.sleep(0.3)
        yield (lambda prefix: f"s3://{bucket}/{prefix}?{query}"), client
    finally:
        patch.undo()
        server.terminate()
        server.wait(timeout=30)
        log.close()
