"""/metrics over HTTP from a running `semserve serve`, in one process and with a front-end process:
per-RPC counts by status and latency, tokenization, queue and inference time per model, queue
gauges, search latency, collection sizes and store commits."""

from __future__ import annotations

import re
import socket
import time
import urllib.request

import grpc
import numpy as np
import pytest

from semserve_client import SemserveClient
from test_lifecycle import start_server


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory):
    from model_factory import make_tiny_st_encoder

    return make_tiny_st_encoder(tmp_path_factory.mktemp("enc"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return response.read().decode()


def value(text: str, series: str) -> float:
    """The value of one series line, e.g. 'semserve_queue_items{model="tiny"}'; 0 when absent."""
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.mark.parametrize("frontends", ["0", "1"])
def test_metrics_cover_calls_models_search_and_the_store(tmp_path, encoder_dir, frontends):
    port = free_port()
    proc, address, _ = start_server("--frontends", frontends, "--metrics-port", str(port), "--data-dir",
                                    str(tmp_path / "data"), "--encoder", f"tiny={encoder_dir}")
    try:
        with SemserveClient(address, timeout=60, retry=None) as c:
            for _ in range(3):
                c.embed(["metrics probe", "another text"])
            with pytest.raises(grpc.RpcError):
                c.embed([])  # INVALID_ARGUMENT
            c.create_collection("docs", dimension=8, metric="dot")
            c.upsert("docs", ["a", "b"], ["alpha", "beta"], embeddings=np.eye(8, dtype=np.float32)[:2])
            c.search_collection("docs", np.eye(8, dtype=np.float32)[:1], top_k=1)
        embed = 'method="/semserve.v1.EncoderService/Embed"'
        deadline = time.monotonic() + 10  # front ends report twice a second
        while True:
            text = scrape(port)
            if value(text, f'semserve_requests_total{{code="OK",{embed}}}') >= 3 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert value(text, f'semserve_requests_total{{code="OK",{embed}}}') == 3, text
        assert value(text, f'semserve_requests_total{{code="INVALID_ARGUMENT",{embed}}}') == 1
        assert value(text, f'semserve_request_seconds_count{{{embed}}}') == 4
        assert value(text, 'semserve_tokenize_seconds_count{model="tiny"}') >= 3
        assert value(text, 'semserve_queue_seconds_count{model="tiny"}') >= 3
        assert value(text, 'semserve_inference_seconds_count{model="tiny"}') >= 3
        assert re.search(r'^semserve_queue_items\{model="tiny"\} 0\.0$', text, re.M)
        assert value(text, 'semserve_search_seconds_count{collection="docs"}') == 1
        assert value(text, 'semserve_collection_documents{collection="docs"}') == 2
        assert value(text, 'semserve_store_commit_seconds_count{collection="docs"}') == 1
        assert value(text, 'semserve_batches_total{model="tiny"}') >= 3
    finally:
        proc.kill()
        proc.wait(10)
