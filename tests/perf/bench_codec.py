"""CPU benchmark (not part of `make test`): an Embed reply's embeddings built as one message per
row against written as wire bytes (frontend/codec.py, ``serialized_embeddings``), for 1 and 32
rows of 384 floats.

    PYTHONPATH=server:client .venv/bin/python tests/perf/bench_codec.py
"""

from __future__ import annotations

import time

import numpy as np

from semserve.frontend import codec
from semserve_client.v1 import common_pb2, encoder_pb2

FIELD = encoder_pb2.EmbedResponse.DESCRIPTOR.fields_by_name["embeddings"].number
FLOAT_LIST = common_pb2.EMBEDDING_FORMAT_FLOAT_LIST


def per_row_messages(matrix: np.ndarray) -> encoder_pb2.EmbedResponse:
    return encoder_pb2.EmbedResponse(embeddings=[common_pb2.Embedding(values=row) for row in matrix.tolist()])


def wire_bytes(matrix: np.ndarray) -> encoder_pb2.EmbedResponse:
    response = encoder_pb2.EmbedResponse()
    response.MergeFromString(codec.serialized_embeddings(matrix, FLOAT_LIST, FIELD))
    return response


def main() -> None:
    for rows in (1, 32):
        matrix = np.random.default_rng(rows).random((rows, 384), dtype=np.float32)
        assert per_row_messages(matrix).SerializeToString() == wire_bytes(matrix).SerializeToString()
        for build in (per_row_messages, wire_bytes):
            calls = 20_000 // rows
            started = time.perf_counter()
            for _ in range(calls):
                build(matrix)
            print(f"{rows:2d} rows  {build.__name__:16s} {(time.perf_counter() - started) / calls * 1e6:7.1f} µs a reply")


if __name__ == "__main__":
    main()
