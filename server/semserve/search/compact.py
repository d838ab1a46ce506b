"""Compact storage of a cosine collection's vectors: int8 (a quarter of float32, half of
float16) or binary (one bit a dimension: a thirty-second of float32).

Unit vectors' components lie well inside -0.5..0.5 for the dimensions served (a 384-d
component beyond 0.3 is rare), so each is stored as ``round(x * 254)`` clipped to -127..127: a
fixed scale, the same for every row, which keeps the scan one matmul (the int8 rows are widened
chunk by chunk on the shard's device). These scores only pick candidates: the top ``k x
rescore_multiplier`` of them are scored again exactly from the float32 vectors the collection's
SQLite file holds, and the best k of those are the answer.

Binary rows keep the sign of each component, packed 8 to a byte (``numpy.packbits``). The scan
scores the float query against the row's signs as ±1 (the bits are expanded a chunk at a time
through a 256-entry table): asymmetric, so the query loses nothing, which picks better
candidates than a Hamming distance between two bit strings would. Binary needs more candidates
than int8 for the same recall (docs/benchmarks.md).
"""

from __future__ import annotations

import numpy as np

from semserve.core.types import BINARY_STORAGE as BINARY
from semserve.core.types import FLOAT_STORAGE as FLOAT
from semserve.core.types import INT8_STORAGE as INT8

INT8_SCALE = 254.0


def int8_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows as the int8 shards hold them, as float32 whole numbers (the cast to int8 is exact)."""
    return np.clip(np.rint(vectors * INT8_SCALE), -127, 127).astype(np.float32)


def binary_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows as the binary shards hold them: packed sign bits, as float32 whole numbers 0..255."""
    return np.packbits(vectors > 0, axis=1).astype(np.float32)


def stored_width(storage: str, dimension: int) -> int:
    """Elements per row on the shards."""
    return (dimension + 7) // 8 if storage == BINARY else dimension
