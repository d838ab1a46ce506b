"""Shared fixtures: real servers on 127.0.0.1 (port 0), reached over real gRPC channels.

``start_server`` runs the server in this process (the engine and one front end on a loop
thread) or, with SEMSERVE_TEST_FRONTENDS=N (N >= 1), as the multi-process server: a supervisor
child process with one engine process and N front-end processes. The suite passes both ways.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/model_factory.py

from semserve.config import BatchingConfig, ModelSpec, RequestLimits, SecurityConfig, ServerConfig  # noqa: E402
from semserve.models.bundled import default_encoder_path  # noqa: E402
from semserve.server import start_in_background  # noqa: E402
from semserve_client import SemserveClient  # noqa: E402

BUNDLED_NAME = "all-MiniLM-L6-v2"
# Front-end processes for servers started by start_server; 0 runs everything in this process.
TEST_FRONTENDS = int(os.environ.get("SEMSERVE_TEST_FRONTENDS", "0"))


class ProcessServer:
    """``python -m semserve.process.supervisor`` in a child process, on a free port."""

    def __init__(self, config: ServerConfig, frontends: int):
        self.config = config
        folder = Path(tempfile.mkdtemp(prefix="semserve-test-"))
        (folder / "config.pickle").write_bytes(pickle.dumps(config))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "semserve.process.supervisor", str(folder / "config.pickle"), str(frontends)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        self.lines: list[str] = []
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.lines.append(line)
            match = re.search(r"listening on (\S+):(\d+)", line)
            if match:
                self.address = f"127.0.0.1:{match.group(2)}"
                threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True).start()
                return
        self.proc.kill()
        raise AssertionError("server did not start:\n" + "".join(self.lines))

    def stop(self, grace_s: float = 5.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(grace_s + 30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def start_server(config: ServerConfig, frontends: int | None = None):
    """A running server with ``.address`` and ``.stop()``: in process, or with front-end processes."""
    frontends = TEST_FRONTENDS if frontends is None else frontends
    if frontends:
        return ProcessServer(config, frontends)
    return start_in_background(config)


def server_config(encoders=None, rerankers=(), **overrides) -> ServerConfig:
    """A loopback CPU server config; keyword overrides go to ServerConfig, BatchingConfig, RequestLimits or
    SecurityConfig.

    The batch policy is fixed unless ``policy="measured"`` is given."""
    batching_fields = {f.name for f in dataclasses.fields(BatchingConfig)}
    limits_fields = {f.name for f in dataclasses.fields(RequestLimits)}
    batching = {k: overrides.pop(k) for k in list(overrides) if k in batching_fields}
    # Tests pin the batcher's numbers unless they ask for the measured policy themselves.
    batching.setdefault("policy", "fixed")
    batching.setdefault("explicit", frozenset(k for k in batching if k.startswith("max_batch")))
    limits = {k: overrides.pop(k) for k in list(overrides) if k in limits_fields}
    security_fields = {f.name for f in dataclasses.fields(SecurityConfig)}
    security = {k: overrides.pop(k) for k in list(overrides) if k in security_fields}
    if security:
        overrides["security"] = SecurityConfig(**security)
    if encoders is None:
        encoders = (ModelSpec(BUNDLED_NAME, default_encoder_path(), "encoder"),)
    return ServerConfig(
        host="127.0.0.1",
        port=0,
        encoders=tuple(encoders),
        rerankers=tuple(rerankers),
        device="cpu",
        batching=BatchingConfig(**batching),
        limits=RequestLimits(**limits),
        grace_period_s=5.0,
        metrics_port=0,
        **overrides,
    )


@pytest.fixture(scope="session")
def encoder_server():
    """A server hosting the bundled all-MiniLM-L6-v2 as its default encoder."""
    handle = start_server(server_config())
    yield handle
    handle.stop()


@pytest.fixture(scope="session")
def client(encoder_server):
    with SemserveClient(encoder_server.address, timeout=60) as c:
        yield c


@pytest.fixture(scope="session")
def bundled_st():
    """sentence-transformers on the same folder: the reference, never used by the server."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(default_encoder_path()), device="cpu")


@pytest.fixture(scope="session")
def small_queue_server():
    """Small queue, batches of two and 1 MiB messages: easy to fill, to keep busy and to overflow."""
    handle = start_server(
        server_config(max_queue_size=16, max_texts_per_request=16, max_documents_per_rerank=16, max_batch_size=2, max_queue_delay_us=0,
                      max_receive_message_bytes=1 << 20)
    )
    yield handle
    handle.stop()
