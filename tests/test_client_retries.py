"""Client retries against a server that refuses and then accepts: the Python and Node clients
retry idempotent calls answered RESOURCE_EXHAUSTED or UNAVAILABLE with backoff, within bounded
attempts; never a non-idempotent call; and not at all when retries are turned off."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from semserve_client import RetryPolicy, SemserveClient
from semserve_client.v1 import common_pb2, encoder_pb2, encoder_pb2_grpc, search_pb2, search_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]


class Refusing(encoder_pb2_grpc.EncoderServiceServicer, search_pb2_grpc.SearchServiceServicer):
    """Answers ``code`` to the first ``refusals`` calls of each method, then succeeds."""

    def __init__(self, refusals: int, code: grpc.StatusCode):
        self.refusals, self.code = refusals, code
        self.attempts: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def _attempt(self, method: str, context) -> bool:
        with self._lock:
            seen = self.attempts.setdefault(method, [])
            seen.append(time.monotonic())
            refuse = len(seen) <= self.refusals
        if refuse:
            context.abort(self.code, "busy; retry with backoff")
        return True

    def Embed(self, request, context):
        self._attempt("Embed", context)
        return encoder_pb2.EmbedResponse(model="m", dimension=1, format=common_pb2.EMBEDDING_FORMAT_FLOAT_LIST,
                                         embeddings=[common_pb2.Embedding(values=[1.0]) for _ in request.texts])

    def CreateCollection(self, request, context):
        self._attempt("CreateCollection", context)
        return search_pb2.CreateCollectionResponse()


@pytest.fixture
def refusing_server(request):
    refusals, code = request.param
    servicer = Refusing(refusals, code)
    server = grpc.server(futures.ThreadPoolExecutor(4))
    encoder_pb2_grpc.add_EncoderServiceServicer_to_server(servicer, server)
    search_pb2_grpc.add_SearchServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}", servicer
    server.stop(0)


@pytest.mark.parametrize("refusing_server", [(2, grpc.StatusCode.RESOURCE_EXHAUSTED), (2, grpc.StatusCode.UNAVAILABLE)],
                         indirect=True, ids=["resource_exhausted", "unavailable"])
def test_python_client_retries_idempotent_calls_with_backoff(refusing_server):
    address, servicer = refusing_server
    policy = RetryPolicy(initial_backoff_s=0.2, max_backoff_s=1.0)
    with SemserveClient(address, timeout=30, retry=policy) as c:
        assert c.embed(["x"], format="float_list").vectors.shape == (1, 1)
        attempts = servicer.attempts["Embed"]
        assert len(attempts) == 3
        assert attempts[-1] - attempts[0] < 0.2 + 0.4 + 0.5  # within the backoff bounds (full jitter)
        with pytest.raises(grpc.RpcError) as err:  # not idempotent: the first answer stands
            c.create_collection("c", dimension=4)
        assert err.value.code() == servicer.code and len(servicer.attempts["CreateCollection"]) == 1


@pytest.mark.parametrize("refusing_server", [(10, grpc.StatusCode.RESOURCE_EXHAUSTED)], indirect=True)
def test_retries_are_bounded_and_can_be_turned_off(refusing_server):
    address, servicer = refusing_server
    with SemserveClient(address, timeout=30, retry=RetryPolicy(max_attempts=3, initial_backoff_s=0.01)) as c:
        with pytest.raises(grpc.RpcError) as err:
            c.embed(["x"], format="float_list")
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and len(servicer.attempts["Embed"]) == 3
    with SemserveClient(address, timeout=30, retry=None) as c:
        with pytest.raises(grpc.RpcError):
            c.embed(["x"], format="float_list")
        assert len(servicer.attempts["Embed"]) == 4


NODE_SCRIPT = """
const { SemserveClient } = require(process.argv[1]);
const retry = JSON.parse(process.argv[3]);
const client = new SemserveClient(process.argv[2], { retry });
client.embed(['x'], { format: 'list' })
  .then((r) => { console.log(JSON.stringify({ ok: true, dimension: r.dimension })); })
  .catch((e) => { console.log(JSON.stringify({ ok: false, status: e.statusName })); })
  .finally(() => client.close());
"""


@pytest.mark.parametrize("refusing_server", [(2, grpc.StatusCode.RESOURCE_EXHAUSTED)], indirect=True)
def test_node_client_retries_and_can_be_turned_off(refusing_server):
    node = shutil.which("node")
    if node is None or not (ROOT / "client" / "node" / "node_modules").is_dir():
        pytest.skip("node or client/node/node_modules is missing (make test installs them)")
    address, servicer = refusing_server

    def run(retry) -> dict:
        done = subprocess.run([node, "-e", NODE_SCRIPT, str(ROOT / "client" / "node" / "semserve.js"), address,
                               json.dumps(retry)], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout.strip().splitlines()[-1])

    assert run(False) == {"ok": False, "status": "RESOURCE_EXHAUSTED"}
    assert len(servicer.attempts["Embed"]) == 1
    assert run({"initialBackoffMs": 50}) == {"ok": True, "dimension": 1}
    assert len(servicer.attempts["Embed"]) == 3
