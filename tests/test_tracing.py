"""OpenTelemetry tracing (--tracing otlp): a traced Embed continues the caller's trace and has
tokenize, engine, queue and inference spans under its RPC span; a refused call is an error span.
The spans are collected in memory: the server runs in this process, with this process' provider."""

from __future__ import annotations

import grpc
import pytest

from conftest import TEST_FRONTENDS, server_config, start_server
from semserve.config import ModelSpec
from semserve_client import SemserveClient

pytestmark = pytest.mark.skipif(TEST_FRONTENDS > 0, reason="reads the spans of an in-process server")

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


@pytest.fixture(scope="module")
def spans(tmp_path_factory):
    from model_factory import make_tiny_st_encoder
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    encoder = make_tiny_st_encoder(tmp_path_factory.mktemp("enc"))
    server = start_server(server_config(encoders=[ModelSpec("tiny", encoder, "encoder")], tracing="otlp"))
    try:
        with SemserveClient(server.address, timeout=30, retry=None) as c:
            c.encoder.Embed(_request(["traced call"]), timeout=30, metadata=(("traceparent", TRACEPARENT),))
            with pytest.raises(grpc.RpcError):
                c.embed([])
    finally:
        server.stop()
    return exporter.get_finished_spans()


def _request(texts):
    from semserve_client.v1 import encoder_pb2

    return encoder_pb2.EmbedRequest(texts=texts)


def test_a_traced_embed_nests_tokenize_engine_queue_and_inference(spans):
    traced = [s for s in spans if format(s.context.trace_id, "032x") == TRACE_ID]
    by_name = {s.name: s for s in traced}
    assert set(by_name) == {"semserve.v1.EncoderService/Embed", "tokenize", "engine", "queue", "inference"}, by_name
    rpc = by_name["semserve.v1.EncoderService/Embed"]
    assert format(rpc.parent.span_id, "016x") == "00f067aa0ba902b7"  # the caller's span
    for child in ("tokenize", "engine"):
        assert by_name[child].parent.span_id == rpc.context.span_id
    for phase in ("queue", "inference"):
        assert by_name[phase].parent.span_id == by_name["engine"].context.span_id
    assert by_name["queue"].end_time <= by_name["inference"].start_time + 1
    assert by_name["inference"].attributes["semserve.batches"] >= 1
    assert rpc.attributes["rpc.grpc.status_code"] == 0


def test_a_refused_call_is_an_error_span(spans):
    refused = [s for s in spans if s.name == "semserve.v1.EncoderService/Embed"
               and s.attributes.get("rpc.grpc.status_code") == grpc.StatusCode.INVALID_ARGUMENT.value[0]]
    assert len(refused) == 1 and not refused[0].status.is_ok
