"""Payloads of the earlier format's log records: one upsert batch or one delete batch per record.

``kind (1 byte) | u32 n | n bytes of JSON | float32 little-endian vectors``. A whole request is
one record, so after a crash it is either wholly replayed or wholly absent. Vectors are stored
exactly as the shards received them (already normalised for cosine), so replay is bit-exact.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

import numpy as np

UPSERT = 1
DELETE = 2
_U32 = struct.Struct("<I")


@dataclass
class UpsertBatch:
    ids: list[str]
    texts: list[str]
    metadata: list[dict[str, str]]
    vectors: np.ndarray  # (len(ids), dimension) float32


@dataclass
class DeleteBatch:
    ids: list[str]


def encode_upsert(batch: UpsertBatch) -> bytes:
    body = json.dumps([batch.ids, batch.texts, batch.metadata], ensure_ascii=False, separators=(",", ":")).encode()
    vectors = np.ascontiguousarray(batch.vectors, dtype="<f4").tobytes()
    return bytes([UPSERT]) + _U32.pack(len(body)) + body + vectors


def encode_delete(batch: DeleteBatch) -> bytes:
    body = json.dumps(batch.ids, ensure_ascii=False, separators=(",", ":")).encode()
    return bytes([DELETE]) + _U32.pack(len(body)) + body


def decode(payload: bytes, dimension: int) -> UpsertBatch | DeleteBatch:
    kind = payload[0]
    (n,) = _U32.unpack_from(payload, 1)
    body = json.loads(payload[5 : 5 + n])
    if kind == DELETE:
        return DeleteBatch(ids=body)
    if kind != UPSERT:
        raise ValueError(f"unknown log record kind {kind}")
    ids, texts, metadata = body
    vectors = np.frombuffer(payload, dtype="<f4", offset=5 + n).astype(np.float32).reshape(len(ids), dimension)
    return UpsertBatch(ids=ids, texts=texts, metadata=metadata, vectors=vectors)
