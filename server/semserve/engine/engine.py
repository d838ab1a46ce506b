"""The engine: models, their batchers and device workers, and the collection store.

``Engine`` is the in-process implementation of the core API (core/api.py). A single-process
server calls it directly; ``semserve serve --frontends N`` runs it in its own process behind
the IPC endpoint (ipc/endpoint.py), and front ends reach it through ``RemoteCore``. Either way
it receives token ids, never text to tokenize, and its Python work is per request and per
batch: requests are queued whole and batches are cut from arrays of lengths.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from semserve.config import ModelSpec, ServerConfig
from semserve.core.errors import CollectionFailed, FailedPrecondition, InvalidArgument
from semserve.core.types import (
    COSINE,
    CROSS_ENCODER,
    DEFAULT_RESCORE_MULTIPLIER,
    DOT,
    ENCODER,
    FAILED,
    FLOAT_STORAGE,
    READY,
    STORAGES,
    CollectionDescriptor,
    EncodeResult,
    EngineInfo,
    FrontendCounters,
    Hit,
    ModelDescriptor,
    ModelTable,
    ScoreResult,
    SearchHits,
    StoredDocument,
    Timing,
    TokenBatch,
    TokenizerSpec,
    Upserted,
)
from semserve.engine.batching import QueuedRequest
from semserve.engine.registry import HostedModel, ModelRegistry, describe, load_model
from semserve.engine.stats import SEARCH_SECONDS, record_request
from semserve.engine.runtime.devices import resolve_devices
from semserve.models.errors import ModelLoadError
from semserve.search.collection import Collection
from semserve.search.store import CollectionStore

log = logging.getLogger(__name__)

# At shutdown, how long batches already on a device may finish: none. The engine stops after the
# front end(s), whose calls have finished or been cancelled at the end of the grace period, and
# after the store is closed, so no batch still running has anyone to answer (SIGTERM exits by
# grace + 1 s even when a CPU batch takes seconds).
BATCH_STOP_WAIT_S = 0.0

METRICS = (COSINE, DOT)


class Engine:
    def __init__(self, config: ServerConfig):
        config.validate()
        self.config = config
        self.devices = resolve_devices(config.device)
        self.registry = ModelRegistry()
        # Every engine of a per-device server but the first leaves the store to that one.
        self.store: CollectionStore | None = (CollectionStore(config.search, self.devices)
                                              if config.holds_collections else None)
        self.models_epoch = 0
        self._pool = ThreadPoolExecutor(config.search.threads, thread_name_prefix="search")
        self._frontends: dict[int, FrontendCounters] = {}
        self._maintenance: asyncio.Task | None = None

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def collections(self) -> CollectionStore:
        if self.store is None:  # front ends send collection calls to the first engine only
            raise FailedPrecondition("this engine process holds no collections: they are served by the first engine")
        return self.store

    @property
    def calibration_dir(self):
        """Batching measurements are cached in the data dir, so restarts skip them."""
        data_dir = self.config.search.data_dir
        return data_dir / "calibration" if data_dir is not None else None

    def _load(self, spec: ModelSpec) -> HostedModel:
        cfg = self.config
        return load_model(spec, self.devices, cfg.dtype, cfg.batching, cfg.cuda_graphs, self.calibration_dir,
                          cfg.unpadded)

    def load_models(self) -> None:
        """Load every configured model (blocking; before serving)."""
        for spec in (*self.config.encoders, *self.config.rerankers):
            self.registry.add(self._load(spec))
        self.models_epoch += 1

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if not len(self.registry):
            await loop.run_in_executor(None, self.load_models)
        for model in self.registry:
            model.batcher.start()
        # Collections are recovered (snapshot + log replay) before anything is served.
        if self.store is not None:
            await loop.run_in_executor(self._pool, self.store.open)
            self._maintenance = loop.create_task(self._maintain_forever())

    async def stop(self) -> None:
        """Stop maintenance, close the store cleanly (snapshots, logs), stop every batcher."""
        if self._maintenance is not None:
            self._maintenance.cancel()
        if self.store is not None:
            await asyncio.get_running_loop().run_in_executor(self._pool, self.store.close)
        self._pool.shutdown(wait=False)
        await self.registry.stop_all(wait_s=BATCH_STOP_WAIT_S)

    async def _maintain_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.collections.config.maintenance_interval_s)
            try:
                await loop.run_in_executor(self._pool, self.collections.maintain)
            except Exception:  # keep maintaining; the next round retries
                log.exception("search maintenance failed")

    def models_summary(self) -> str:
        return "models: " + ", ".join(
            f"{m.name} ({m.kind}, dim {m.dimension}, max_tokens {m.max_tokens})" for m in self.registry)

    def summary(self) -> str:
        return f"{self.models_summary()}; devices: {', '.join(self.devices)}"

    async def _blocking(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    # -- models ----------------------------------------------------------------------------

    async def models(self) -> ModelTable:
        return ModelTable(self.models_epoch, [describe(m, self.registry.is_default(m)) for m in self.registry])

    async def tokenizer(self, model: str) -> TokenizerSpec:
        return self.registry.find(model).tokenizer

    async def load_model(self, name: str, kind: str, path: str) -> ModelDescriptor:
        if kind not in (ENCODER, CROSS_ENCODER):
            raise InvalidArgument(f"unknown model kind {kind!r}")
        self.registry.reserve(name)
        try:
            spec = ModelSpec.parse(f"{name}={path}", kind)
            try:
                model = await asyncio.get_running_loop().run_in_executor(None, self._load, spec)
            except ModelLoadError as exc:
                raise FailedPrecondition(f"cannot load {path}: {exc}") from None
            model.batcher.start()
            self.registry.add(model)
            self.models_epoch += 1
        finally:
            self.registry.release(name)
        log.info("loaded %s (%s) from %s", model.name, model.kind, model.path)
        return describe(model, self.registry.is_default(model))

    async def unload_model(self, name: str) -> None:
        model = self.registry.remove(name)
        self.models_epoch += 1
        grace = self.config.grace_period_s
        if not await model.wait_idle(grace):
            log.warning("unloading %s with %d request(s) still running after %.0fs", name, model.active_requests, grace)
        await model.batcher.stop()
        model.replicas.clear()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        log.info("unloaded %s", name)

    # -- inference -------------------------------------------------------------------------

    async def _run(self, model: HostedModel, tokens: TokenBatch, deadline: float | None) -> QueuedRequest:
        if not len(tokens):
            raise InvalidArgument("no inputs given")
        longest = int(tokens.lengths.max())
        if longest > model.max_tokens:
            raise InvalidArgument(f"an input has {longest} tokens, over model {model.name!r}'s max_tokens {model.max_tokens}")
        model.active_requests += 1  # an unload waits for these (HostedModel.wait_idle)
        try:
            future = model.batcher.submit(tokens, deadline)
            try:
                request = await future
                record_request(model.name, request.timing.queue_s, request.timing.inference_s)
                return request
            finally:
                if not future.done():  # the call was cancelled: its queued inputs are dropped
                    future.cancel()
        finally:
            model.release()

    async def encode(self, model: str, tokens: TokenBatch, deadline: float | None) -> EncodeResult:
        request = await self._run(self.registry.get(model, ENCODER), tokens, deadline)
        return EncodeResult(request.outputs.astype(np.float32, copy=False), request.timing)

    async def score(self, model: str, tokens: TokenBatch, raw: bool, deadline: float | None) -> ScoreResult:
        hosted = self.registry.get(model, CROSS_ENCODER)
        request = await self._run(hosted, tokens, deadline)
        head = hosted.replicas[0]
        logits = torch.from_numpy(request.outputs)
        scores = (head.raw_scores(logits) if raw else head.activate(logits)).float().numpy()
        return ScoreResult(scores, request.timing)

    # -- collections -----------------------------------------------------------------------

    def _describe(self, collection: Collection) -> CollectionDescriptor:
        spec, d = collection.spec, collection.describe()
        failure = collection.failure
        return CollectionDescriptor(
            name=spec.name, model=spec.model, dimension=spec.dimension, metric=spec.metric, count=d["count"],
            shards=d["shards"], devices=d["devices"], bytes=d["bytes"], dtype=d["dtype"], durable=self.collections.durable,
            document_prompt=spec.document_prompt, query_prompt=spec.query_prompt, storage=spec.storage,
            rescore_multiplier=spec.rescore_multiplier, state=FAILED if failure else READY, failure_reason=failure.message if failure else "",
            failure_code=failure.code if failure else "",
        )

    def _describe_failed(self, name: str) -> CollectionDescriptor:
        return CollectionDescriptor(name=name, model="", dimension=0, metric="", durable=self.collections.durable,
                                    state=FAILED, failure_reason=self.collections.failure_message(name),
                                    failure_code=CollectionFailed.code)

    async def create_collection(self, name: str, model: str, dimension: int, metric: str,
                                document_prompt: str = "", query_prompt: str = "", storage: str = FLOAT_STORAGE,
                                rescore_multiplier: int = DEFAULT_RESCORE_MULTIPLIER) -> CollectionDescriptor:
        if metric not in METRICS:
            raise InvalidArgument(f"unknown metric {metric!r}")
        if not 1 <= dimension <= self.config.limits.max_dimension:
            raise InvalidArgument(
                f"dimension must be in 1..{self.config.limits.max_dimension} (max_dimension), got {dimension}"
            )
        if model:
            hosted = self.registry.get(model, ENCODER)
            if hosted.dimension != dimension:
                raise InvalidArgument(f"dimension {dimension} does not match model {model!r}'s {hosted.dimension}")
        if storage not in STORAGES:
            raise InvalidArgument(f"unknown storage {storage!r}")
        if storage != FLOAT_STORAGE and metric != COSINE:
            raise InvalidArgument(f"{storage} storage needs the cosine metric (it is made for unit vectors)")
        if not 1 <= rescore_multiplier <= 100:
            raise InvalidArgument(f"rescore_multiplier must be in 1..100, got {rescore_multiplier}")
        collection = await self._blocking(self.collections.create, name, model, dimension, metric, document_prompt,
                                          query_prompt, storage, rescore_multiplier)
        return self._describe(collection)

    async def drop_collection(self, name: str) -> None:
        await self._blocking(self.collections.drop, name)

    async def list_collections(self) -> list[CollectionDescriptor]:
        described = [self._describe(c) for c in self.collections.list()]
        described += [self._describe_failed(name) for name in self.collections.failed()]
        return sorted(described, key=lambda d: d.name)

    async def get_collection(self, name: str) -> CollectionDescriptor:
        if name in self.collections.failed():
            return self._describe_failed(name)
        return self._describe(self.collections.get(name))

    async def upsert(
        self, collection: str, ids: list[str], texts: list[str], metadata: list[dict[str, str]], vectors: np.ndarray,
    ) -> Upserted:
        """Acknowledged once committed to disk (with a data dir) and searchable."""
        target = self.collections.get(collection)
        dimension = target.spec.dimension
        if vectors.shape != (len(ids), dimension) or len(texts) != len(ids) or len(metadata) != len(ids):
            raise InvalidArgument(
                f"{len(ids)} documents need {len(ids)} vectors of dimension {dimension}, got shape {vectors.shape}"
            )
        await self._blocking(target.upsert, ids, texts, metadata, vectors)
        return Upserted(len(ids), Timing())

    async def delete(self, collection: str, ids: list[str]) -> int:
        target = self.collections.get(collection)
        return await self._blocking(target.delete, ids)

    async def get_documents(
        self, collection: str, ids: list[str], include_embeddings: bool
    ) -> tuple[list[StoredDocument], list[str]]:
        target = self.collections.get(collection)
        found, missing = await self._blocking(target.get, ids, include_embeddings)
        return [StoredDocument(i, t, m, v) for i, t, m, v in found], missing

    async def search(
        self, collection: str, queries: np.ndarray, top_k: int, where: dict[str, str],
        include_text: bool, include_metadata: bool,
    ) -> SearchHits:
        target = self.collections.get(collection)
        dimension = target.spec.dimension
        if queries.ndim != 2 or queries.shape[1] != dimension:
            # Front ends leave this check to the engine for vector queries, so that a search
            # costs one round trip: the message says what the caller sent against what is held.
            sent = f"{queries.shape[1]} values" if queries.ndim == 2 else f"shape {queries.shape}"
            raise InvalidArgument(f"the query vectors have {sent}; the collection's dimension is {dimension}")

        def search() -> SearchHits:
            started = time.monotonic()
            with SEARCH_SECONDS.labels(collection).time():
                ids, scores = target.search_columns(queries, top_k, where)
            if include_text or include_metadata:
                found = SearchHits(with_documents(ids, scores), Timing())
            else:
                found = SearchHits.from_columns(ids, scores, Timing())
            found.timing.inference_s = time.monotonic() - started
            return found

        def with_documents(ids: list[list[str]], scores: list[list[float]]) -> list[list[Hit]]:
            documents = target.texts([doc_id for q in ids for doc_id in q])
            out = []
            for q_ids, q_scores in zip(ids, scores):
                row = []
                for doc_id, score in zip(q_ids, q_scores):
                    doc = documents.get(doc_id)
                    if doc is None:  # deleted since scoring: keep the hit, without text
                        row.append(Hit(doc_id, score, present=False))
                    else:
                        row.append(Hit(doc_id, score, doc[0] if include_text else "",
                                       doc[1] if include_metadata else None))
                out.append(row)
            return out

        return await self._blocking(search)

    # -- info ------------------------------------------------------------------------------

    async def info(self) -> EngineInfo:
        models = [describe(m, self.registry.is_default(m), with_counters=True) for m in self.registry]
        return EngineInfo(models, self.frontends)

    @property
    def frontends(self) -> list[FrontendCounters]:
        return [self._frontends[i] for i in sorted(self._frontends)]

    async def report_frontend(self, counters: FrontendCounters) -> None:
        self._frontends[counters.index] = counters
