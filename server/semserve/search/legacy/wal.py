"""Write-ahead logs of the earlier format: ``u32 length | u32 crc32(payload) | payload`` records.

Read only, to import them. A log ends either cleanly or with a torn tail: the last record cut
short by a crash, never acknowledged, and ignored. Damage is anything else: a bad record with
intact records after it (garbage in the middle of a file), or a bad record in any log but the
newest. Damage is never skipped: the collection is refused and its files left as they are.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

HEADER = struct.Struct("<II")
# A length above this is corruption, not a record (the largest upsert is far below it).
MAX_RECORD_BYTES = 1 << 30


@dataclass
class TornTail:
    """What recovery cut off the end of a log."""

    offset: int  # where the last good record ended
    dropped_bytes: int
    reason: str


@dataclass
class ReadResult:
    payloads: list[bytes]
    end: int  # byte offset after the last good record
    torn: TornTail | None


def encode_record(payload: bytes) -> bytes:
    return HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def read_records(path: Path) -> ReadResult:
    """Every intact record of a log file, and where (and why) the intact part ends."""
    data = path.read_bytes()
    payloads, offset = [], 0
    torn = None
    while offset < len(data):
        if len(data) - offset < HEADER.size:
            torn = TornTail(offset, len(data) - offset, "truncated record header")
            break
        length, crc = HEADER.unpack_from(data, offset)
        start = offset + HEADER.size
        if length > MAX_RECORD_BYTES:
            torn = TornTail(offset, len(data) - offset, f"implausible record length {length}")
            break
        if start + length > len(data):
            torn = TornTail(offset, len(data) - offset, f"record of {length} bytes cut at {len(data) - start}")
            break
        payload = data[start : start + length]
        if zlib.crc32(payload) != crc:
            torn = TornTail(offset, len(data) - offset, "checksum mismatch")
            break
        payloads.append(payload)
        offset = start + length
    return ReadResult(payloads, offset, torn)


def intact_record_after(data: bytes, offset: int) -> int | None:
    """The offset of an intact record starting after ``offset``, if any: proof that what broke
    at ``offset`` is damage in the middle of the log, not a tail cut by a crash."""
    for start in range(offset + 1, len(data) - HEADER.size):
        length, crc = HEADER.unpack_from(data, start)
        end = start + HEADER.size + length
        if 0 < length <= len(data) - start - HEADER.size and data[start + HEADER.size] in (1, 2):
            if zlib.crc32(data[start + HEADER.size : end]) == crc:
                return start
    return None


def iter_log_files(directory: Path) -> Iterator[tuple[int, Path]]:
    """Log files ``wal-<generation>.log`` of a collection, oldest first."""
    found = []
    for path in directory.glob("wal-*.log"):
        stem = path.stem.removeprefix("wal-")
        if stem.isdigit():
            found.append((int(stem), path))
    return iter(sorted(found))


def log_path(directory: Path, generation: int) -> Path:
    return directory / f"wal-{generation:08d}.log"
