"""Overload bounded by time: at ten times what the server can compute, a request whose estimated
wait (queued tokens / measured tokens per second) is over --max-queue-time-ms is refused at once
with RESOURCE_EXHAUSTED, and the requests accepted are answered within twice that bound.

Open loop, as overload arrives in production: requests are sent at a fixed rate whatever the
answers, for a few seconds, over a real channel on loopback."""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
from conftest import server_config, start_server

from semserve_client.v1 import encoder_pb2, encoder_pb2_grpc

BOUND_MS = 2000  # the default of --max-queue-time-ms
TEXTS = [f"overload probe number {i} with a few more words to make it a realistic sentence of some length"
         for i in range(32)]


def request() -> encoder_pb2.EmbedRequest:
    return encoder_pb2.EmbedRequest(texts=TEXTS)


def capacity(stub, seconds: float = 3.0, in_flight: int = 2) -> float:
    """Requests per second the server completes with calls always waiting (one computing, one
    queued is enough to keep a 2-core CPU busy; more would already hit the time bound there)."""
    done = 0
    stop = time.monotonic() + seconds
    start = time.monotonic()

    def worker():
        nonlocal done
        while time.monotonic() < stop:
            try:
                stub.Embed(request(), timeout=60)
                done += 1
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc
                time.sleep(0.05)

    threads = [threading.Thread(target=worker) for _ in range(in_flight)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return done / (time.monotonic() - start)


def test_ten_times_capacity_refuses_at_once_and_bounds_accepted_latency():
    server = start_server(server_config(policy="measured", calibration_seconds=2.0, max_queue_time_ms=BOUND_MS,
                                        max_queue_delay_us=2000))
    try:
        channel = grpc.insecure_channel(server.address)
        stub = encoder_pb2_grpc.EncoderServiceStub(channel)
        stub.Embed(request(), timeout=60)
        rate = 10 * capacity(stub)
        results: list[tuple[float, grpc.StatusCode]] = []
        lock = threading.Lock()

        def record(sent: float):
            def done(future):
                with lock:
                    results.append(((time.monotonic() - sent) * 1000, future.code()))
            return done

        count = int(rate * 5.0)
        start = time.monotonic()
        for i in range(count):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            sent = time.monotonic()
            stub.Embed.future(request(), timeout=60).add_done_callback(record(sent))
        deadline = time.monotonic() + 60
        while len(results) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        channel.close()
    finally:
        server.stop()
    codes = {code for _, code in results}
    assert len(results) == count and codes <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}, codes
    accepted = np.array([ms for ms, code in results if code == grpc.StatusCode.OK])
    refused = np.array([ms for ms, code in results if code == grpc.StatusCode.RESOURCE_EXHAUSTED])
    summary = (f"offered {rate:.1f}/s x 5 s: {len(accepted)} accepted (p50 {np.percentile(accepted, 50):.0f} ms, "
               f"p99 {np.percentile(accepted, 99):.0f} ms), {len(refused)} refused "
               f"(p50 {np.percentile(refused, 50) if len(refused) else 0:.0f} ms, "
               f"p90 {np.percentile(refused, 90) if len(refused) else 0:.0f} ms)")
    print(summary)
    assert len(refused) > len(accepted), summary  # ten times capacity: most must be refused
    assert np.percentile(accepted, 99) <= 2 * BOUND_MS, summary
    assert np.percentile(refused, 50) <= 50 and np.percentile(refused, 90) <= 200, summary
