"""Channels to a semserve server: plaintext or TLS (mTLS with a client certificate), and an API
key sent as ``authorization: Bearer KEY`` on every call.

The key travels as call metadata added by an interceptor rather than as gRPC call credentials,
which gRPC refuses on plaintext channels (a server on loopback may use keys without TLS).
"""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Union

import grpc

PemSource = Union[str, Path, bytes, None]

CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 256 * 1024 * 1024),
    ("grpc.max_send_message_length", 256 * 1024 * 1024),
]


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
                 client_key: PemSource = None, api_key: str | None = None) -> grpc.Channel:
    """A blocking channel; TLS when ``tls`` or any certificate is given."""
    if tls or ca_cert is not None or client_cert is not None:
        channel = grpc.secure_channel(target, channel_credentials(ca_cert, client_cert, client_key), CHANNEL_OPTIONS)
    else:
        channel = grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
    return grpc.intercept_channel(channel, _ApiKey(api_key)) if api_key else channel


def open_aio_channel(target: str, *, tls: bool = False, ca_cert: PemSource = None, client_cert: PemSource = None,
                     client_key: PemSource = None, api_key: str | None = None) -> grpc.aio.Channel:
    """An asyncio channel, as ``open_channel``."""
    interceptors = [_AsyncApiKey(api_key)] if api_key else None
    if tls or ca_cert is not None or client_cert is not None:
        return grpc.aio.secure_channel(target, channel_credentials(ca_cert, client_cert, client_key), CHANNEL_OPTIONS,
                                       interceptors=interceptors)
    return grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS, interceptors=interceptors)
