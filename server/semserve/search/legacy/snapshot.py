"""Snapshots of the earlier format: a collection's live documents and vectors in one file, replaced atomically.

Layout: ``SEMSNAP1 | u64 n | n bytes of JSON (header and documents) | u64 m | m bytes of
float32 little-endian vectors (rows in document order) | u32 crc32 of everything before``.
The file is written to a temporary name, fsync'd, renamed over the old one, and the folder is
fsync'd, so a crash leaves either the old snapshot or the new one, never a mix; the checksum
catches a damaged file instead of loading it.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from semserve.search.files import fsync_dir

MAGIC = b"SEMSNAP1"
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")
FILE_NAME = "snapshot.bin"


class SnapshotError(RuntimeError):
    """A snapshot that cannot be trusted (bad magic, size or checksum)."""


@dataclass
class SnapshotData:
    # Logs with this generation or later hold what happened after the snapshot.
    generation: int
    ids: list[str]
    texts: list[str]
    metadata: list[dict[str, str]]
    vectors: np.ndarray  # (len(ids), dimension) float32


def write_snapshot(directory: Path, data: SnapshotData) -> Path:
    header = {
        "generation": data.generation,
        "dimension": int(data.vectors.shape[1]),
        "documents": [[i, t, m] for i, t, m in zip(data.ids, data.texts, data.metadata)],
    }
    body = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode()
    vectors = np.ascontiguousarray(data.vectors, dtype="<f4").tobytes()
    target = directory / FILE_NAME
    temporary = directory / (FILE_NAME + ".tmp")
    crc = 0
    with open(temporary, "wb") as f:
        for part in (MAGIC, _U64.pack(len(body)), body, _U64.pack(len(vectors)), vectors):
            f.write(part)
            crc = zlib.crc32(part, crc)
        f.write(_U32.pack(crc))
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, target)
    fsync_dir(directory)
    return target


def read_snapshot(directory: Path) -> SnapshotData | None:
    """The collection's snapshot, or None when it has none yet."""
    path = directory / FILE_NAME
    if not path.exists():
        return None
    raw = path.read_bytes()
    if len(raw) < len(MAGIC) + 2 * _U64.size + _U32.size or not raw.startswith(MAGIC):
        raise SnapshotError(f"{path}: not a snapshot file")
    (crc,) = _U32.unpack_from(raw, len(raw) - _U32.size)
    if zlib.crc32(memoryview(raw)[: len(raw) - _U32.size]) != crc:
        raise SnapshotError(f"{path}: checksum mismatch (damaged file)")
    offset = len(MAGIC)
    (body_len,) = _U64.unpack_from(raw, offset)
    offset += _U64.size
    header = json.loads(raw[offset : offset + body_len])
    offset += body_len
    (vectors_len,) = _U64.unpack_from(raw, offset)
    offset += _U64.size
    dimension = header["dimension"]
    documents = header["documents"]
    vectors = np.frombuffer(raw, dtype="<f4", count=vectors_len // 4, offset=offset).astype(np.float32)
    vectors = vectors.reshape(len(documents), dimension)
    return SnapshotData(
        generation=header["generation"],
        ids=[d[0] for d in documents],
        texts=[d[1] for d in documents],
        metadata=[d[2] for d in documents],
        vectors=vectors,
    )
