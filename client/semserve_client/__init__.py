"""Python client for the semserve.v1 gRPC API (sync and asyncio) and its CLI."""
