"""Optional OpenTelemetry tracing of a request: its RPC, tokenization, queue wait and inference.

Off by default (``--tracing off``) and then free: nothing of OpenTelemetry is imported. With
``--tracing otlp`` each front end exports spans over OTLP to ``OTEL_EXPORTER_OTLP_ENDPOINT``
(the OpenTelemetry SDK's own settings apply; ``pip install 'semserve[tracing]'``). A call that
carries a W3C ``traceparent`` continues the caller's trace.

One span per RPC (the method's full name, with its status), and under it ``tokenize`` and
``engine`` (the call into the engine), which has ``queue`` and ``inference`` children. Those two
are placed from the engine's ``Timing`` (queue wait, then inference, after half the measured
transport time), so spans need not cross the process boundary to the engine.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any, ContextManager

import grpc

from semserve.config import ConfigError

log = logging.getLogger(__name__)

# What a span is when tracing is off; reusable, as ``nullcontext`` keeps no state.
_NO_SPAN = contextlib.nullcontext()


class Tracing:
    """A thin layer over an OpenTelemetry tracer; every method is a no-op when tracing is off."""

    def __init__(self, tracer: Any = None):
        self._tracer = tracer
        if tracer is not None:
            from opentelemetry import context, propagate, trace

            self._context, self._propagate, self._trace = context, propagate, trace

    @property
    def enabled(self) -> bool:
        return self._tracer is not None

    def rpc(self, method: str, context) -> ContextManager[Any]:
        """The server span of one call (the caller's trace continued when it sent one), current
        while the handler runs; ``context`` is the call's servicer context."""
        if self._tracer is None:
            return _NO_SPAN  # a shared no-op: a single-text call pays nothing for tracing
        carrier = {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
        return self._tracer.start_as_current_span(
            method.lstrip("/"), context=self._propagate.extract(carrier), kind=self._trace.SpanKind.SERVER,
            attributes={"rpc.system": "grpc", "rpc.method": method},
        )

    def start_rpc(self, method: str, context) -> Any:
        """A started server span that is not made current (streams: their steps run in several
        contexts); the caller ends it."""
        if self._tracer is None:
            return None
        carrier = {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
        return self._tracer.start_span(
            method.lstrip("/"), context=self._propagate.extract(carrier), kind=self._trace.SpanKind.SERVER,
            attributes={"rpc.system": "grpc", "rpc.method": method},
        )

    def span(self, name: str, attributes: dict[str, Any]) -> ContextManager[Any]:
        if self._tracer is None:
            return _NO_SPAN
        return self._tracer.start_as_current_span(name, attributes=attributes)

    def engine_phases(self, engine_span: Any, started_ns: int, timing) -> None:
        """``queue`` and ``inference`` children of ``engine_span``, placed from the engine's Timing."""
        if self._tracer is None or engine_span is None:
            return
        parent = self._trace.set_span_in_context(engine_span)
        queue_start = started_ns + int(timing.transport_s / 2 * 1e9)
        queue_end = queue_start + int(timing.queue_s * 1e9)
        inference_end = queue_end + int(timing.inference_s * 1e9)
        for name, start, end, attributes in (
            ("queue", queue_start, queue_end, {}),
            ("inference", queue_end, inference_end,
             {"semserve.batches": timing.batches, "semserve.compute_tokens": timing.compute_tokens,
              "semserve.padded_tokens": timing.padded_tokens}),
        ):
            span = self._tracer.start_span(name, context=parent, start_time=start, attributes=attributes)
            span.end(end_time=end)

    @staticmethod
    def set_status(span: Any, code: grpc.StatusCode) -> None:
        if span is not None:
            span.set_attribute("rpc.grpc.status_code", code.value[0])
            if code is not grpc.StatusCode.OK:
                from opentelemetry.trace import Status, StatusCode

                span.set_status(Status(StatusCode.ERROR, code.name))


def now_ns() -> int:
    return time.time_ns()


def setup_tracing(mode: str, process_name: str) -> Tracing:
    """The tracing of this process: ``off``, or ``otlp`` (an SDK provider with the OTLP exporter,
    unless the process already has a provider, as a test or an embedding application may)."""
    if mode == "off":
        return Tracing()
    if mode != "otlp":
        raise ConfigError(f"--tracing must be off or otlp, got {mode!r}")
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        raise ConfigError("--tracing otlp needs the OpenTelemetry SDK: pip install 'semserve[tracing]'") from None
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        except ImportError:
            raise ConfigError("--tracing otlp needs the OTLP exporter: pip install 'semserve[tracing]'") from None
        provider = TracerProvider(resource=Resource.create({"service.name": "semserve",
                                                            "service.instance.id": process_name}))
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        trace.set_tracer_provider(provider)
    return Tracing(trace.get_tracer("semserve"))
