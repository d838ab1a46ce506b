"""Building SearchService messages from plain Python values (shared by the sync and async clients)."""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import numpy as np

from semserve_client.v1 import search_pb2

METRICS = {"cosine": search_pb2.METRIC_COSINE, "dot": search_pb2.METRIC_DOT}


STORAGES = {"float": search_pb2.VECTOR_STORAGE_UNSPECIFIED, "int8": search_pb2.VECTOR_STORAGE_INT8,
            "binary": search_pb2.VECTOR_STORAGE_BINARY}


def create_request(name: str, model: str = "", dimension: int = 0, metric: str = "cosine", document_prompt: str = "",
                   query_prompt: str = "", storage: str = "float", rescore_multiplier: int = 0):
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    if storage not in STORAGES:
        raise ValueError(f"storage must be one of {', '.join(STORAGES)}, got {storage!r}")
    return search_pb2.CreateCollectionRequest(name=name, model=model, dimension=dimension, metric=METRICS[metric],
                                              document_prompt=document_prompt, query_prompt=query_prompt,
                                              storage=STORAGES[storage], rescore_multiplier=rescore_multiplier)


def documents(
    ids: Sequence[str],
    texts: Sequence[str] | None = None,
    embeddings: np.ndarray | Sequence[Sequence[float]] | None = None,
    metadata: Sequence[Mapping[str, str]] | None = None,
) -> list[search_pb2.Document]:
    """Documents from parallel lists; texts without embeddings are encoded by the server."""
    n = len(ids)
    for name, values in (("texts", texts), ("embeddings", embeddings), ("metadata", metadata)):
        if values is not None and len(values) != n:
            raise ValueError(f"{len(values)} {name} for {n} ids")
    out = []
    for i, doc_id in enumerate(ids):
        doc = search_pb2.Document(id=str(doc_id))
        if texts is not None:
            doc.text = texts[i]
        if embeddings is not None:
            doc.embedding.extend(np.asarray(embeddings[i], dtype=np.float32).tolist())
        if metadata is not None:
            doc.metadata.update({str(k): str(v) for k, v in metadata[i].items()})
        out.append(doc)
    return out


def upsert_request(collection: str, docs: Iterable[search_pb2.Document]) -> search_pb2.UpsertRequest:
    return search_pb2.UpsertRequest(collection=collection, documents=list(docs))


def search_queries(queries) -> list[search_pb2.SearchQuery]:
    """A string, a vector, or a list of strings and vectors (a 2-D array is a list of vectors)."""
    if isinstance(queries, str):
        queries = [queries]
    elif isinstance(queries, np.ndarray):
        queries = [queries] if queries.ndim == 1 else list(queries)
    elif queries and isinstance(queries[0], (int, float)):
        queries = [queries]
    out = []
    for q in queries:
        if isinstance(q, str):
            out.append(search_pb2.SearchQuery(text=q))
        else:
            out.append(search_pb2.SearchQuery(vector=search_pb2.Vector(values=np.asarray(q, np.float32).tolist())))
    return out


def search_request(
    collection: str,
    queries,
    top_k: int = 10,
    filter: Mapping[str, str] | None = None,
    include_text: bool = False,
    include_metadata: bool = False,
    rerank: bool = False,
    rerank_model: str = "",
    top_n: int = 0,
) -> search_pb2.SearchRequest:
    request = search_pb2.SearchRequest(
        collection=collection,
        queries=search_queries(queries),
        top_k=top_k,
        filter=dict(filter or {}),
        include_text=include_text,
        include_metadata=include_metadata,
    )
    if rerank or rerank_model or top_n:
        request.rerank.CopyFrom(search_pb2.RerankStage(model=rerank_model, top_n=top_n))
    return request
