"""semserve: a gRPC inference server for retrieval (encode, rerank, search)."""

__version__ = "0.1.0"
