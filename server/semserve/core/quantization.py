"""Compact embedding outputs: int8/uint8 per dimension, and binary (one bit per dimension).

The semantics are sentence-transformers' ``quantize_embeddings``, so a client can compare the
bytes with what it would compute itself:

- ``int8``/``uint8``: dimension d maps ``lower[d]..upper[d]`` onto 256 steps,
  ``floor((x - lower) / ((upper - lower) / 255))`` clipped to 0..255, minus 128 for int8.
  sentence-transformers
  calibrates the ranges on the batch being quantized, which a server cannot do per request
  (the bytes of a text would depend on its neighbours), so the ranges are the model's own: a
  ``semserve_quantization.json`` (``{"lower": [...], "upper": [...]}``) beside the model,
  measured on representative texts (``semserve quantization-ranges``), or else fixed ranges of
  -1..1, the span of a unit vector's components.
- ``binary``/``ubinary``: ``x > 0`` packed 8 to a byte, first dimension in the high bit
  (``numpy.packbits``); ``binary`` subtracts 128 to give signed bytes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

RANGES_FILE = "semserve_quantization.json"
CALIBRATED, FIXED = "calibrated", "fixed"


@dataclass(frozen=True)
class QuantizationRanges:
    source: str  # CALIBRATED or FIXED
    lower: tuple[float, ...]
    upper: tuple[float, ...]

    @staticmethod
    def fixed(dimension: int) -> "QuantizationRanges":
        return QuantizationRanges(FIXED, (-1.0,) * dimension, (1.0,) * dimension)

    @staticmethod
    def for_model(folder: Path, dimension: int) -> "QuantizationRanges":
        """The folder's calibrated ranges, or fixed ones; ValueError for a file that does not fit."""
        path = Path(folder) / RANGES_FILE
        if not path.exists():
            return QuantizationRanges.fixed(dimension)
        raw = json.loads(path.read_text())
        lower, upper = [float(v) for v in raw["lower"]], [float(v) for v in raw["upper"]]
        if len(lower) != dimension or len(upper) != dimension:
            raise ValueError(f"{path}: {len(lower)}/{len(upper)} ranges for a model of dimension {dimension}")
        if any(u <= lo for lo, u in zip(lower, upper)):
            raise ValueError(f"{path}: every upper bound must exceed its lower bound")
        return QuantizationRanges(CALIBRATED, tuple(lower), tuple(upper))

    @staticmethod
    def measure(embeddings: np.ndarray) -> dict[str, list[float]]:
        """Ranges as sentence-transformers calibrates them: each dimension's min and max."""
        return {"lower": embeddings.min(axis=0).tolist(), "upper": embeddings.max(axis=0).tolist()}


def to_int(embeddings: np.ndarray, ranges: QuantizationRanges, signed: bool) -> np.ndarray:
    dimension = embeddings.shape[1]
    lower = np.asarray(ranges.lower[:dimension], dtype=np.float32)
    upper = np.asarray(ranges.upper[:dimension], dtype=np.float32)
    steps = (upper - lower) / 255
    steps = np.where(steps == 0, 1, steps)
    steps_taken = np.clip(np.floor((embeddings - lower) / steps), 0, 255)
    if signed:
        return (steps_taken - 128).astype(np.int8)
    return steps_taken.astype(np.uint8)


def to_bits(embeddings: np.ndarray, signed: bool) -> np.ndarray:
    packed = np.packbits(embeddings > 0, axis=1)
    return (packed.astype(np.int16) - 128).astype(np.int8) if signed else packed
