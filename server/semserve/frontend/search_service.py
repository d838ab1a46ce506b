"""SearchService: collections, durable upserts and deletes, exact top-k with an optional rerank stage.

Two-stage search and text upserts are composed here from core calls, as a router composes
them: the collection's model tokenizes in this process, the engine encodes, writes and scores.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import AsyncIterator

import numpy as np

from semserve.config import RequestLimits
from semserve.core.errors import CoreError, FailedPrecondition, NoModelOfKind
from semserve.core.types import (
    BINARY_STORAGE, COLLECTION_NAME, COSINE, CROSS_ENCODER, DEFAULT_RESCORE_MULTIPLIER, DOT, ENCODER, FAILED,
    FLOAT_STORAGE, INT8_STORAGE, READY, CollectionDescriptor, Hit, Timing,
)
from semserve.frontend.errors import invalid_argument, status_for, unary_rpc
from semserve.frontend.inference import Inference, deadline_of
from semserve.frontend.timing import timing_proto
from semserve_client.v1 import search_pb2, search_pb2_grpc

_METRICS = {search_pb2.METRIC_UNSPECIFIED: COSINE, search_pb2.METRIC_COSINE: COSINE, search_pb2.METRIC_DOT: DOT}
_METRIC_PROTO = {COSINE: search_pb2.METRIC_COSINE, DOT: search_pb2.METRIC_DOT, "": search_pb2.METRIC_UNSPECIFIED}
_STORAGES = {search_pb2.VECTOR_STORAGE_UNSPECIFIED: FLOAT_STORAGE, search_pb2.VECTOR_STORAGE_INT8: INT8_STORAGE,
             search_pb2.VECTOR_STORAGE_BINARY: BINARY_STORAGE}
_STORAGE_PROTO = {name: number for number, name in _STORAGES.items()}
_STATE_PROTO = {READY: search_pb2.COLLECTION_STATE_READY, FAILED: search_pb2.COLLECTION_STATE_FAILED}
# Upsert messages of one stream being encoded at once; they are still applied in stream order.
STREAM_WINDOW = 4
NAME_RULE = "1-128 characters, letters, digits, '_', '-', '.', starting with a letter or digit"


def check_vector(values, dimension: int, what: str, against: str = "the collection's") -> np.ndarray:
    vector = np.asarray(values, dtype=np.float32)
    if vector.shape[0] != dimension:
        raise invalid_argument(f"{what} has {vector.shape[0]} values; {against} dimension is {dimension}")
    if not np.isfinite(vector).all():
        raise invalid_argument(f"{what} holds a NaN or infinite value")
    return vector


def info_proto(c: CollectionDescriptor) -> search_pb2.CollectionInfo:
    return search_pb2.CollectionInfo(
        name=c.name, model=c.model, dimension=c.dimension, metric=_METRIC_PROTO[c.metric], count=c.count,
        shards=c.shards, devices=c.devices, bytes=c.bytes, dtype=c.dtype, durable=c.durable,
        state=_STATE_PROTO[c.state], failure_reason=c.failure_reason, document_prompt=c.document_prompt,
        query_prompt=c.query_prompt, storage=_STORAGE_PROTO[c.storage], rescore_multiplier=c.rescore_multiplier,
    )


class SearchServicer(search_pb2_grpc.SearchServiceServicer):
    def __init__(self, inference: Inference, limits: RequestLimits):
        self._inference = inference
        self._core = inference.core
        self._limits = limits

    async def _collection(self, name: str, refuse_failed: bool = True) -> CollectionDescriptor:
        """The collection a call names; a FAILED one raises its status unless only described."""
        if not name:
            raise invalid_argument("collection name is empty")
        collection = await self._core.get_collection(name)
        if refuse_failed and collection.state == FAILED:
            raise CoreError.from_wire(collection.failure_code, collection.failure_reason)
        return collection

    # -- collections -----------------------------------------------------------------------

    @unary_rpc
    async def CreateCollection(self, request, context):
        if not COLLECTION_NAME.match(request.name):
            raise invalid_argument(f"collection name {request.name!r} is not allowed: {NAME_RULE}")
        if request.metric not in _METRICS:
            raise invalid_argument(f"unknown metric {request.metric}; use METRIC_COSINE or METRIC_DOT")
        if request.dimension > self._limits.max_dimension:
            raise invalid_argument(
                f"dimension {request.dimension} is over this server's max_dimension {self._limits.max_dimension}"
            )
        model_name, dimension = await self._collection_model(request.model, request.dimension)
        if (request.document_prompt or request.query_prompt) and not model_name:
            raise invalid_argument("document_prompt and query_prompt need a model: the collection embeds no text")
        if request.storage not in _STORAGES:
            raise invalid_argument(f"unknown storage {request.storage}; use VECTOR_STORAGE_UNSPECIFIED, "
                                   "VECTOR_STORAGE_INT8 or VECTOR_STORAGE_BINARY")
        collection = await self._core.create_collection(request.name, model_name, dimension, _METRICS[request.metric],
                                                        request.document_prompt, request.query_prompt,
                                                        _STORAGES[request.storage],
                                                        request.rescore_multiplier or DEFAULT_RESCORE_MULTIPLIER)
        return search_pb2.CreateCollectionResponse(collection=info_proto(collection))

    async def _collection_model(self, name: str, dimension: int) -> tuple[str, int]:
        """The encoder and dimension of a new collection.

        A named model must match the dimension (0 takes the model's). Without a name, the default
        encoder is used when the dimension fits it; a dimension it does not have (or a server
        without encoders) makes a collection of vectors only, whose documents and queries must
        come with embeddings.
        """
        models = self._inference.models
        if name:
            model, _ = await models.get(name, ENCODER)
            if dimension and dimension != model.dimension:
                raise invalid_argument(
                    f"dimension {dimension} does not match model {model.name!r}'s {model.dimension}; "
                    "send 0 to take the model's"
                )
            return model.name, model.dimension
        try:
            model, _ = await models.get("", ENCODER)
        except NoModelOfKind:
            if not dimension:
                raise invalid_argument("this server hosts no encoder: give the dimension (a collection of vectors only)") from None
            return "", dimension
        if dimension and dimension != model.dimension:
            return "", dimension
        return model.name, model.dimension

    @unary_rpc
    async def DropCollection(self, request, context):
        await self._core.drop_collection(request.name)
        return search_pb2.DropCollectionResponse()

    @unary_rpc
    async def ListCollections(self, request, context):
        return search_pb2.ListCollectionsResponse(collections=[info_proto(c) for c in await self._core.list_collections()])

    @unary_rpc
    async def GetCollection(self, request, context):
        # A FAILED collection is described (state and reason), not refused.
        collection = await self._collection(request.name, refuse_failed=False)
        return search_pb2.GetCollectionResponse(collection=info_proto(collection))

    # -- writes ----------------------------------------------------------------------------

    async def _embed_texts(self, collection: CollectionDescriptor, texts: list[str], deadline: float | None,
                           prompt: str):
        """Vectors of texts with the collection's own model (normalised for cosine), with the
        collection's document or query prompt ("": the model's default prompt)."""
        if not collection.model:
            raise invalid_argument(f"collection {collection.name!r} has no model: send embeddings, not text")
        out = await self._inference.embed(collection.model, texts, True, collection.metric == COSINE, deadline,
                                          prompt=prompt or None)
        if out.model.dimension != collection.dimension:
            raise FailedPrecondition(
                f"model {out.model.name!r} now has dimension {out.model.dimension}, the collection {collection.dimension}"
            )
        return out.values, out.timing

    async def _prepare_upsert(self, request: search_pb2.UpsertRequest, deadline: float | None):
        """Validate one upsert message and compute its vectors: (collection, ids, texts, metadata, vectors, timing)."""
        collection = await self._collection(request.collection)
        docs = request.documents
        if not docs:
            raise invalid_argument("no documents given; send at least one")
        if len(docs) > self._limits.max_documents_per_upsert:
            raise invalid_argument(
                f"{len(docs)} documents in one upsert; at most {self._limits.max_documents_per_upsert} "
                "are accepted (split it, or use BulkUpsert)"
            )
        ids = [d.id for d in docs]
        seen: set[str] = set()
        for i, doc_id in enumerate(ids):
            if not doc_id:
                raise invalid_argument(f"document {i} has an empty id")
            if doc_id in seen:
                raise invalid_argument(f"id {doc_id!r} appears more than once in this upsert (document {i}); send each id once")
            seen.add(doc_id)
        dimension = collection.dimension
        vectors = np.empty((len(docs), dimension), dtype=np.float32)
        to_encode = []
        for i, doc in enumerate(docs):
            if len(doc.embedding):
                vectors[i] = check_vector(doc.embedding, dimension, f"document {i} ({doc.id!r}) embedding")
            elif doc.text.strip():
                to_encode.append(i)
            else:
                raise invalid_argument(f"document {i} ({doc.id!r}) has neither an embedding nor text")
        timing = Timing()
        if to_encode:
            matrix, timing = await self._embed_texts(collection, [docs[i].text for i in to_encode], deadline,
                                                     collection.document_prompt)
            vectors[to_encode] = matrix
        return collection.name, ids, [d.text for d in docs], [dict(d.metadata) for d in docs], vectors, timing

    @unary_rpc
    async def Upsert(self, request, context):
        started = time.monotonic()
        name, ids, texts, metadata, vectors, timing = await self._prepare_upsert(request, deadline_of(context))
        stored = await self._core.upsert(name, ids, texts, metadata, vectors)
        timing.merge(stored.timing)
        return search_pb2.UpsertResponse(upserted=stored.count, timing=timing_proto(timing, time.monotonic() - started))

    async def BulkUpsert(self, request_iterator: AsyncIterator, context):
        upserted, timing = await self._upsert_stream(request_iterator, context)
        return search_pb2.BulkUpsertResponse(upserted=upserted, timing=timing)

    async def UpsertStream(self, request_iterator: AsyncIterator, context):
        """The deprecated name of BulkUpsert (its messages have the same fields)."""
        upserted, timing = await self._upsert_stream(request_iterator, context)
        return search_pb2.UpsertResponse(upserted=upserted, timing=timing)

    async def _upsert_stream(self, request_iterator: AsyncIterator, context):
        """Messages are encoded a few at a time but applied in stream order; one reply at the end.

        A bad message ends the stream with its status, naming the message; the messages before
        it stay applied (each one is atomic). Everything applied is durable before the reply.
        """
        started = time.monotonic()
        deadline = deadline_of(context)
        timing = Timing()
        upserted = 0
        pending: deque[tuple[int, asyncio.Task]] = deque()
        index = 0

        async def apply_oldest() -> None:
            nonlocal upserted
            number, task = pending.popleft()
            try:
                name, ids, texts, metadata, vectors, parts = await task
            except Exception as exc:
                code, message = status_for(exc)
                raise _MessageFailed(code, f"message {number}: {message}") from None
            stored = await self._core.upsert(name, ids, texts, metadata, vectors)
            upserted += stored.count
            timing.merge(parts)
            timing.merge(stored.timing)

        try:
            async for request in request_iterator:
                pending.append((index, asyncio.ensure_future(self._prepare_upsert(request, deadline))))
                index += 1
                if len(pending) >= STREAM_WINDOW:
                    await apply_oldest()
            while pending:
                await apply_oldest()
        except _MessageFailed as exc:
            await self._cancel(pending)
            await context.abort(exc.code, exc.text)
        except Exception as exc:
            await self._cancel(pending)
            code, message = status_for(exc)
            await context.abort(code, message)
        return upserted, timing_proto(timing, time.monotonic() - started)

    @staticmethod
    async def _cancel(pending) -> None:
        for _, task in pending:
            task.cancel()
        await asyncio.gather(*(t for _, t in pending), return_exceptions=True)

    @unary_rpc
    async def Delete(self, request, context):
        name = (await self._collection(request.collection)).name
        if not request.ids:
            raise invalid_argument("no ids given; send at least one")
        if len(request.ids) > self._limits.max_documents_per_upsert:
            raise invalid_argument(
                f"{len(request.ids)} ids in one delete; at most {self._limits.max_documents_per_upsert} are accepted"
            )
        return search_pb2.DeleteResponse(deleted=await self._core.delete(name, list(request.ids)))

    @unary_rpc
    async def GetDocuments(self, request, context):
        name = (await self._collection(request.collection)).name
        if not request.ids:
            raise invalid_argument("no ids given; send at least one")
        found, missing = await self._core.get_documents(name, list(request.ids), request.include_embeddings)
        documents = [
            search_pb2.Document(
                id=d.id, text=d.text, metadata=d.metadata, embedding=d.embedding.tolist() if d.embedding is not None else []
            )
            for d in found
        ]
        return search_pb2.GetDocumentsResponse(documents=documents, missing_ids=missing)

    # -- search ----------------------------------------------------------------------------

    @unary_rpc
    async def Search(self, request, context):
        started = time.monotonic()
        deadline = deadline_of(context)
        limits = self._limits
        if not request.collection:
            raise invalid_argument("collection name is empty")
        if not request.queries:
            raise invalid_argument("no queries given; send at least one")
        if len(request.queries) > limits.max_queries_per_search:
            raise invalid_argument(
                f"{len(request.queries)} queries in one search; at most {limits.max_queries_per_search} are accepted"
            )
        if not 1 <= request.top_k <= limits.max_top_k:
            raise invalid_argument(f"top_k must be in 1..{limits.max_top_k}, got {request.top_k}")
        rerank = request.HasField("rerank")
        if rerank:
            await self._inference.models.get(request.rerank.model, CROSS_ENCODER)
            if request.top_k > limits.max_documents_per_rerank:
                raise invalid_argument(
                    f"top_k {request.top_k} is over max_documents_per_rerank ({limits.max_documents_per_rerank}), "
                    "the candidates a rerank stage may score"
                )
        texts: dict[int, str] = {}
        for i, query in enumerate(request.queries):
            kind = query.WhichOneof("query")
            if kind == "text":
                if not query.text.strip():
                    raise invalid_argument(f"query {i} is an empty text")
                texts[i] = query.text
            elif kind == "vector":
                if rerank:
                    raise invalid_argument(f"query {i} is a vector; a rerank stage needs text queries")
            else:
                raise invalid_argument(f"query {i} is empty; set text or vector")
        timing = Timing()
        queries = await self._query_matrix(request, texts, deadline, timing)
        found = await self._core.search(
            request.collection, queries, request.top_k, dict(request.filter),
            request.include_text or rerank, request.include_metadata,
        )
        timing.merge(found.timing)
        # Hits are added in place: a message built apart and handed to its parent is copied, which
        # took 2-3 times as long for 64,000 hits on the CPU machine.
        response = search_pb2.SearchResponse()
        if found.columns is not None and not rerank:
            # Ids and scores alone (no text, metadata or rerank): messages straight from the lists.
            for ids, scores in zip(*found.columns):
                add = response.results.add().hits.add
                for doc_id, score in zip(ids, scores):
                    add(id=doc_id, score=score, embedding_score=score)
            response.timing.CopyFrom(timing_proto(timing, time.monotonic() - started))
            return response
        hits = found.hits
        ranked: list[list[tuple[Hit, float]]]
        if rerank:
            ranked = await asyncio.gather(*(
                self._rerank(request.rerank, texts[i], q, deadline, timing)
                for i, q in enumerate(hits)
            ))
        else:
            ranked = [[(h, h.score) for h in q] for q in hits]
        for q in ranked:
            add = response.results.add().hits.add
            for h, score in q:
                hit = add(id=h.id, score=score, embedding_score=h.score)
                if request.include_text:
                    hit.text = h.text
                if request.include_metadata and h.metadata:
                    hit.metadata.update(h.metadata)
        response.timing.CopyFrom(timing_proto(timing, time.monotonic() - started))
        return response

    async def _query_matrix(self, request, texts: dict[int, str], deadline: float | None,
                            timing: Timing) -> np.ndarray:
        """The queries as one (queries, dimension) float32 matrix, the text queries (``texts``,
        by position) embedded.

        Vector queries alone need no word from the engine before the search: their common
        length is the matrix's width and the engine checks it against the collection's, so a
        search costs one round trip. Text queries need the collection's model and prompt.
        """
        if texts:
            collection = await self._collection(request.collection)
            width, against = collection.dimension, "the collection's"
        else:
            width, against = len(request.queries[0].vector.values), "query 0's"
        queries = np.empty((len(request.queries), width), dtype=np.float32)
        for i, query in enumerate(request.queries):
            if i not in texts:
                queries[i] = check_vector(query.vector.values, width, f"query {i}", against)
        if not texts:
            return queries
        order = sorted(texts)
        matrix, parts = await self._embed_texts(collection, [texts[i] for i in order], deadline,
                                                collection.query_prompt)
        queries[order] = matrix
        timing.merge(parts)
        return queries

    async def _rerank(self, stage, query: str, candidates: list[Hit], deadline: float | None,
                      timing: Timing) -> list[tuple[Hit, float]]:
        """The cross-encoder's order over the candidates (stable: ties keep the embedding order)."""
        if not candidates:
            return []
        out = await self._inference.score(stage.model, query, [h.text for h in candidates], True, False, deadline)
        timing.merge(out.timing)
        order = np.argsort(-out.values, kind="stable")
        if stage.top_n:
            order = order[: stage.top_n]
        return [(candidates[i], float(out.values[i])) for i in order]


class _MessageFailed(Exception):
    def __init__(self, code, text: str):
        super().__init__(text)
        self.code = code
        self.text = text
