"""SearchService: collections, durable upserts and deletes, exact top-k with an optional rerank stage.

Validation and model calls (encoding text, reranking candidates) run on the event loop through
the batchers, like Embed and Rerank. Everything that blocks (log writes and fsyncs, scoring a
large corpus, snapshots, compaction) runs in the store's own thread pool, so the loop keeps
serving other calls meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import AsyncIterator

import grpc
import numpy as np

from semserve.config import RequestLimits
from semserve.registry import CROSS_ENCODER, ENCODER, ModelRegistry, NoModelOfKind
from semserve.search.collection import COSINE, DOT, Collection
from semserve.search.store import NAME_PATTERN, CollectionExists, CollectionNotFound, CollectionStore
from semserve.service.encoder_service import EncoderServicer
from semserve.service.errors import ServiceError, invalid_argument, not_found, status_for, unary_rpc
from semserve.service.inference import deadline_of
from semserve.service.reranker_service import RerankerServicer
from semserve.service.timing import TimingParts
from semserve_client.v1 import search_pb2, search_pb2_grpc

log = logging.getLogger(__name__)

_METRICS = {search_pb2.METRIC_UNSPECIFIED: COSINE, search_pb2.METRIC_COSINE: COSINE, search_pb2.METRIC_DOT: DOT}
_METRIC_PROTO = {COSINE: search_pb2.METRIC_COSINE, DOT: search_pb2.METRIC_DOT}
# Upsert messages of one stream being encoded at once; they are still applied in stream order.
STREAM_WINDOW = 4


def _store_errors(exc: Exception) -> Exception:
    if isinstance(exc, CollectionNotFound):
        return not_found(str(exc))
    if isinstance(exc, CollectionExists):
        return ServiceError(grpc.StatusCode.ALREADY_EXISTS, str(exc))
    return exc


def check_vector(values, dimension: int, what: str) -> np.ndarray:
    vector = np.asarray(values, dtype=np.float32)
    if vector.shape[0] != dimension:
        raise invalid_argument(f"{what} has {vector.shape[0]} values; the collection's dimension is {dimension}")
    if not np.isfinite(vector).all():
        raise invalid_argument(f"{what} holds a NaN or infinite value")
    return vector


class SearchServicer(search_pb2_grpc.SearchServiceServicer):
    def __init__(
        self,
        store: CollectionStore,
        registry: ModelRegistry,
        limits: RequestLimits,
        encoder: EncoderServicer,
        reranker: RerankerServicer,
        pool: Executor | None = None,
    ):
        self._store = store
        self._registry = registry
        self._limits = limits
        self._encoder = encoder
        self._reranker = reranker
        self._pool = pool or ThreadPoolExecutor(store.config.threads, thread_name_prefix="search")
        self._maintenance: asyncio.Task | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start_maintenance(self) -> None:
        self._maintenance = asyncio.get_running_loop().create_task(self._maintain_forever())

    async def _maintain_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self._store.config.maintenance_interval_s)
            try:
                await loop.run_in_executor(self._pool, self._store.maintain)
            except Exception:  # keep maintaining; the next round retries
                log.exception("search maintenance failed")

    async def stop(self) -> None:
        if self._maintenance is not None:
            self._maintenance.cancel()
        await asyncio.get_running_loop().run_in_executor(self._pool, self._store.close)
        self._pool.shutdown(wait=False)

    async def _blocking(self, fn, *args):
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        except (CollectionNotFound, CollectionExists) as exc:  # e.g. dropped while this call ran
            raise _store_errors(exc) from None

    def _collection(self, name: str) -> Collection:
        if not name:
            raise invalid_argument("collection name is empty")
        try:
            return self._store.get(name)
        except CollectionNotFound as exc:
            raise not_found(str(exc)) from None

    def _info(self, collection: Collection) -> search_pb2.CollectionInfo:
        spec, d = collection.spec, collection.describe()
        return search_pb2.CollectionInfo(
            name=spec.name, model=spec.model, dimension=spec.dimension, metric=_METRIC_PROTO[spec.metric],
            count=d["count"], shards=d["shards"], devices=d["devices"], bytes=d["bytes"], dtype=d["dtype"],
            durable=self._store.durable,
        )

    # -- collections -----------------------------------------------------------------------

    @unary_rpc
    async def CreateCollection(self, request, context):
        if not NAME_PATTERN.match(request.name):
            raise invalid_argument(
                f"collection name {request.name!r} is not allowed: 1-128 characters, letters, digits, '_', '-', '.', "
                "starting with a letter or digit"
            )
        if request.metric not in _METRICS:
            raise invalid_argument(f"unknown metric {request.metric}; use METRIC_COSINE or METRIC_DOT")
        model_name, dimension = self._collection_model(request.model, request.dimension)
        try:
            collection = await self._blocking(self._store.create, request.name, model_name, dimension, _METRICS[request.metric])
        except CollectionExists as exc:
            raise _store_errors(exc) from None
        return search_pb2.CreateCollectionResponse(collection=self._info(collection))

    def _collection_model(self, name: str, dimension: int) -> tuple[str, int]:
        """The encoder and dimension of a new collection.

        A named model must match the dimension (0 takes the model's). Without a name, the default
        encoder is used when the dimension fits it; a dimension it does not have (or a server
        without encoders) makes a collection of vectors only, whose documents and queries must
        come with embeddings.
        """
        if name:
            model = self._registry.get(name, ENCODER)
            if dimension and dimension != model.dimension:
                raise invalid_argument(
                    f"dimension {dimension} does not match model {model.name!r}'s {model.dimension}; "
                    "send 0 to take the model's"
                )
            return model.name, model.dimension
        try:
            model = self._registry.get("", ENCODER)
        except NoModelOfKind:
            if not dimension:
                raise invalid_argument("this server hosts no encoder: give the dimension (a collection of vectors only)") from None
            return "", dimension
        if dimension and dimension != model.dimension:
            return "", dimension
        return model.name, model.dimension

    @unary_rpc
    async def DropCollection(self, request, context):
        try:
            await self._blocking(self._store.drop, request.name)
        except CollectionNotFound as exc:
            raise _store_errors(exc) from None
        return search_pb2.DropCollectionResponse()

    @unary_rpc
    async def ListCollections(self, request, context):
        return search_pb2.ListCollectionsResponse(collections=[self._info(c) for c in self._store.list()])

    @unary_rpc
    async def GetCollection(self, request, context):
        return search_pb2.GetCollectionResponse(collection=self._info(self._collection(request.name)))

    # -- writes ----------------------------------------------------------------------------

    async def _prepare_upsert(self, request: search_pb2.UpsertRequest, deadline: float | None):
        """Validate one upsert message and compute its vectors: (collection, ids, texts, metadata, vectors, timing)."""
        collection = self._collection(request.collection)
        docs = request.documents
        if not docs:
            raise invalid_argument("no documents given; send at least one")
        if len(docs) > self._limits.max_documents_per_upsert:
            raise invalid_argument(
                f"{len(docs)} documents in one upsert; at most {self._limits.max_documents_per_upsert} "
                "are accepted (split it, or use UpsertStream)"
            )
        ids = [d.id for d in docs]
        seen: set[str] = set()
        for i, doc_id in enumerate(ids):
            if not doc_id:
                raise invalid_argument(f"document {i} has an empty id")
            if doc_id in seen:
                raise invalid_argument(f"id {doc_id!r} appears more than once in this upsert (document {i}); send each id once")
            seen.add(doc_id)
        dimension = collection.spec.dimension
        vectors = np.empty((len(docs), dimension), dtype=np.float32)
        to_encode = []
        for i, doc in enumerate(docs):
            if len(doc.embedding):
                vectors[i] = check_vector(doc.embedding, dimension, f"document {i} ({doc.id!r}) embedding")
            elif doc.text.strip():
                to_encode.append(i)
            else:
                raise invalid_argument(f"document {i} ({doc.id!r}) has neither an embedding nor text")
        timing = TimingParts()
        if to_encode:
            model = self._text_model(collection)
            matrix, outcome = await self._encoder.embed_matrix(
                model, [docs[i].text for i in to_encode], True, collection.spec.metric == COSINE, deadline
            )
            vectors[to_encode] = matrix
            timing.merge(outcome.timing)
        texts = [d.text for d in docs]
        metadata = [dict(d.metadata) for d in docs]
        return collection, ids, texts, metadata, vectors, timing

    def _text_model(self, collection: Collection):
        if not collection.spec.model:
            raise invalid_argument(
                f"collection {collection.spec.name!r} has no model: send embeddings, not text"
            )
        model = self._registry.get(collection.spec.model, ENCODER)
        if model.dimension != collection.spec.dimension:
            raise ServiceError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"model {model.name!r} now has dimension {model.dimension}, the collection {collection.spec.dimension}",
            )
        return model

    def _write(self, collection: Collection, ids, texts, metadata, vectors) -> None:
        """Apply and wait until durable (pool thread)."""
        collection.upsert(ids, texts, metadata, vectors).wait()

    @unary_rpc
    async def Upsert(self, request, context):
        started = time.monotonic()
        collection, ids, texts, metadata, vectors, timing = await self._prepare_upsert(request, deadline_of(context))
        await self._blocking(self._write, collection, ids, texts, metadata, vectors)
        return search_pb2.UpsertResponse(upserted=len(ids), timing=timing.to_proto(time.monotonic() - started))

    async def UpsertStream(self, request_iterator: AsyncIterator, context):
        """Messages are encoded a few at a time but applied in stream order; one reply at the end.

        A bad message ends the stream with its status, naming the message; the messages before
        it stay applied (each one is atomic). Everything applied is durable before the reply.
        """
        started = time.monotonic()
        deadline = deadline_of(context)
        timing = TimingParts()
        upserted = 0
        pending: deque[tuple[int, asyncio.Task]] = deque()
        index = 0
        tickets = []

        async def apply_oldest() -> None:
            nonlocal upserted
            number, task = pending.popleft()
            try:
                collection, ids, texts, metadata, vectors, parts = await task
            except ServiceError as exc:
                raise ServiceError(exc.code, f"message {number}: {exc.message}") from None
            tickets.append(await self._blocking(collection.upsert, ids, texts, metadata, vectors))
            timing.merge(parts)
            upserted += len(ids)

        try:
            async for request in request_iterator:
                pending.append((index, asyncio.ensure_future(self._prepare_upsert(request, deadline))))
                index += 1
                if len(pending) >= STREAM_WINDOW:
                    await apply_oldest()
            while pending:
                await apply_oldest()
            await self._blocking(lambda: [t.wait() for t in tickets])
        except Exception as exc:
            for _, task in pending:
                task.cancel()
            code, message = status_for(_store_errors(exc))
            await context.abort(code, message)
        return search_pb2.UpsertResponse(upserted=upserted, timing=timing.to_proto(time.monotonic() - started))

    @unary_rpc
    async def Delete(self, request, context):
        collection = self._collection(request.collection)
        if not request.ids:
            raise invalid_argument("no ids given; send at least one")
        if len(request.ids) > self._limits.max_documents_per_upsert:
            raise invalid_argument(
                f"{len(request.ids)} ids in one delete; at most {self._limits.max_documents_per_upsert} are accepted"
            )

        def delete() -> int:
            count, ticket = collection.delete(list(request.ids))
            ticket.wait()
            return count

        return search_pb2.DeleteResponse(deleted=await self._blocking(delete))

    @unary_rpc
    async def GetDocuments(self, request, context):
        collection = self._collection(request.collection)
        if not request.ids:
            raise invalid_argument("no ids given; send at least one")
        found, missing = await self._blocking(collection.get, list(request.ids), request.include_embeddings)
        documents = [
            search_pb2.Document(id=i, text=t, metadata=m, embedding=v.tolist() if v is not None else [])
            for i, t, m, v in found
        ]
        return search_pb2.GetDocumentsResponse(documents=documents, missing_ids=missing)

    # -- search ----------------------------------------------------------------------------

    @unary_rpc
    async def Search(self, request, context):
        started = time.monotonic()
        deadline = deadline_of(context)
        collection = self._collection(request.collection)
        limits = self._limits
        if not request.queries:
            raise invalid_argument("no queries given; send at least one")
        if len(request.queries) > limits.max_queries_per_search:
            raise invalid_argument(
                f"{len(request.queries)} queries in one search; at most {limits.max_queries_per_search} are accepted"
            )
        if not 1 <= request.top_k <= limits.max_top_k:
            raise invalid_argument(f"top_k must be in 1..{limits.max_top_k}, got {request.top_k}")
        rerank_model = None
        if request.HasField("rerank"):
            rerank_model = self._registry.get(request.rerank.model, CROSS_ENCODER)
            if request.top_k > limits.max_documents_per_rerank:
                raise invalid_argument(
                    f"top_k {request.top_k} is over max_documents_per_rerank ({limits.max_documents_per_rerank}), "
                    "the candidates a rerank stage may score"
                )
        dimension = collection.spec.dimension
        queries = np.empty((len(request.queries), dimension), dtype=np.float32)
        texts: dict[int, str] = {}
        for i, query in enumerate(request.queries):
            kind = query.WhichOneof("query")
            if kind == "text":
                if not query.text.strip():
                    raise invalid_argument(f"query {i} is an empty text")
                texts[i] = query.text
            elif kind == "vector":
                if rerank_model is not None:
                    raise invalid_argument(f"query {i} is a vector; a rerank stage needs text queries")
                queries[i] = check_vector(query.vector.values, dimension, f"query {i}")
            else:
                raise invalid_argument(f"query {i} is empty; set text or vector")
        timing = TimingParts()
        if texts:
            order = sorted(texts)
            matrix, outcome = await self._encoder.embed_matrix(
                self._text_model(collection), [texts[i] for i in order], True, collection.spec.metric == COSINE, deadline
            )
            queries[order] = matrix
            timing.merge(outcome.timing)
        where = dict(request.filter)
        hits = await self._blocking(collection.search, queries, request.top_k, where)
        documents = collection.documents
        reranked: list[list[tuple[str, float, float]]]
        if rerank_model is None:
            reranked = [[(doc_id, score, score) for doc_id, score in q] for q in hits]
        else:
            reranked = await asyncio.gather(
                *(
                    self._rerank(rerank_model, texts[i], q, documents, request.rerank.top_n, deadline, timing)
                    for i, q in enumerate(hits)
                )
            )
        results = []
        for q in reranked:
            out = []
            for doc_id, score, embedding_score in q:
                hit = search_pb2.SearchHit(id=doc_id, score=score, embedding_score=embedding_score)
                doc = documents.get(doc_id)
                if doc is not None:  # deleted since scoring: keep the hit, without text
                    if request.include_text:
                        hit.text = doc[0]
                    if request.include_metadata:
                        hit.metadata.update(doc[1])
                out.append(hit)
            results.append(search_pb2.SearchResult(hits=out))
        return search_pb2.SearchResponse(results=results, timing=timing.to_proto(time.monotonic() - started))

    async def _rerank(self, model, query: str, candidates: list[tuple[str, float]], documents: dict, top_n: int,
                      deadline: float | None, timing: TimingParts) -> list[tuple[str, float, float]]:
        """The cross-encoder's order over the candidates (stable: ties keep the embedding order)."""
        if not candidates:
            return []
        texts = [documents.get(doc_id, ("",))[0] for doc_id, _ in candidates]
        scores, outcome = await self._reranker.score(model, query, texts, True, False, deadline)
        timing.merge(outcome.timing)
        order = np.argsort(-scores, kind="stable")
        if top_n:
            order = order[:top_n]
        return [(candidates[i][0], float(scores[i]), candidates[i][1]) for i in order]
