"""``semserve-client bench``, the load generator behind docs/benchmarks.md: how many connections
it opens, and a short run of each mode against a real server."""

from __future__ import annotations

import pytest

from conftest import server_config, start_server
from semserve.config import ModelSpec
from semserve_client.bench import LoadSpec, connections, run_load


def test_connections_one_per_four_unary_calls_and_one_per_stream():
    # A server's front-end processes share connections, not calls (SO_REUSEPORT), so a stream,
    # which carries a window of calls, gets a connection of its own.
    assert connections(LoadSpec(target="x", mode="embed", concurrency=9)) == 3
    assert connections(LoadSpec(target="x", mode="rerank", concurrency=1)) == 1
    assert connections(LoadSpec(target="x", mode="embed-stream", concurrency=5, window=64)) == 5
    assert connections(LoadSpec(target="x", mode="embed-stream", concurrency=5, channels=2)) == 2


@pytest.fixture(scope="module")
def address(tmp_path_factory):
    from model_factory import make_tiny_st_encoder

    folder = make_tiny_st_encoder(tmp_path_factory.mktemp("tiny-bench"))
    handle = start_server(server_config(encoders=[ModelSpec("tiny", folder, "encoder")]))
    yield handle.address
    handle.stop()


@pytest.mark.parametrize("mode,size", [("embed", 4), ("embed-stream", 1)])
def test_a_short_run_answers_every_call(address, mode, size):
    result = run_load(LoadSpec(target=address, model="tiny", mode=mode, concurrency=3, request_size=size,
                               window=4, duration_s=1.0, warmup_s=0.2))
    assert result["errors"] == 0 and result["requests"] > 0
    assert result["items"] == result["requests"] * size
    assert result["server_total_ms"] > 0
