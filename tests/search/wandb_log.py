"""Read W&B's offline `.wandb` run files back into `Record` protobufs (test helper).

wandb 0.31 writes run files from its Go core and ships no Python reader. The framing is a
LevelDB-style log: a 7-byte file header (`:W&B`, magic 0xBEE1 little-endian, version 0), then
32 KiB blocks of records, each with a 7-byte header: CRC-32 (zlib's) of type byte + payload,
payload length as uint16, type FULL=1 / FIRST=2 / MIDDLE=3 / LAST=4. A block tail shorter than
a header is zero padding. Payloads are `wandb_internal_pb2.Record` messages.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

from wandb.proto import wandb_internal_pb2

FILE_HEADER = struct.Struct("<4sHB")
RECORD_HEADER = struct.Struct("<IHB")
BLOCK = 32 * 1024
IDENT, MAGIC = b":W&B", 0xBEE1
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_payloads(path: Path) -> list[bytes]:
    data = Path(path).read_bytes()
    ident, magic, version = FILE_HEADER.unpack_from(data, 0)
    if ident != IDENT or magic != MAGIC or version != 0:
        raise ValueError(f"{path} is not a W&B run file (header {ident!r} {magic:#x} {version})")
    pos, payloads, pending = FILE_HEADER.size, [], None
    while pos + RECORD_HEADER.size <= len(data):
        left_in_block = BLOCK - pos % BLOCK
        if left_in_block < RECORD_HEADER.size:
            pos += left_in_block  # zero padding at the end of a block
            continue
        crc, length, kind = RECORD_HEADER.unpack_from(data, pos)
        if length == 0 and kind == 0:
            break  # zeroed tail of a file that was not closed
        start = pos + RECORD_HEADER.size
        chunk = data[start : start + length]
        if zlib.crc32(bytes([kind]) + chunk) != crc:
            raise ValueError(f"{path}: CRC mismatch at offset {pos}")
        pos = start + length
        if kind == FULL:
            payloads.append(chunk)
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE and pending is not None:
            pending += chunk
        elif kind == LAST and pending is not None:
            payloads.append(pending + chunk)
            pending = None
        else:
            raise ValueError(f"{path}: unexpected record type {kind} at offset {pos}")
    return payloads


def read_records(path: Path) -> list[wandb_internal_pb2.Record]:
    records = []
    for payload in read_payloads(path):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        records.append(record)
    return records


def history_rows(path: Path) -> list[dict[str, str]]:
    """Each `history` record as {key: JSON-encoded value}."""
    rows = []
    for record in read_records(path):
        if record.WhichOneof("record_type") == "history":
            rows.append(
                {
                    item.key or "/".join(item.nested_key): item.value_json
                    for item in record.history.item
                }
            )
    return rows


def records_of(path: Path, kind: str) -> list:
    """The `kind` sub-messages (`run`, `summary`, `artifact`, ...) in file order."""
    return [getattr(r, kind) for r in read_records(path) if r.WhichOneof("record_type") == kind]


def final_summary(path: Path) -> dict[str, str]:
    """The run's summary as `wandb sync` would upload it: every summary update applied in file
    order, {key (nested keys joined by '.'): JSON-encoded value}."""
    summary: dict[str, str] = {}
    for record in records_of(path, "summary"):
        for item in record.update:
            summary[item.key or ".".join(item.nested_key)] = item.value_json
    return summary


def final_run(path: Path):
    """The last `run` record (W&B rewrites it when tags or config change)."""
    return records_of(path, "run")[-1]
