"""Python client for the semserve.v1 gRPC API (sync and asyncio) and its CLI."""

from semserve_client.channels import RetryPolicy
from semserve_client.client import AsyncSemserveClient, Embeddings, SemserveClient
from semserve_client.requests import decode_embeddings

__all__ = ["AsyncSemserveClient", "Embeddings", "RetryPolicy", "SemserveClient", "decode_embeddings"]
