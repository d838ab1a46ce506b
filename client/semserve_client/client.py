"""Sync and asyncio clients for semserve. Both default to the compact float32 wire format
and return NumPy matrices; the raw responses (with timing) are there too."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from semserve_client import search_requests as sr
from semserve_client.channels import DEFAULT_RETRY, PemSource, RetryPolicy, open_aio_channel, open_channel
from semserve_client.requests import decode_embeddings, embed_request, rerank_request
from semserve_client.v1 import encoder_pb2, encoder_pb2_grpc, info_pb2, info_pb2_grpc
from semserve_client.v1 import reranker_pb2, reranker_pb2_grpc, search_pb2, search_pb2_grpc

DEFAULT_TARGET = "127.0.0.1:50051"


@dataclass
class Embeddings:
    vectors: np.ndarray
    response: encoder_pb2.EmbedResponse


class _Stubs:
    def _bind(self, channel) -> None:
        self.channel = channel
        self.encoder = encoder_pb2_grpc.EncoderServiceStub(channel)
        self.reranker = reranker_pb2_grpc.RerankerServiceStub(channel)
        self.search = search_pb2_grpc.SearchServiceStub(channel)
        self.info_stub = info_pb2_grpc.InfoServiceStub(channel)
        self.admin = info_pb2_grpc.AdminServiceStub(channel)
        self.health = health_pb2_grpc.HealthStub(channel)


class SemserveClient(_Stubs):
    """Blocking client. ``timeout`` is each call's deadline in seconds.

    ``api_key`` is sent on every call; ``tls`` (or any of ``ca_cert``, ``client_cert``/``client_key``,
    as paths or PEM bytes) makes the channel TLS, mTLS with a client certificate. Idempotent calls
    answered UNAVAILABLE or RESOURCE_EXHAUSTED are retried with backoff (``retry``; None: off).
    ``load_balancing="round_robin"`` spreads calls over every address of the target (e.g.
    ``dns:///semserve-headless.NAMESPACE.svc.cluster.local:50051`` in Kubernetes)."""

    def __init__(self, target: str = DEFAULT_TARGET, timeout: float | None = 60.0, channel: grpc.Channel | None = None,
                 *, api_key: str | None = None, tls: bool = False, ca_cert: PemSource = None,
                 client_cert: PemSource = None, client_key: PemSource = None,
                 retry: RetryPolicy | None = DEFAULT_RETRY, load_balancing: str | None = None):
        self.timeout = timeout
        self._bind(channel or open_channel(target, tls=tls, ca_cert=ca_cert, client_cert=client_cert,
                                           client_key=client_key, api_key=api_key, retry=retry,
                                           load_balancing=load_balancing))

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "SemserveClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def embed(self, texts: Sequence[str], model: str = "", normalize: bool = True, truncate: bool = True,
              format: str = "float32", dimensions: int | None = None, truncation_direction: str = "right",
              prompt_name: str | None = None, prompt: str | None = None) -> Embeddings:
        """``format``: float32, float16, float_list, int8, uint8, binary or ubinary (vectors of that
        type; binary ones packed 8 dimensions a byte); ``dimensions``: keep the first N;
        ``truncation_direction``: "left" keeps the end of an over-long text; ``prompt_name`` (one
        of the model's prompts) or ``prompt`` (literal) is prepended to every text."""
        request = embed_request(texts, model, normalize, truncate, format, dimensions, truncation_direction,
                                prompt_name, prompt)
        response = self.encoder.Embed(request, timeout=self.timeout)
        return Embeddings(decode_embeddings(response), response)

    def tokenize(self, texts: Sequence[str], model: str = "", truncate: bool = True, prompt_name: str | None = None,
                 prompt: str | None = None) -> encoder_pb2.TokenizeResponse:
        request = encoder_pb2.TokenizeRequest(model=model, texts=list(texts), truncate=truncate,
                                              prompt_name=prompt_name, prompt=prompt)
        return self.encoder.Tokenize(request, timeout=self.timeout)

    def similarity(self, source_text: str, texts: Sequence[str], model: str = "") -> list[float]:
        request = encoder_pb2.SimilarityRequest(model=model, source_text=source_text, texts=list(texts))
        return list(self.encoder.Similarity(request, timeout=self.timeout).scores)

    def rerank(self, query: str, documents: Sequence[str], model: str = "", top_n: int | None = None,
               return_documents: bool = False, raw_scores: bool = False) -> reranker_pb2.RerankResponse:
        request = rerank_request(query, documents, model, top_n, return_documents, raw_scores)
        return self.reranker.Rerank(request, timeout=self.timeout)

    def info(self) -> info_pb2.GetInfoResponse:
        return self.info_stub.GetInfo(info_pb2.GetInfoRequest(), timeout=self.timeout)

    def health_status(self, service: str = "") -> str:
        response = self.health.Check(health_pb2.HealthCheckRequest(service=service), timeout=self.timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

    def wait_ready(self, timeout: float = 60.0) -> None:
        grpc.channel_ready_future(self.channel).result(timeout=timeout)

    # -- search ------------------------------------------------------------------------------

    def create_collection(self, name: str, model: str = "", dimension: int = 0, metric: str = "cosine",
                          document_prompt: str = "", query_prompt: str = "", storage: str = "float",
                          rescore_multiplier: int = 0) -> search_pb2.CollectionInfo:
        """``document_prompt``/``query_prompt`` are prepended to the text the collection embeds
        (e.g. "passage: " and "query: " for E5 models). ``storage="int8"`` keeps a quarter of the
        bytes on the search devices, rescoring ``k x rescore_multiplier`` candidates exactly."""
        request = sr.create_request(name, model, dimension, metric, document_prompt, query_prompt, storage,
                                    rescore_multiplier)
        return self.search.CreateCollection(request, timeout=self.timeout).collection

    def drop_collection(self, name: str) -> None:
        self.search.DropCollection(search_pb2.DropCollectionRequest(name=name), timeout=self.timeout)

    def list_collections(self) -> list[search_pb2.CollectionInfo]:
        return list(self.search.ListCollections(search_pb2.ListCollectionsRequest(), timeout=self.timeout).collections)

    def get_collection(self, name: str) -> search_pb2.CollectionInfo:
        return self.search.GetCollection(search_pb2.GetCollectionRequest(name=name), timeout=self.timeout).collection

    def upsert(self, collection: str, ids: Sequence[str], texts: Sequence[str] | None = None,
               embeddings=None, metadata=None) -> search_pb2.UpsertResponse:
        """Insert or replace documents; returns once the server has made them durable."""
        request = sr.upsert_request(collection, sr.documents(ids, texts, embeddings, metadata))
        return self.search.Upsert(request, timeout=self.timeout)

    def upsert_stream(self, requests: Iterable[search_pb2.UpsertRequest | search_pb2.BulkUpsertRequest]
                      ) -> search_pb2.BulkUpsertResponse:
        """Bulk load: many messages on one stream (BulkUpsert), one reply at the end."""
        messages = (m if isinstance(m, search_pb2.BulkUpsertRequest)
                    else search_pb2.BulkUpsertRequest(collection=m.collection, documents=m.documents) for m in requests)
        return self.search.BulkUpsert(messages, timeout=self.timeout)

    def delete(self, collection: str, ids: Sequence[str]) -> int:
        request = search_pb2.DeleteRequest(collection=collection, ids=list(ids))
        return self.search.Delete(request, timeout=self.timeout).deleted

    def get_documents(self, collection: str, ids: Sequence[str],
                      include_embeddings: bool = False) -> search_pb2.GetDocumentsResponse:
        request = search_pb2.GetDocumentsRequest(collection=collection, ids=list(ids),
                                                 include_embeddings=include_embeddings)
        return self.search.GetDocuments(request, timeout=self.timeout)

    def search_collection(self, collection: str, queries, top_k: int = 10, **options) -> search_pb2.SearchResponse:
        """``queries``: text(s) and/or vector(s). Options: filter, include_text, include_metadata,
        rerank (bool), rerank_model, top_n. One SearchResult per query, in order."""
        return self.search.Search(sr.search_request(collection, queries, top_k, **options), timeout=self.timeout)


class AsyncSemserveClient(_Stubs):
    """asyncio client; create it inside a running event loop."""

    def __init__(self, target: str = DEFAULT_TARGET, timeout: float | None = 60.0,
                 channel: grpc.aio.Channel | None = None, *, api_key: str | None = None, tls: bool = False,
                 ca_cert: PemSource = None, client_cert: PemSource = None, client_key: PemSource = None,
                 retry: RetryPolicy | None = DEFAULT_RETRY, load_balancing: str | None = None):
        self.timeout = timeout
        self._bind(channel or open_aio_channel(target, tls=tls, ca_cert=ca_cert, client_cert=client_cert,
                                               client_key=client_key, api_key=api_key, retry=retry,
                                               load_balancing=load_balancing))

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> "AsyncSemserveClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def embed(self, texts: Sequence[str], model: str = "", normalize: bool = True, truncate: bool = True,
                    format: str = "float32", dimensions: int | None = None, truncation_direction: str = "right",
                    prompt_name: str | None = None, prompt: str | None = None) -> Embeddings:
        request = embed_request(texts, model, normalize, truncate, format, dimensions, truncation_direction,
                                prompt_name, prompt)
        response = await self.encoder.Embed(request, timeout=self.timeout)
        return Embeddings(decode_embeddings(response), response)

    async def tokenize(self, texts: Sequence[str], model: str = "", truncate: bool = True):
        return await self.encoder.Tokenize(
            encoder_pb2.TokenizeRequest(model=model, texts=list(texts), truncate=truncate), timeout=self.timeout
        )

    async def similarity(self, source_text: str, texts: Sequence[str], model: str = "") -> list[float]:
        request = encoder_pb2.SimilarityRequest(model=model, source_text=source_text, texts=list(texts))
        return list((await self.encoder.Similarity(request, timeout=self.timeout)).scores)

    async def rerank(self, query: str, documents: Sequence[str], model: str = "", top_n: int | None = None,
                     return_documents: bool = False, raw_scores: bool = False) -> reranker_pb2.RerankResponse:
        request = rerank_request(query, documents, model, top_n, return_documents, raw_scores)
        return await self.reranker.Rerank(request, timeout=self.timeout)

    async def info(self) -> info_pb2.GetInfoResponse:
        return await self.info_stub.GetInfo(info_pb2.GetInfoRequest(), timeout=self.timeout)

    async def create_collection(self, name: str, model: str = "", dimension: int = 0, metric: str = "cosine",
                                document_prompt: str = "", query_prompt: str = "", storage: str = "float",
                                rescore_multiplier: int = 0) -> search_pb2.CollectionInfo:
        request = sr.create_request(name, model, dimension, metric, document_prompt, query_prompt, storage,
                                    rescore_multiplier)
        return (await self.search.CreateCollection(request, timeout=self.timeout)).collection

    async def drop_collection(self, name: str) -> None:
        await self.search.DropCollection(search_pb2.DropCollectionRequest(name=name), timeout=self.timeout)

    async def list_collections(self) -> list[search_pb2.CollectionInfo]:
        response = await self.search.ListCollections(search_pb2.ListCollectionsRequest(), timeout=self.timeout)
        return list(response.collections)

    async def get_collection(self, name: str) -> search_pb2.CollectionInfo:
        return (await self.search.GetCollection(search_pb2.GetCollectionRequest(name=name), timeout=self.timeout)).collection

    async def upsert(self, collection: str, ids: Sequence[str], texts: Sequence[str] | None = None,
                     embeddings=None, metadata=None) -> search_pb2.UpsertResponse:
        request = sr.upsert_request(collection, sr.documents(ids, texts, embeddings, metadata))
        return await self.search.Upsert(request, timeout=self.timeout)

    async def delete(self, collection: str, ids: Sequence[str]) -> int:
        request = search_pb2.DeleteRequest(collection=collection, ids=list(ids))
        return (await self.search.Delete(request, timeout=self.timeout)).deleted

    async def get_documents(self, collection: str, ids: Sequence[str],
                            include_embeddings: bool = False) -> search_pb2.GetDocumentsResponse:
        request = search_pb2.GetDocumentsRequest(collection=collection, ids=list(ids),
                                                 include_embeddings=include_embeddings)
        return await self.search.GetDocuments(request, timeout=self.timeout)

    async def search_collection(self, collection: str, queries, top_k: int = 10,
                                **options) -> search_pb2.SearchResponse:
        return await self.search.Search(sr.search_request(collection, queries, top_k, **options), timeout=self.timeout)
