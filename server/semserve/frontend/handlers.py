"""The gRPC server's one handler: every service's methods, each wrapped once at start-up (metered,
unparseable messages refused), found per call by one dict lookup, with the API-key decision.

gRPC-Python's usual ways cost a front end more than the rest of a single-text call's Python:

- **Interceptors.** grpc.aio runs a server's interceptors as a chain of coroutines on every call,
  before it has a handler; metering, authorization and parsing were three of them.
- **Methods registered by name.** The generated ``add_*_to_server`` functions also call
  ``add_registered_method_handlers``, and grpc.aio's accept loop keeps one pending request per
  registered method and waits on all of them (``asyncio.wait``) for every call it accepts: 23
  methods here, so each call paid for callbacks added to and removed from 24 futures.

So the generated functions register into ``ServiceHandlers`` instead of the server, which gets
this one generic handler and no interceptors. The work is the same (every call is counted, and
timed with its status; a key without the role is refused before the handler runs; a message
that does not parse gets INVALID_ARGUMENT), done in plain calls. A lone call's handler chain
took 99 -> 85 µs on the CPU machine; served front ends moved within their spread
(docs/benchmarks.md, run 30).
"""

from __future__ import annotations

import inspect

import grpc

from semserve.frontend.auth import Authorizer, denying
from semserve.frontend.call_metrics import CallMetrics, metered
from semserve.frontend.tracing import Tracing


class _Unparseable:
    """Stands in for a request message whose bytes did not parse."""

    __slots__ = ("error",)

    def __init__(self, error: Exception):
        self.error = error

    @property
    def message(self) -> str:
        return f"the request message could not be parsed ({self.error}); send a valid serialized message"


def _parsing(deserializer):
    def parse(data: bytes):
        try:
            return deserializer(data)
        except Exception as exc:  # bad protobuf, invalid UTF-8 in a string field
            return _Unparseable(exc)

    return parse


async def _checked_stream(requests, context):
    async for request in requests:
        if isinstance(request, _Unparseable):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
        yield request


def refusing_unparseable(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """The same handler, but a message that does not parse ends the call with INVALID_ARGUMENT
    (gRPC itself would answer UNKNOWN or INTERNAL)."""
    if handler.request_deserializer is None:
        return handler
    changes = {"request_deserializer": _parsing(handler.request_deserializer)}
    if handler.unary_unary is not None:
        behaviour = handler.unary_unary

        async def unary_unary(request, context):
            if isinstance(request, _Unparseable):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
            return await behaviour(request, context)

        changes["unary_unary"] = unary_unary
    elif handler.unary_stream is not None:
        behaviour = handler.unary_stream

        async def checked_request(request, context):
            if isinstance(request, _Unparseable):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
            return request

        if inspect.isasyncgenfunction(behaviour):
            async def unary_stream(request, context):
                async for response in behaviour(await checked_request(request, context), context):
                    yield response
        else:  # a handler that writes with context.write (health's Watch)
            async def unary_stream(request, context):
                return await behaviour(await checked_request(request, context), context)

        changes["unary_stream"] = unary_stream
    elif handler.stream_unary is not None:
        behaviour = handler.stream_unary

        async def stream_unary(requests, context):
            return await behaviour(_checked_stream(requests, context), context)

        changes["stream_unary"] = stream_unary
    elif handler.stream_stream is not None:
        behaviour = handler.stream_stream

        if inspect.isasyncgenfunction(behaviour):
            async def stream_stream(requests, context):
                async for response in behaviour(_checked_stream(requests, context), context):
                    yield response
        else:
            async def stream_stream(requests, context):
                return await behaviour(_checked_stream(requests, context), context)

        changes["stream_stream"] = stream_stream
    return handler._replace(**changes)


class ServiceHandlers(grpc.GenericRpcHandler):
    """Takes registrations as a server does (``add_*_to_server(servicer, handlers)``) and serves
    them as one generic handler (``grpc.aio.server(handlers=[handlers])``)."""

    def __init__(self, metrics: CallMetrics, tracing: Tracing, authorizer: Authorizer):
        self._metrics = metrics
        self._tracing = tracing
        self._authorizer = authorizer
        # Per full method name: the servicer's handler and its served (wrapped) version.
        self._methods: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}
        self._generic: list[grpc.GenericRpcHandler] = []

    # -- registration, called by the generated add_*_to_server functions ----------------------
    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        for name, handler in handlers.items():
            self._add(f"/{service}/{name}", handler)

    def add_generic_rpc_handlers(self, handlers) -> None:
        """Kept for methods that code generated without ``add_registered_method_handlers``
        registers only this way; they are wrapped the first time they are called."""
        self._generic.extend(handlers)

    def _add(self, method: str, handler: grpc.RpcMethodHandler) -> tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]:
        served = metered(refusing_unparseable(handler), method, self._metrics, self._tracing)
        entry = self._methods[method] = (handler, served)
        return entry

    # -- serving ----------------------------------------------------------------------------
    def service(self, handler_call_details) -> grpc.RpcMethodHandler | None:
        self._metrics.calls += 1
        method = handler_call_details.method
        entry = self._methods.get(method)
        if entry is None:
            entry = self._from_generic(handler_call_details)
            if entry is None:
                return None  # UNIMPLEMENTED, from gRPC
        decision = self._authorizer.decide(method, handler_call_details.invocation_metadata)
        if decision.allowed:
            return entry[1]
        return metered(denying(entry[0], decision.code, decision.message), method, self._metrics, self._tracing)

    def _from_generic(self, handler_call_details):
        for generic in self._generic:
            handler = generic.service(handler_call_details)
            if handler is not None:
                return self._add(handler_call_details.method, handler)
        return None
