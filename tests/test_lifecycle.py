"""The real command lines: `semserve serve` in a child process, `semserve-client` against it,
and a graceful SIGTERM (health NOT_SERVING, in-flight calls finish, new calls refused, exit 0)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from semserve_client.v1 import encoder_pb2, encoder_pb2_grpc

GRACE_S = 15


def start_server(*extra: str, env: dict | None = None) -> tuple[subprocess.Popen, str, list[str]]:
    """Start `semserve serve` on a free port; return the process, its address and its log lines."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "semserve", "serve", "--host", "127.0.0.1", "--port", "0", "--device", "cpu",
         "--metrics-port", "0", "--grace-period-s", str(GRACE_S), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, **(env or {})},
    )
    lines: list[str] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        match = re.search(r"listening on (\S+):(\d+)", line)
        if match:
            threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()
            return proc, f"{match.group(1)}:{match.group(2)}", lines
    proc.kill()
    raise AssertionError("server did not start:\n" + "".join(lines))


@pytest.fixture(scope="module")
def server_process():
    proc, address, lines = start_server()
    yield proc, address, lines
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)


def test_start_log_line_names_address_models_and_device(server_process):
    _, address, lines = server_process
    (line,) = [l for l in lines if "listening on" in l]
    assert address in line and "all-MiniLM-L6-v2" in line and "cpu" in line


def test_client_cli_embeds_hello(server_process):
    _, address, _ = server_process
    out = subprocess.run(
        [sys.executable, "-m", "semserve_client.cli", "--target", address, "embed", "hello"],
        capture_output=True, text=True, timeout=60, check=True,
    )
    result = json.loads(out.stdout)
    assert result["dimension"] == 384 and len(result["embeddings"][0]) == 384


def test_client_cli_info_and_errors(server_process):
    _, address, _ = server_process
    out = subprocess.run([sys.executable, "-m", "semserve_client.cli", "--target", address, "info"],
                         capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(out.stdout)["models"][0]["dimension"] == 384
    bad = subprocess.run([sys.executable, "-m", "semserve_client.cli", "--target", address, "embed", "--model", "x", "hi"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "NOT_FOUND" in bad.stderr


def test_sigterm_is_graceful(server_process):
    proc, address, lines = server_process
    channel = grpc.insecure_channel(address)
    health = health_pb2_grpc.HealthStub(channel)
    watch = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=60)
    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    encoder = encoder_pb2_grpc.EncoderServiceStub(channel)
    in_flight = encoder.Embed.future(encoder_pb2.EmbedRequest(texts=["a long text " * 100] * 32), timeout=120)
    time.sleep(0.3)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
    watch.cancel()
    # a call started now is refused
    with pytest.raises(grpc.RpcError) as err:
        grpc_fresh = grpc.insecure_channel(address)
        encoder_pb2_grpc.EncoderServiceStub(grpc_fresh).Embed(encoder_pb2.EmbedRequest(texts=["new"]), timeout=10)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    # the call in flight still finishes
    assert len(in_flight.result().embeddings) == 32
    assert proc.wait(GRACE_S + 10) == 0
    assert time.monotonic() - sent < GRACE_S + 10
    assert any("stopped" in l for l in lines)


def test_environment_variables_configure_the_server():
    proc, address, lines = start_server(env={"SEMSERVE_MAX_TEXTS_PER_REQUEST": "7", "SEMSERVE_MAX_BATCH_SIZE": "3"})
    try:
        from semserve_client import SemserveClient

        with SemserveClient(address) as c:
            limits = c.info().limits
        assert limits.max_texts_per_request == 7 and limits.max_batch_size == 3
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(GRACE_S + 10) == 0


def test_bad_configuration_exits_with_a_message():
    out = subprocess.run(
        [sys.executable, "-m", "semserve", "serve", "--device", "cuda:7", "--port", "0"],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 2 and "cuda:7" in out.stderr


def test_sigterm_with_calls_in_flight_exits_within_the_grace_period():
    """250 calls in flight holding far more work than the grace period: the server stops taking
    calls, gives them the grace period, cancels the rest and exits by grace + 1 s."""
    grace_s = 2.0
    frontends = os.environ.get("SEMSERVE_TEST_FRONTENDS", "0")  # the second pass of make test: 2
    proc, address, lines = start_server("--grace-period-s", str(grace_s), "--max-queue-time-ms", "600000",
                                        "--batch-policy", "fixed", "--frontends", frontends)
    channel = grpc.insecure_channel(address)
    encoder = encoder_pb2_grpc.EncoderServiceStub(channel)
    calls = [encoder.Embed.future(encoder_pb2.EmbedRequest(texts=[f"text {i} " * 60] * 8), timeout=120)
             for i in range(250)]
    time.sleep(1.0)
    assert sum(c.done() for c in calls) < 250, "the load must outlast the grace period"
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(grace_s + 30)
    took = time.monotonic() - sent
    assert code == 0, "".join(lines[-20:])
    assert took <= grace_s + 1.0, f"exited {took:.2f}s after SIGTERM (grace {grace_s}s):\n" + "".join(lines[-8:])
    finished = [c for c in calls if c.done()]
    codes = {c.code() for c in finished}
    assert len(finished) == 250 and codes <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE,
                                              grpc.StatusCode.CANCELLED}, codes
    channel.close()
