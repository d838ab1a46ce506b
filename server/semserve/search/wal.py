"""Append-only write-ahead log with group commit and torn-tail detection.

A record is ``u32 length | u32 crc32(payload) | payload`` (little-endian). ``append`` writes a
record to the file (page cache) and returns its sequence number; ``sync(seq)`` returns once an
fsync has covered it. Writers that arrive while an fsync runs are covered together by the next
one, so N concurrent writers cost about two fsyncs, not N: bulk loads stay fast while every
acknowledged write is on disk.

On open, records are read back until the first short or corrupt one. That can only be the tail
a crash cut short (a record is acknowledged only after its fsync, and later records are written
after it), so it was never acknowledged: it is reported, truncated away and never applied.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from semserve.core.errors import ShuttingDown

log = logging.getLogger(__name__)

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


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class WriteAheadLog:
    """One open log file. ``append`` and ``sync`` may be called from many threads."""

    def __init__(self, path: Path):
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._lock = threading.Lock()
        self._synced = threading.Condition(self._lock)
        self._written_seq = 0
        self._synced_seq = 0
        self._syncing = False
        self.records = 0
        self.fsyncs = 0
        self.closed = False

    @classmethod
    def recover(cls, path: Path) -> tuple["WriteAheadLog", ReadResult]:
        """Open an existing log for appending after reading its intact records; a torn tail is cut."""
        result = read_records(path) if path.exists() else ReadResult([], 0, None)
        if result.torn is not None:
            log.warning(
                "write-ahead log %s: %s at byte %d; dropping the last %d bytes (an unacknowledged write cut by a crash)",
                path, result.torn.reason, result.torn.offset, result.torn.dropped_bytes,
            )
            with open(path, "r+b") as f:
                f.truncate(result.end)
                os.fsync(f.fileno())
        wal = cls(path)
        wal.records = len(result.payloads)
        return wal, result

    def append(self, payload: bytes) -> int:
        """Write one record (not yet durable); the returned number is what ``sync`` waits for.

        Callers append in the order they apply changes (under their own lock), so the log
        order is the apply order.
        """
        record = encode_record(payload)
        with self._lock:
            if self.closed:
                raise ShuttingDown("the collection's log is closed: the server is shutting down; retry on another server")
            view = memoryview(record)
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
            self._written_seq += 1
            self.records += 1
            return self._written_seq

    @property
    def written_seq(self) -> int:
        return self._written_seq

    def sync(self, seq: int) -> None:
        """Block until record ``seq`` is on disk; one fsync covers every record written before it starts."""
        with self._lock:
            while self._synced_seq < seq:
                if self._syncing:
                    self._synced.wait()
                    continue
                self._syncing = True
                target = self._written_seq
                self._lock.release()
                try:
                    os.fsync(self._fd)
                finally:
                    self._lock.acquire()
                    self._syncing = False
                self.fsyncs += 1
                self._synced_seq = max(self._synced_seq, target)
                self._synced.notify_all()

    def close(self) -> None:
        with self._lock:
            if self.closed:
                return
            self.closed = True
            os.fsync(self._fd)
            os.close(self._fd)
            # Writers still waiting in sync() are covered by the fsync just done.
            self._synced_seq = self._written_seq
            self._synced.notify_all()

    def size(self) -> int:
        return os.fstat(self._fd).st_size if not self.closed else self.path.stat().st_size


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
