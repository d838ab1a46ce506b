"""Per-RPC metrics of one front end: calls by method and status, latency and tokenization time
(and, when tracing is on, each call's span: frontend/tracing.py).

Kept as plain numbers (no Prometheus client in the front ends): each front end reports a
snapshot to the engine with its other counters (``FrontendCounters.metrics``), and the engine's
``/metrics`` adds the snapshots of every front end up (engine/stats.py). One process serves
``/metrics`` for the whole server this way, whatever the number of front ends, without
Prometheus' multi-process file mode.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from typing import Any

import grpc

from semserve.frontend.tracing import Tracing

# Seconds; shared by the call latency and tokenization histograms.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Histogram:
    """Cumulative-ready bucket counts, a sum and a count (Prometheus histogram semantics)."""

    __slots__ = ("buckets", "total", "count")

    def __init__(self) -> None:
        self.buckets = [0] * len(BUCKETS)
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(BUCKETS):
            if value <= bound:
                self.buckets[i] += 1
                break
        self.total += value
        self.count += 1

    def snapshot(self) -> tuple[list[int], float, int]:
        return list(self.buckets), self.total, self.count


class CallMetrics:
    def __init__(self) -> None:
        self.calls = 0
        self.by_status: dict[tuple[str, str], int] = {}
        self.latency: dict[str, Histogram] = {}
        self.tokenize: dict[str, Histogram] = {}

    def observe_call(self, method: str, code: grpc.StatusCode, seconds: float) -> None:
        key = (method, code.name)
        self.by_status[key] = self.by_status.get(key, 0) + 1
        self.latency.setdefault(method, Histogram()).observe(seconds)

    def observe_tokenize(self, model: str, seconds: float) -> None:
        self.tokenize.setdefault(model, Histogram()).observe(seconds)

    def snapshot(self) -> dict[str, Any]:
        """Picklable, for the report to the engine."""
        return {
            "by_status": dict(self.by_status),
            "latency": {m: h.snapshot() for m, h in self.latency.items()},
            "tokenize": {m: h.snapshot() for m, h in self.tokenize.items()},
        }


def _code_of(context, error: BaseException | None) -> grpc.StatusCode:
    """The status the call ended with: the one the handler set or aborted with, else OK when it
    returned, CANCELLED when it was cancelled (the client went away), UNKNOWN when it raised."""
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    if error is None:
        return grpc.StatusCode.OK
    if isinstance(error, (asyncio.CancelledError, GeneratorExit)):
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.UNKNOWN


def metered(handler: grpc.RpcMethodHandler, method: str, metrics: CallMetrics,
            tracing: Tracing) -> grpc.RpcMethodHandler:
    """The same handler, recording its status and latency (and its trace span) when it ends."""
    def record(context, started: float, error: BaseException | None, span) -> None:
        code = _code_of(context, error)
        metrics.observe_call(method, code, time.monotonic() - started)
        tracing.set_status(span, code)

    def unary_result(behaviour):
        async def run(request, context):
            started, error = time.monotonic(), None
            # The current span while the handler runs, so its tokenize and engine spans nest under it.
            with tracing.rpc(method, context) as span:
                try:
                    return await behaviour(request, context)
                except BaseException as exc:
                    error = exc
                    raise
                finally:
                    record(context, started, error, span)
        return run

    def streamed(behaviour):
        if not inspect.isasyncgenfunction(behaviour):
            return unary_result(behaviour)  # writes with context.write; awaited like a unary handler

        async def run(request, context):
            started, error = time.monotonic(), None
            span = tracing.start_rpc(method, context)  # not current across yields
            try:
                async for response in behaviour(request, context):
                    yield response
            except BaseException as exc:
                error = exc
                raise
            finally:
                record(context, started, error, span)
                if span is not None:
                    span.end()
        return run

    if handler.unary_unary is not None:
        return handler._replace(unary_unary=unary_result(handler.unary_unary))
    if handler.stream_unary is not None:
        return handler._replace(stream_unary=unary_result(handler.stream_unary))
    if handler.unary_stream is not None:
        return handler._replace(unary_stream=streamed(handler.unary_stream))
    return handler._replace(stream_stream=streamed(handler.stream_stream))
