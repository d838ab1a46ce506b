"""int8 storage of a cosine collection's vectors: a quarter of float32, half of float16.

Unit vectors' components lie well inside -0.5..0.5 for the dimensions served (a 384-d
component beyond 0.3 is rare), so each is stored as ``round(x * 254)`` clipped to -127..127: a
fixed scale, the same for every row, which keeps the scan one matmul (the int8 rows are widened
chunk by chunk on the shard's device). These scores only pick candidates: the top ``k x
rescore_multiplier`` of them are scored again exactly from the float32 vectors the collection's
SQLite file holds, and the best k of those are the answer.
"""

from __future__ import annotations

import numpy as np

FLOAT, INT8 = "float", "int8"
STORAGES = (FLOAT, INT8)
INT8_SCALE = 254.0
DEFAULT_RESCORE_MULTIPLIER = 4


def int8_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows as the int8 shards hold them, as float32 whole numbers (the cast to int8 is exact)."""
    return np.clip(np.rint(vectors * INT8_SCALE), -127, 127).astype(np.float32)
