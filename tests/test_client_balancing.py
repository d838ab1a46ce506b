"""Client-side load balancing, as used behind a Kubernetes headless Service: with
``round_robin`` the Python and Node clients spread one channel's calls over every address the
target resolves to; with gRPC's default (pick_first) they all go to one."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from semserve_client import SemserveClient
from semserve_client.v1 import common_pb2, encoder_pb2, encoder_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]
CALLS = 24


class Counting(encoder_pb2_grpc.EncoderServiceServicer):
    def __init__(self):
        self.calls = 0
        self._lock = threading.Lock()

    def Embed(self, request, context):
        with self._lock:
            self.calls += 1
        return encoder_pb2.EmbedResponse(model="m", dimension=1, format=common_pb2.EMBEDDING_FORMAT_FLOAT_LIST,
                                         embeddings=[common_pb2.Embedding(values=[1.0]) for _ in request.texts])


@pytest.fixture
def two_servers():
    servers, servicers, ports = [], [], []
    for _ in range(2):
        servicer = Counting()
        server = grpc.server(futures.ThreadPoolExecutor(4))
        encoder_pb2_grpc.add_EncoderServiceServicer_to_server(servicer, server)
        ports.append(server.add_insecure_port("127.0.0.1:0"))
        server.start()
        servers.append(server)
        servicers.append(servicer)
    # One name, two addresses: what DNS answers for a headless Service with two ready pods.
    yield "ipv4:" + ",".join(f"127.0.0.1:{p}" for p in ports), servicers
    for server in servers:
        server.stop(None)


def calls_seen(servicers) -> list[int]:
    return sorted(s.calls for s in servicers)


def spread(servicers) -> bool:
    """Both addresses got a real share (the first calls may go to whichever connected first)."""
    seen = calls_seen(servicers)
    return sum(seen) == CALLS and seen[0] >= CALLS // 4


def test_python_round_robin_spreads_calls_over_every_address(two_servers):
    target, servicers = two_servers
    with SemserveClient(target, timeout=10, load_balancing="round_robin") as client:
        for _ in range(CALLS):
            client.embed(["x"])
    assert spread(servicers), calls_seen(servicers)


def test_python_default_sends_every_call_to_one_address(two_servers):
    target, servicers = two_servers
    with SemserveClient(target, timeout=10) as client:
        for _ in range(CALLS):
            client.embed(["x"])
    assert calls_seen(servicers) == [0, CALLS]


def test_unknown_policy_is_refused():
    with pytest.raises(ValueError, match="round_robin"):
        SemserveClient("127.0.0.1:1", load_balancing="least_loaded")


NODE_SCRIPT = """
const { SemserveClient } = require(process.argv[1]);
const options = JSON.parse(process.argv[3]);
const client = new SemserveClient(process.argv[2], options);
(async () => {
  for (let i = 0; i < Number(process.argv[4]); i += 1) await client.embed(['x'], { format: 'list' });
  client.close();
})().catch((e) => { console.error(e); process.exit(1); });
"""


@pytest.mark.parametrize("options, balanced", [({"loadBalancing": "round_robin"}, True), ({}, False)])
def test_node_client_balances_when_asked(two_servers, options, balanced):
    node = shutil.which("node")
    if node is None or not (ROOT / "client" / "node" / "node_modules").is_dir():
        pytest.skip("node or client/node/node_modules is missing (make test installs them)")
    target, servicers = two_servers
    done = subprocess.run([node, "-e", NODE_SCRIPT, str(ROOT / "client" / "node" / "semserve.js"), target,
                           json.dumps(options), str(CALLS)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert spread(servicers) if balanced else calls_seen(servicers) == [0, CALLS], calls_seen(servicers)
