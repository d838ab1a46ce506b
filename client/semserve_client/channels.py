"""Channels to a semserve server: plaintext or TLS (mTLS with a client certificate), and an API
key sent as ``authorization: Bearer KEY`` on every call.

The key travels as call metadata added by an interceptor rather than as gRPC call credentials,
which gRPC refuses on plaintext channels (a server on loopback may use keys without TLS).
"""

from __future__ import annotations

import collections
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import grpc

PemSource = Union[str, Path, bytes, None]

CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 256 * 1024 * 1024),
    ("grpc.max_send_message_length", 256 * 1024 * 1024),
]


# RPCs safe to send again: reads, and writes that land the same way twice (Upsert by id, Delete).
# Streams are left out (a retry would replay what the server already answered), and so are
# CreateCollection/DropCollection (a repeat answers ALREADY_EXISTS/NOT_FOUND) and AdminService.
IDEMPOTENT_METHODS = {
    "semserve.v1.EncoderService": ("Embed", "Tokenize", "Similarity"),
    "semserve.v1.RerankerService": ("Rerank",),
    "semserve.v1.SearchService": ("ListCollections", "GetCollection", "Upsert", "Delete", "GetDocuments", "Search"),
    "semserve.v1.InfoService": ("GetInfo",),
}


@dataclass(frozen=True)
class RetryPolicy:
    """gRPC's own retries (a service config), for idempotent RPCs answered UNAVAILABLE (a server
    restarting or draining) or RESOURCE_EXHAUSTED (a full queue: "retry with backoff").

    gRPC waits a random time between 0 and the current backoff before each attempt (full jitter),
    multiplying the backoff by ``backoff_multiplier`` up to ``max_backoff_s``; each attempt
    counts against the call's deadline. ``max_attempts`` includes the first (gRPC caps it at 5).
    """

    max_attempts: int = 4
    initial_backoff_s: float = 0.1
    max_backoff_s: float = 2.0
    backoff_multiplier: float = 2.0
    retryable_status_codes: tuple[str, ...] = ("UNAVAILABLE", "RESOURCE_EXHAUSTED")

    def method_config(self) -> dict:
        return {
            "name": [{"service": service, "method": method}
                     for service, methods in IDEMPOTENT_METHODS.items() for method in methods],
            "retryPolicy": {
                "maxAttempts": self.max_attempts,
                "initialBackoff": f"{self.initial_backoff_s}s",
                "maxBackoff": f"{self.max_backoff_s}s",
                "backoffMultiplier": self.backoff_multiplier,
                "retryableStatusCodes": list(self.retryable_status_codes),
            },
        }


DEFAULT_RETRY = RetryPolicy()

# gRPC's default policy (pick_first) sends every call of a channel to one address. With
# "round_robin" and a target that resolves to several (a Kubernetes headless Service through
# "dns:///NAME:PORT", or "ipv4:A:P,B:P"), calls are spread over every ready address.
LOAD_BALANCING_POLICIES = ("pick_first", "round_robin")


def _options(retry: RetryPolicy | None, load_balancing: str | None = None) -> list[tuple[str, object]]:
    config: dict[str, object] = {}
    if retry is not None:
        config["methodConfig"] = [retry.method_config()]
    if load_balancing is not None:
        if load_balancing not in LOAD_BALANCING_POLICIES:
            raise ValueError(f"load_balancing must be one of {LOAD_BALANCING_POLICIES}, got {load_balancing!r}")
        config["loadBalancingConfig"] = [{load_balancing: {}}]
    options = [*CHANNEL_OPTIONS, ("grpc.enable_retries", int(retry is not None))]
    return [*options, ("grpc.service_config", json.dumps(config))] if config else options


def _pem(source: PemSource) -> bytes | None:
    if source is None or isinstance(source, bytes):
        return source
    return Path(source).read_bytes()


def channel_credentials(ca_cert: PemSource = None, client_cert: PemSource = None,
                        client_key: PemSource = None) -> grpc.ChannelCredentials:
    """TLS credentials: ``ca_cert`` to trust (system roots when None), a client certificate for mTLS."""
    if (client_cert is None) != (client_key is None):
        raise ValueError("client_cert and client_key go together")
    return grpc.ssl_channel_credentials(root_certificates=_pem(ca_cert), private_key=_pem(client_key),
                                        certificate_chain=_pem(client_cert))


class _Details(collections.namedtuple("_Details", ("method", "timeout", "metadata", "credentials",
                                                   "wait_for_ready", "compression")),
               grpc.ClientCallDetails):
    pass


def _with_key(metadata, header: tuple[str, str]):
    return [*(metadata or ()), header]


class _ApiKey(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
              grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    def __init__(self, key: str):
        self._header = ("authorization", f"Bearer {key}")

    def _details(self, d):
        return _Details(d.method, d.timeout, _with_key(d.metadata, self._header), d.credentials,
                        d.wait_for_ready, d.compression)

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation, details, requests):
        return continuation(self._details(details), requests)

    def intercept_stream_stream(self, continuation, details, requests):
        return continuation(self._details(details), requests)


class _AsyncApiKey(grpc.aio.UnaryUnaryClientInterceptor, grpc.aio.UnaryStreamClientInterceptor,
                   grpc.aio.StreamUnaryClientInterceptor, grpc.aio.StreamStreamClientInterceptor):
    def __init__(self, key: str):
        self._header = ("authorization", f"Bearer {key}")

    def _details(self, d):
        return grpc.aio.ClientCallDetails(d.method, d.timeout, _with_key(d.metadata, self._header), d.credentials,
                                          d.wait_for_ready)

    async def intercept_unary_unary(self, continuation, details, request):
        return await continuation(self._details(details), request)

    async def intercept_unary_stream(self, continuation, details, request):
        return await continuation(self._details(details), request)

    async def intercept_stream_unary(self, continuation, details, requests):
        return await continuation(self._details(details), requests)

    async def intercept_stream_stream(self, continuation, details, requests):
        return await continuation(self._details(details), requests)


def open_channel(target: str, *, tls: bool = False, ca_cert: PemSource = None, client_cert: PemSource = None,
                 client_key: PemSource = None, api_key: str | None = None,
                 retry: RetryPolicy | None = DEFAULT_RETRY, load_balancing: str | None = None) -> grpc.Channel:
    """A blocking channel; TLS when ``tls`` or any certificate is given; ``retry=None`` turns retries off;
    ``load_balancing="round_robin"`` spreads calls over every address the target resolves to."""
    options = _options(retry, load_balancing)
    if tls or ca_cert is not None or client_cert is not None:
        channel = grpc.secure_channel(target, channel_credentials(ca_cert, client_cert, client_key), options)
    else:
        channel = grpc.insecure_channel(target, options=options)
    return grpc.intercept_channel(channel, _ApiKey(api_key)) if api_key else channel


def open_aio_channel(target: str, *, tls: bool = False, ca_cert: PemSource = None, client_cert: PemSource = None,
                     client_key: PemSource = None, api_key: str | None = None,
                     retry: RetryPolicy | None = DEFAULT_RETRY,
                     load_balancing: str | None = None) -> grpc.aio.Channel:
    """An asyncio channel, as ``open_channel``."""
    interceptors = [_AsyncApiKey(api_key)] if api_key else None
    options = _options(retry, load_balancing)
    if tls or ca_cert is not None or client_cert is not None:
        return grpc.aio.secure_channel(target, channel_credentials(ca_cert, client_cert, client_key), options,
                                       interceptors=interceptors)
    return grpc.aio.insecure_channel(target, options=options, interceptors=interceptors)
