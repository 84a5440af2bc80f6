"""One writer per experiment: the lock a sweep holds on `STORAGE/NAME` while it runs.

The file's name and format belong to `trainables.experiment` (`LOCK_FILE`, `LockHolder`); this
module takes and releases it.

- Local (and NFS) storage: `LOCK_FILE` is opened and locked with `fcntl.flock(LOCK_EX | LOCK_NB)`
  for the whole run. The kernel drops the lock when its process dies, however it dies (SIGKILL
  included), so a dead holder never blocks anyone; a second process asking while the holder
  lives is refused at once, naming the pid, host and start time written in the file. The file is
  never deleted (deleting a flock file lets two processes lock two different inodes); a clean
  exit empties it, so a lock file that still names a holder when the lock is free was left by a
  process that died, and the new holder says it took that stale lock over.
- `s3://` storage: the lock is an object `NAME/cxr_tune.lock` created with a conditional write
  (`PutObject` with `If-None-Match: *`, which S3 and moto honour): exactly one of two
  concurrent creators succeeds. An object store cannot tell whether the holder still lives, so
  a lock held by this host whose pid is gone is taken over (deleted and created again, still
  conditionally); one held by another host is refused, naming it and the object to delete if
  that process is known to be gone. A clean exit deletes the object.
- Other URIs (gs://, ...) are not locked; the driver says so.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from cxr_tune import typed_command
from search.storage import is_uri
from trainables.experiment import LOCK_FILE, LockHolder, parse_lock


class LockError(ValueError):
    """The lock cannot be taken: the storage refused (the message says why, in one line)."""


class LockedError(LockError):
    """The experiment is held by another live process (the message names it)."""


def this_holder() -> LockHolder:
    command = typed_command()[:200]
    started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    return LockHolder(os.getpid(), socket.gethostname(), started, command)


@contextlib.contextmanager
def experiment_lock(experiment_path: str, notes: list[str] | None = None) -> Iterator[LockHolder]:
    """Hold the lock of the experiment at `experiment_path` (local path or s3:// URI).

    Raises `LockedError` naming the holder when another live process has it; a stale lock is
    taken over and a line saying so is appended to `notes`.
    """
    notes = notes if notes is not None else []
    if experiment_path.startswith("s3://"):
        with _s3_lock(experiment_path, notes) as holder:
            yield holder
    elif is_uri(experiment_path):
        notes.append(
            f"{experiment_path.split('://')[0]}:// storage is not locked (only local folders "
            f"and s3:// are): make sure no other run uses this experiment"
        )
        yield this_holder()
    else:
        with _file_lock(Path(experiment_path), notes) as holder:
            yield holder


@contextlib.contextmanager
def _file_lock(experiment_dir: Path, notes: list[str]) -> Iterator[LockHolder]:
    created = not experiment_dir.exists()
    experiment_dir.mkdir(parents=True, exist_ok=True)
    path = experiment_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # O_CLOEXEC: no child inherits it
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise LockedError(_refusal(experiment_dir, _read_fd(fd), str(path))) from None
        previous = parse_lock(_read_fd(fd))
        if previous is not None:
            notes.append(
                f"took over the stale lock of {previous.describe()} (that process is gone)"
            )
        holder = this_holder()
        _write_fd(fd, holder.to_json())
        try:
            yield holder
        finally:
            _write_fd(fd, "")  # free: an empty file names nobody
            if created and os.listdir(experiment_dir) == [LOCK_FILE]:
                # refused before anything was written (pre-flight, a bad flag): leave no folder
                path.unlink()
                experiment_dir.rmdir()
    finally:
        os.close(fd)  # closing drops the flock


def _read_fd(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    return os.read(fd, 64 * 1024).decode(errors="replace")


def _write_fd(fd: int, text: str) -> None:
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, text.encode())
    os.fsync(fd)


def _refusal(where: object, text: str, lock: str) -> str:
    holder = parse_lock(text)
    who = holder.describe() if holder else "another process"
    cmd = f" ({holder.command})" if holder and holder.command else ""
    return (
        f"experiment {where} is in use by {who}{cmd}; wait for it to finish, or stop it "
        f"(lock {lock})"
    )


# --- s3:// ---------------------------------------------------------------------------------------


def _s3_client_and_key(experiment_uri: str) -> tuple[object, str, str]:
    """A boto3 client for the URI's endpoint (pyarrow's query options) and the lock's key."""
    import boto3

    url = urlsplit(experiment_uri)
    query = {k: v[-1] for k, v in parse_qs(url.query).items()}
    endpoint = query.get("endpoint_override")
    if endpoint and "://" not in endpoint:
        endpoint = f"{query.get('scheme', 'https')}://{endpoint}"
    client = boto3.client("s3", endpoint_url=endpoint, region_name=query.get("region"))
    key = "/".join(p for p in (url.path.strip("/"), LOCK_FILE) if p)
    return client, url.netloc, key


@contextlib.contextmanager
def _s3_lock(experiment_uri: str, notes: list[str]) -> Iterator[LockHolder]:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        holder = _s3_take(experiment_uri, notes)
    except (BotoCoreError, ClientError) as err:
        raise LockError(
            f"--storage {experiment_uri}: cannot create its lock object: {err}"
        ) from None
    client, bucket, key = _s3_client_and_key(experiment_uri)
    try:
        yield holder
    finally:
        with contextlib.suppress(Exception):  # the sweep's result matters more than the marker
            client.delete_object(Bucket=bucket, Key=key)


def _s3_take(experiment_uri: str, notes: list[str]) -> LockHolder:
    client, bucket, key = _s3_client_and_key(experiment_uri)
    holder = this_holder()
    where = f"s3://{bucket}/{key}"
    if not _s3_create(client, bucket, key, holder):
        previous = _s3_read(client, bucket, key)
        if not _is_stale(previous):
            raise LockedError(
                _refusal(experiment_uri, previous.to_json() if previous else "", where)
                + "; if that process is gone, delete that object"
            )
        client.delete_object(Bucket=bucket, Key=key)
        if not _s3_create(client, bucket, key, holder):
            raise LockedError(_refusal(experiment_uri, "", where))
        notes.append(f"took over the stale lock of {previous.describe()} (that process is gone)")
    return holder


def _s3_create(client: object, bucket: str, key: str, holder: LockHolder) -> bool:
    """Create the marker only if no object has the key; False when one already does."""
    from botocore.exceptions import ClientError

    try:
        client.put_object(Bucket=bucket, Key=key, Body=holder.to_json().encode(), IfNoneMatch="*")
        return True
    except ClientError as err:
        code = err.response.get("Error", {}).get("Code", "")
        if code in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409"):
            return False
        raise


def _s3_read(client: object, bucket: str, key: str) -> LockHolder | None:
    from botocore.exceptions import ClientError

    try:
        return parse_lock(client.get_object(Bucket=bucket, Key=key)["Body"].read().decode())
    except ClientError:
        return None


def _is_stale(holder: LockHolder | None) -> bool:
    """Only a holder on this host can be proven gone (its pid no longer exists)."""
    if holder is None or holder.host != socket.gethostname():
        return False
    try:
        os.kill(holder.pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False
