"""What crosses the core API: flat arrays and small records, never per-text objects.

Everything here pickles cheaply (NumPy arrays travel as out-of-band buffers over IPC), so the
same values serve the in-process core and the cross-process one.
"""

from __future__ import annotations

import copyreg
import re
from dataclasses import dataclass, field

import numpy as np

from semserve.core.quantization import QuantizationRanges

ENCODER = "encoder"
CROSS_ENCODER = "cross_encoder"
COSINE = "cosine"
DOT = "dot"
# How a collection's shards hold its vectors (search/compact.py), and how many candidates per
# result a compact scan hands to exact rescoring unless the collection says otherwise.
FLOAT_STORAGE, INT8_STORAGE, BINARY_STORAGE = "float", "int8", "binary"
STORAGES = (FLOAT_STORAGE, INT8_STORAGE, BINARY_STORAGE)
DEFAULT_RESCORE_MULTIPLIER = 4
# Collection names: also folder names under the data dir, so nothing that could escape it.
COLLECTION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


# Arrays up to this size travel inside the pickled header; larger ones as frames of their own.
_INLINE_BYTES = 16384


def _pack_array(array: np.ndarray | None):
    """Small arrays as bytes (cheaper to pickle than an out-of-band buffer); large ones as is."""
    if array is None or array.nbytes > _INLINE_BYTES:
        return array
    return (array.tobytes(), array.dtype.str, array.shape)


_DTYPES: dict[str, np.dtype] = {}


def _unpack_array(packed) -> np.ndarray | None:
    if packed is None or isinstance(packed, np.ndarray):
        return packed
    data, name, shape = packed
    dtype = _DTYPES.get(name)
    if dtype is None:  # parsing a dtype string costs more than the rest of the rebuild
        dtype = _DTYPES[name] = np.dtype(name)
    array = np.frombuffer(data, dtype=dtype)
    return array if len(shape) == 1 else array.reshape(shape)


