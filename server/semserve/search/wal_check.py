"""Damage in a SQLite WAL file, found before SQLite would silently drop what follows it.

SQLite replays a WAL frame by frame up to the first frame whose checksum fails, and treats the
rest as never written. That is right for the tail of a transaction a crash cut short, and wrong
for damage in the middle: every transaction after it would vanish without a word. The format is
documented (https://www.sqlite.org/fileformat2.html#walformat); this reads it to tell the two
apart: a bad frame followed by a commit frame of the same WAL generation (same salts) beyond
the one that ends the bad frame's own transaction means a whole transaction committed after the
damage, which SQLite would drop, so the collection is refused instead. Otherwise the bad frame
belongs to the transaction in flight at a crash, which was never acknowledged.
"""

from __future__ import annotations

import struct
from pathlib import Path

_HEADER = struct.Struct(">IIIIIIII")  # magic, version, page size, checkpoint seq, salt1, salt2, cksum1, cksum2
_FRAME = struct.Struct(">IIIIII")  # page number, db size after commit (0 if not a commit), salt1, salt2, cksum1, cksum2
_MAGIC_LITTLE, _MAGIC_BIG = 0x377F0682, 0x377F0683
_MASK = 0xFFFFFFFF


def _checksum(data: bytes, big_endian: bool, s0: int, s1: int) -> tuple[int, int]:
    """SQLite's WAL checksum: over 32-bit word pairs, in the byte order the magic names."""
    words = struct.unpack(f"{'>' if big_endian else '<'}{len(data) // 4}I", data)
    for i in range(0, len(words), 2):
        s0 = (s0 + words[i] + s1) & _MASK
        s1 = (s1 + words[i + 1] + s0) & _MASK
    return s0, s1


def wal_damage(path: Path) -> str | None:
    """Why the WAL at ``path`` cannot be replayed without losing committed transactions, or None."""
    if not path.exists():
        return None
    data = path.read_bytes()
    if len(data) < _HEADER.size:
        return None  # no frame was ever written
    magic, _, page_size, _, salt1, salt2, check1, check2 = _HEADER.unpack_from(data)
    if magic not in (_MAGIC_LITTLE, _MAGIC_BIG):
        return None  # no valid header: SQLite ignores the file; nothing committed can be in it
    big_endian = magic == _MAGIC_BIG
    if _checksum(data[:24], big_endian, 0, 0) != (check1, check2):
        return None  # a header never completed: SQLite ignores the file as well
    frame_size = _FRAME.size + page_size
    s0, s1 = check1, check2
    offset = _HEADER.size
    broken_at = None
    broken_is_commit = False
    commits_after = 0
    while offset + frame_size <= len(data):
        _, commit_size, f_salt1, f_salt2, f_check1, f_check2 = _FRAME.unpack_from(data, offset)
        if (f_salt1, f_salt2) != (salt1, salt2):
            if broken_at is None:
                break  # frames of an earlier generation: the valid WAL ends here
            offset += frame_size
            continue
        if broken_at is None:
            frame = data[offset : offset + 8] + data[offset + _FRAME.size : offset + frame_size]
            s0, s1 = _checksum(frame, big_endian, s0, s1)
            if (s0, s1) != (f_check1, f_check2):
                broken_at, broken_is_commit = offset, commit_size != 0
        elif commit_size:
            commits_after += 1
        offset += frame_size
    # The broken frame's own transaction ends at the next commit frame (or at itself): any commit
    # beyond that one closes a transaction that was complete, fsynced and acknowledged.
    if broken_at is not None and commits_after >= (1 if broken_is_commit else 2):
        return (f"{path.name} is damaged at byte {broken_at}: {commits_after} transactions committed after it "
                "would be lost")
    return None
