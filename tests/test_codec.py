"""Embeddings written as wire bytes (frontend/codec.py, ``serialized_embeddings``) are the very
bytes the ``Embedding`` messages serialise to, in every format, for any row count and dimension.
The messages are built here the plain way, one per row, as replies were built before."""

from __future__ import annotations

import numpy as np
import pytest

from semserve.core.quantization import QuantizationRanges
from semserve.frontend import codec
from semserve_client.v1 import common_pb2, encoder_pb2

def to_messages(matrix: np.ndarray, fmt: int, ranges: QuantizationRanges | None = None) -> list[common_pb2.Embedding]:
    rows = codec.encode_rows(matrix, fmt, ranges)
    if rows is not None:
        return [common_pb2.Embedding(data=row.tobytes()) for row in rows]
    return [common_pb2.Embedding(values=row) for row in matrix.tolist()]


FIELD = encoder_pb2.EmbedResponse.DESCRIPTOR.fields_by_name["embeddings"].number
FORMATS = [common_pb2.EMBEDDING_FORMAT_FLOAT_LIST, common_pb2.EMBEDDING_FORMAT_FLOAT32_BYTES,
           common_pb2.EMBEDDING_FORMAT_FLOAT16_BYTES, common_pb2.EMBEDDING_FORMAT_INT8_BYTES,
           common_pb2.EMBEDDING_FORMAT_UINT8_BYTES, common_pb2.EMBEDDING_FORMAT_BINARY_BYTES,
           common_pb2.EMBEDDING_FORMAT_UBINARY_BYTES]


@pytest.mark.parametrize("fmt", FORMATS, ids=common_pb2.EmbeddingFormat.Name)
@pytest.mark.parametrize("rows, dimension", [(1, 3), (1, 384), (32, 384), (5, 1000), (2, 17)])
def test_serialized_embeddings_are_the_messages_bytes(fmt, rows, dimension):
    rng = np.random.default_rng(rows * 10_000 + dimension)
    matrix = rng.standard_normal((rows, dimension)).astype(np.float32)
    matrix[0, 0] = -0.0  # signs and specials survive as they are
    matrix[-1, -1] = np.float32(1e-40)  # subnormal
    ranges = QuantizationRanges.fixed(dimension)
    want = encoder_pb2.EmbedResponse(model="m", dimension=dimension, format=fmt,
                                     embeddings=to_messages(matrix, fmt, ranges), token_counts=[7] * rows)
    got = encoder_pb2.EmbedResponse(model="m", dimension=dimension, format=fmt, token_counts=[7] * rows)
    got.MergeFromString(codec.serialized_embeddings(matrix, fmt, FIELD, ranges))
    assert got.SerializeToString() == want.SerializeToString()
    assert got == want
    if fmt == common_pb2.EMBEDDING_FORMAT_FLOAT_LIST:
        np.testing.assert_array_equal(np.array([e.values for e in got.embeddings], dtype=np.float32), matrix)


def test_rows_of_float64_are_rounded_as_the_message_rounds_them():
    matrix = np.random.default_rng(1).standard_normal((3, 8))
    fmt = common_pb2.EMBEDDING_FORMAT_FLOAT_LIST
    want = encoder_pb2.EmbedResponse(embeddings=to_messages(matrix, fmt))
    got = encoder_pb2.EmbedResponse()
    got.MergeFromString(codec.serialized_embeddings(matrix, fmt, FIELD))
    assert got.SerializeToString() == want.SerializeToString()