@dataclass(slots=True)
class TokenBatch:
    """Token ids of a request's inputs, flat: input i is ``ids[offsets[i]:offsets[i + 1]]``.

    As TEI's queue hands its backend ``input_ids`` and cumulative lengths, one request is three
    arrays whatever its size, so the engine's Python work is per request, not per text.
    ``type_ids`` (segment ids) is present for (query, document) pairs only.
    """

    ids: np.ndarray  # int32, (total,)
    offsets: np.ndarray  # int64, (n + 1,)
    type_ids: np.ndarray | None = None  # int8, (total,)
    _lengths: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def lengths(self) -> np.ndarray:
        if self._lengths is None:
            self._lengths = np.diff(self.offsets)
        return self._lengths

    def __reduce__(self):
        return _token_batch, (_pack_array(self.ids), _pack_array(self.offsets), _pack_array(self.type_ids))

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def total_tokens(self) -> int:
        return int(self.offsets[-1])

    @staticmethod
    def from_lists(ids: list[list[int]], type_ids: list[list[int]] | None = None) -> "TokenBatch":
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        offsets = np.zeros(len(ids) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        flat = np.fromiter((t for x in ids for t in x), dtype=np.int32, count=int(offsets[-1]))
        types = None
        if type_ids is not None:
            types = np.fromiter((t for x in type_ids for t in x), dtype=np.int8, count=int(offsets[-1]))
        return TokenBatch(flat, offsets, types)


@dataclass(slots=True)
class Timing:
    """Where a request's time went; the front end adds tokenization and the total."""

    queue_s: float = 0.0
    tokenization_s: float = 0.0
    inference_s: float = 0.0
    # Time between the front end and the engine: round trips less the engine's own time.
    transport_s: float = 0.0
    compute_tokens: int = 0
    padded_tokens: int = 0
    batches: int = 0

    def __reduce__(self):
        return Timing, (self.queue_s, self.tokenization_s, self.inference_s, self.transport_s, self.compute_tokens,
                        self.padded_tokens, self.batches)

    def merge(self, other: "Timing") -> None:
        self.queue_s = max(self.queue_s, other.queue_s)
        self.tokenization_s += other.tokenization_s
        self.inference_s += other.inference_s
        self.transport_s += other.transport_s
        self.compute_tokens += other.compute_tokens
        self.padded_tokens += other.padded_tokens
        self.batches += other.batches


@dataclass(slots=True)
class EncodeResult:
    vectors: np.ndarray  # float32 (n, dimension), not normalised unless the model's folder does it
    timing: Timing

    def __reduce__(self):
        return _encode_result, (_pack_array(self.vectors), self.timing)


@dataclass(slots=True)
class ScoreResult:
    scores: np.ndarray  # float32 (n,) for one label, (n, labels) otherwise
    timing: Timing

    def __reduce__(self):
        return _score_result, (_pack_array(self.scores), self.timing)


# Rebuilders for pickle (module-level functions pickle by name).
def _token_batch(ids, offsets, type_ids) -> TokenBatch:
    return TokenBatch(_unpack_array(ids), _unpack_array(offsets), _unpack_array(type_ids))


def _encode_result(vectors, timing) -> EncodeResult:
    return EncodeResult(_unpack_array(vectors), timing)


def _score_result(scores, timing) -> ScoreResult:
    return ScoreResult(_unpack_array(scores), timing)


def _search_hits(hits, timing, columns) -> "SearchHits":
    return SearchHits(hits, timing, columns)


@dataclass(slots=True)
class ModelCounters:
    batches: int = 0
    items: int = 0
    tokens: int = 0
    padded_tokens: int = 0
    queued_items: int = 0
    rejected_requests: int = 0
    active_requests: int = 0


@dataclass(slots=True)
class BatchingInfo:
    """How a model's batcher cuts batches, and where the numbers came from."""

    policy: str  # "measured" or "fixed"
    max_batch_tokens: int
    max_batch_size: int
    # Measured throughput at the chosen budget, all devices together (0 when not measured).
    tokens_per_s: float = 0.0
    calibration_s: float = 0.0
    from_cache: bool = False
    graph_batch_sizes: list[int] = field(default_factory=list)


@dataclass(slots=True)
class ModelDescriptor:
    """A hosted model as callers see it. ``load_id`` changes when a name is loaded again."""

    name: str
    kind: str
    load_id: int
    dimension: int
    max_tokens: int
    devices: list[str]
    dtype: str
    path: str
    pooling: str
    is_default: bool
    counters: ModelCounters | None = None
    batching: BatchingInfo | None = None
    # Encoders: the ranges of the int8/uint8 output formats (core/quantization.py).
    quantization: QuantizationRanges | None = None
    # Encoders: prompts by name, and the one applied when a request names none.
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None


@dataclass(slots=True)
class TokenizerSpec:
    """Everything a front end needs to tokenize for a model without loading it."""

    name: str
    load_id: int
    tokenizer_json: str
    max_tokens: int
    lowercase: bool
    pad_id: int


@dataclass(slots=True)
class ModelTable:
    epoch: int
    models: list[ModelDescriptor]


# States of a collection.
READY = "ready"
FAILED = "failed"


@dataclass(slots=True)
class CollectionDescriptor:
    name: str
    model: str
    dimension: int
    metric: str
    count: int = 0
    shards: int = 0
    devices: list[str] = field(default_factory=list)
    bytes: int = 0
    dtype: str = ""
    durable: bool = False
    document_prompt: str = ""
    query_prompt: str = ""
    storage: str = FLOAT_STORAGE
    rescore_multiplier: int = DEFAULT_RESCORE_MULTIPLIER
    state: str = "ready"  # READY, or FAILED with failure_reason (see search/store.py)
    failure_reason: str = ""
    failure_code: str = ""  # the status name its calls answer while FAILED


@dataclass(slots=True)
class Hit:
    id: str
    score: float
    text: str = ""
    metadata: dict[str, str] | None = None
    # False when the document was deleted between scoring and reading its text.
    present: bool = True


class SearchHits:
    """A search's hits, per query best first, and its timing (``inference_s``: the scan and
    the reads of text and metadata; ``transport_s``: the hop to the engine, when there is one).

    Hits without text or metadata are held as ``columns``: per query, a list of ids and a list
    of scores. Those pickle as plain lists of strings and floats (C loops) and become ``Hit``
    objects only where ``hits`` is read; a ``Hit`` per result, built in the engine and pickled
    field by field, cost about a microsecond a hit on each side of the hop.
    """

    __slots__ = ("_hits", "columns", "timing")

    def __init__(self, hits: list[list[Hit]] | None, timing: Timing,
                 columns: tuple[list[list[str]], list[list[float]]] | None = None):
        if (hits is None) == (columns is None):
            raise ValueError("SearchHits takes hits or columns")
        self._hits = hits
        self.columns = columns
        self.timing = timing

    @classmethod
    def from_columns(cls, ids: list[list[str]], scores: list[list[float]], timing: Timing) -> "SearchHits":
        return cls(None, timing, (ids, scores))

    @property
    def hits(self) -> list[list[Hit]]:
        if self._hits is None:
            ids, scores = self.columns
            self._hits = [list(map(Hit, i, s)) for i, s in zip(ids, scores)]
        return self._hits

    def __reduce__(self):
        return _search_hits, (self._hits if self.columns is None else None, self.timing, self.columns)


@dataclass(slots=True)
class Upserted:
    """How many documents an upsert stored, and its timing (``transport_s``: the hop to the
    engine, when there is one; the commit itself is the rest of the call's total)."""

    count: int
    timing: Timing


@dataclass(slots=True)
class StoredDocument:
    id: str
    text: str
    metadata: dict[str, str]
    embedding: np.ndarray | None = None


@dataclass(slots=True)
class FrontendCounters:
    """What one front-end process reports about itself (for GetInfo and metrics)."""

    index: int
    pid: int
    requests: int = 0
    # CallMetrics.snapshot(): calls by method and status, latency and tokenization histograms.
    metrics: dict = field(default_factory=dict)


@dataclass(slots=True)
class EngineInfo:
    models: list[ModelDescriptor]
    frontends: list[FrontendCounters]


# Pickle extension codes (copyreg's "private use" range, 240-255) for what every message
# between a front end and the engine carries. An unpickler resolves a known code from its cache;
# a class or function named in full goes through ``find_class``, whose audit event runs every
# Python audit hook in the process: one that filelock (imported with transformers) installs on
# Python 3.12 cost the engine about 4 us per message (docs/benchmarks.md). Every process of a
# server imports this module before it pickles or unpickles a message.
_WIRE_EXTENSIONS = {240: "_token_batch", 241: "_encode_result", 242: "_score_result", 243: "Timing",
                    244: "Hit", 245: "_search_hits", 246: "Upserted"}


def _register_wire_extensions() -> None:
    for code, name in _WIRE_EXTENSIONS.items():
        try:
            copyreg.add_extension(__name__, name, code)
        except ValueError:  # the code is taken in this process: that name pickles in full, still correct
            pass


_register_wire_extensions()
