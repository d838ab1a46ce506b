"""Request builders and response decoders shared by the sync and asyncio clients."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from semserve_client.v1 import common_pb2, encoder_pb2, reranker_pb2

FORMATS = {
    "float_list": common_pb2.EMBEDDING_FORMAT_FLOAT_LIST,
    "float32": common_pb2.EMBEDDING_FORMAT_FLOAT32_BYTES,
    "float16": common_pb2.EMBEDDING_FORMAT_FLOAT16_BYTES,
    "int8": common_pb2.EMBEDDING_FORMAT_INT8_BYTES,
    "uint8": common_pb2.EMBEDDING_FORMAT_UINT8_BYTES,
    "binary": common_pb2.EMBEDDING_FORMAT_BINARY_BYTES,
    "ubinary": common_pb2.EMBEDDING_FORMAT_UBINARY_BYTES,
}
# Element type of each byte format as NumPy reads it; binary formats pack 8 dimensions a byte.
_BYTE_DTYPES = {
    common_pb2.EMBEDDING_FORMAT_FLOAT32_BYTES: "<f4",
    common_pb2.EMBEDDING_FORMAT_FLOAT16_BYTES: "<f2",
    common_pb2.EMBEDDING_FORMAT_INT8_BYTES: np.int8,
    common_pb2.EMBEDDING_FORMAT_UINT8_BYTES: np.uint8,
    common_pb2.EMBEDDING_FORMAT_BINARY_BYTES: np.int8,
    common_pb2.EMBEDDING_FORMAT_UBINARY_BYTES: np.uint8,
}
_PACKED = {common_pb2.EMBEDDING_FORMAT_BINARY_BYTES, common_pb2.EMBEDDING_FORMAT_UBINARY_BYTES}
_TRUNCATION = {"right": common_pb2.TRUNCATION_DIRECTION_RIGHT, "left": common_pb2.TRUNCATION_DIRECTION_LEFT}


def embed_request(
    texts: Sequence[str], model: str = "", normalize: bool = True, truncate: bool = True, format: str = "float32",
    dimensions: int | None = None, truncation_direction: str = "right", prompt_name: str | None = None,
    prompt: str | None = None,
) -> encoder_pb2.EmbedRequest:
    if format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}")
    if truncation_direction not in _TRUNCATION:
        raise ValueError("truncation_direction must be 'right' or 'left'")
    request = encoder_pb2.EmbedRequest(
        model=model, texts=list(texts), normalize=normalize, truncate=truncate, format=FORMATS[format],
        truncation_direction=_TRUNCATION[truncation_direction],
    )
    if dimensions is not None:
        request.dimensions = dimensions
    if prompt_name is not None:
        request.prompt_name = prompt_name
    if prompt is not None:
        request.prompt = prompt
    return request


def decode_embeddings(response: encoder_pb2.EmbedResponse) -> np.ndarray:
    """Embeddings as a matrix (texts x dimension) in the format's own type: float32 for the float
    formats (float16 widened), int8/uint8 for the integer ones, and for binary/ubinary the packed
    bytes (texts x ceil(dimension / 8)), as sentence-transformers' quantize_embeddings returns them."""
    dtype = _BYTE_DTYPES.get(response.format)
    if dtype is None:
        flat = np.array([v for e in response.embeddings for v in e.values], dtype=np.float32)
        return flat.reshape(len(response.embeddings), response.dimension)
    flat = np.frombuffer(b"".join(e.data for e in response.embeddings), dtype=dtype)
    if response.format == common_pb2.EMBEDDING_FORMAT_FLOAT16_BYTES:
        flat = flat.astype(np.float32)
    width = (response.dimension + 7) // 8 if response.format in _PACKED else response.dimension
    return flat.reshape(len(response.embeddings), width)


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
