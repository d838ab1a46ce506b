"""The core API: one set of async calls for every transport.

Deadlines are absolute ``time.monotonic()`` values (CLOCK_MONOTONIC is one clock for every
process of a host, so they cross the process boundary unchanged); None means no deadline.
Every failure a caller can act on is a ``CoreError`` (core/errors.py).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from semserve.core.types import (
    DEFAULT_RESCORE_MULTIPLIER,
    FLOAT_STORAGE,
    CollectionDescriptor,
    EncodeResult,
    EngineInfo,
    FrontendCounters,
    ModelDescriptor,
    ModelTable,
    ScoreResult,
    SearchHits,
    StoredDocument,
    TokenBatch,
    TokenizerSpec,
    Upserted,
)


class Core(Protocol):
    # Bumped on every model load or unload; a front end refreshes its model table when it changes.
    models_epoch: int

    # -- models ----------------------------------------------------------------------------
    async def models(self) -> ModelTable: ...

    async def tokenizer(self, model: str) -> TokenizerSpec: ...

    async def load_model(self, name: str, kind: str, path: str) -> ModelDescriptor: ...

    async def unload_model(self, name: str) -> None: ...

    # -- inference -------------------------------------------------------------------------
    async def encode(self, model: str, tokens: TokenBatch, deadline: float | None) -> EncodeResult: ...

    async def score(self, model: str, tokens: TokenBatch, raw: bool, deadline: float | None) -> ScoreResult: ...

    # -- collections -----------------------------------------------------------------------
    async def create_collection(self, name: str, model: str, dimension: int, metric: str,
                                document_prompt: str = "", query_prompt: str = "", storage: str = FLOAT_STORAGE,
                                rescore_multiplier: int = DEFAULT_RESCORE_MULTIPLIER) -> CollectionDescriptor: ...

    async def drop_collection(self, name: str) -> None: ...

    async def list_collections(self) -> list[CollectionDescriptor]: ...

    async def get_collection(self, name: str) -> CollectionDescriptor: ...

    async def upsert(
        self, collection: str, ids: list[str], texts: list[str], metadata: list[dict[str, str]],
        vectors: np.ndarray,
    ) -> Upserted: ...

    async def delete(self, collection: str, ids: list[str]) -> int: ...

    async def get_documents(
        self, collection: str, ids: list[str], include_embeddings: bool
    ) -> tuple[list[StoredDocument], list[str]]: ...

    async def search(
        self, collection: str, queries: np.ndarray, top_k: int, where: dict[str, str],
        include_text: bool, include_metadata: bool,
    ) -> SearchHits: ...

    # -- info ------------------------------------------------------------------------------
    async def info(self) -> EngineInfo: ...

    async def report_frontend(self, counters: FrontendCounters) -> None: ...


# The calls a remote caller may make, in the order above (the IPC endpoint serves these only).
CORE_METHODS = (
    "models", "tokenizer", "load_model", "unload_model", "encode", "score",
    "create_collection", "drop_collection", "list_collections", "get_collection",
    "upsert", "delete", "get_documents", "search", "info", "report_frontend",
)
