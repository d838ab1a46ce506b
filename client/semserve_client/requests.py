"""Request builders and response decoders shared by the sync and asyncio clients."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from semserve_client.v1 import common_pb2, encoder_pb2, reranker_pb2

FORMATS = {
    "float_list": common_pb2.EMBEDDING_FORMAT_FLOAT_LIST,
    "float32": common_pb2.EMBEDDING_FORMAT_FLOAT32_BYTES,
    "float16": common_pb2.EMBEDDING_FORMAT_FLOAT16_BYTES,
}


def embed_request(
    texts: Sequence[str], model: str = "", normalize: bool = True, truncate: bool = True, format: str = "float32"
) -> encoder_pb2.EmbedRequest:
    if format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}")
    return encoder_pb2.EmbedRequest(
        model=model, texts=list(texts), normalize=normalize, truncate=truncate, format=FORMATS[format]
    )


def decode_embeddings(response: encoder_pb2.EmbedResponse) -> np.ndarray:
    """Embeddings as a float32 matrix (texts x dimension), whichever wire format was used."""
    dim = response.dimension
    if response.format == common_pb2.EMBEDDING_FORMAT_FLOAT32_BYTES:
        flat = np.frombuffer(b"".join(e.data for e in response.embeddings), dtype="<f4")
    elif response.format == common_pb2.EMBEDDING_FORMAT_FLOAT16_BYTES:
        flat = np.frombuffer(b"".join(e.data for e in response.embeddings), dtype="<f2").astype(np.float32)
    else:
        flat = np.array([v for e in response.embeddings for v in e.values], dtype=np.float32)
    return flat.reshape(len(response.embeddings), dim)


def rerank_request(
    query: str,
    documents: Sequence[str],
    model: str = "",
    top_n: int | None = None,
    return_documents: bool = False,
    raw_scores: bool = False,
    truncate: bool = True,
) -> reranker_pb2.RerankRequest:
    request = reranker_pb2.RerankRequest(
        model=model,
        query=query,
        documents=list(documents),
        return_documents=return_documents,
        raw_scores=raw_scores,
        truncate=truncate,
    )
    if top_n is not None:
        request.top_n = top_n
    return request
