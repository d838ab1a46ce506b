"""An engine process per device (``--engines per-device``), here two engines on the CPU: the
front ends spread model calls over both, every engine serves every model (also one loaded
later), GetInfo adds the engines up, collections live in the first engine, each engine serves
its own /metrics, and the death of any engine ends the server. Real processes, real gRPC
channels on 127.0.0.1; every test bounds its own time."""

from __future__ import annotations

import dataclasses
import re
import signal
import socket
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest

from conftest import ProcessServer
from semserve.config import SearchConfig, ServerConfig
from semserve.process.engines import device_list, engine_configs
from semserve_client import SemserveClient
from semserve_client.v1 import common_pb2, encoder_pb2, encoder_pb2_grpc, info_pb2
from test_multiprocess import (  # noqa: F401  (tiny_folder: a fixture)
    AUTH, TOKEN, assert_killing_ends_the_server, children, fresh_channel, tiny_config, tiny_folder,
)


def free_port_pair() -> int:
    """A port P with P + 1 free too (engine i serves /metrics on P + i)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port < 65535:
            try:
                with socket.socket() as a, socket.socket() as b:
                    a.bind(("127.0.0.1", port))
                    b.bind(("127.0.0.1", port + 1))
                return port
            except OSError:
                continue
    raise AssertionError("no two adjacent free ports")


def batches(metrics_port: int, model: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    match = re.search(rf'^semserve_batches_total\{{model="{model}"\}} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


def per_device_config(folder: Path, metrics_port: int = 0, **overrides) -> ServerConfig:
    return dataclasses.replace(tiny_config(folder, **overrides), device="cpu,cpu", engines="per-device",
                               metrics_port=metrics_port)


@pytest.fixture(scope="module")
def two_engines(tiny_folder):
    metrics = free_port_pair()
    config = per_device_config(tiny_folder, admin_token=TOKEN, model_root=tiny_folder.parent, max_batch_size=8,
                               metrics_port=metrics)
    server = ProcessServer(config, frontends=2)
    server.metrics_ports = (metrics, metrics + 1)
    yield server
    server.stop()


def embed_concurrently(address: str, texts: list[str], model: str = "") -> list[np.ndarray]:
    def one(text: str) -> np.ndarray:
        with fresh_channel(address) as channel:
            reply = encoder_pb2_grpc.EncoderServiceStub(channel).Embed(
                encoder_pb2.EmbedRequest(texts=[text], model=model), timeout=30)
        return np.array(reply.embeddings[0].values, dtype=np.float32)

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, texts))


def test_one_configuration_per_device_the_first_holding_the_collections():
    config = ServerConfig(device="cuda:0,cuda:1", engines="per-device", metrics_port=9090)
    first, second = engine_configs(config)
    assert (first.device, second.device) == ("cuda:0", "cuda:1")
    assert first.holds_collections and not second.holds_collections
    assert (first.metrics_port, second.metrics_port) == (9090, 9091)
    assert first.search.devices == "cuda:0,cuda:1"  # the shards may still use every device
    assert engine_configs(dataclasses.replace(config, engines="one")) == [dataclasses.replace(config, engines="one")]
    assert engine_configs(dataclasses.replace(config, device="cuda:0")) == [dataclasses.replace(config, device="cuda:0")]
    assert engine_configs(dataclasses.replace(config, metrics_port=0))[1].metrics_port == 0
    pinned = dataclasses.replace(config, search=SearchConfig(devices="cuda:1"))
    assert engine_configs(pinned)[0].search.devices == "cuda:1"
    assert device_list("cpu,cpu") == ["cpu", "cpu"] and device_list("cuda:0, cuda:1") == ["cuda:0", "cuda:1"]


def test_the_default_layout_is_an_engine_per_gpu_where_two_or_more_gpus_are_named():
    assert ServerConfig().engines == "auto"
    assert len(engine_configs(ServerConfig(device="cuda:0,cuda:1"))) == 2
    assert len(engine_configs(ServerConfig(device="cuda:0,cuda:1,cuda:2"))) == 3
    # One GPU named twice is replicas on one GPU, and the CPU has no GPU to give a process.
    for device in ("cuda:0", "cuda:0,cuda:0", "cpu", "cpu,cpu"):
        assert engine_configs(ServerConfig(device=device)) == [ServerConfig(device=device)], device
    # Asked for by name, the layout is what was asked for.
    assert len(engine_configs(ServerConfig(device="cuda:0,cuda:0", engines="per-device"))) == 2
    assert len(engine_configs(ServerConfig(device="cuda:0,cuda:1", engines="one"))) == 1


def test_model_calls_are_spread_over_both_engines_and_agree(two_engines):
    before = [batches(port, "tiny") for port in two_engines.metrics_ports]
    texts = [f"spread {i % 4}" for i in range(48)]
    vectors = embed_concurrently(two_engines.address, texts)
    for text, vector in zip(texts, vectors):  # both engines hold the same model: the same vectors
        np.testing.assert_allclose(vector, vectors[texts.index(text)], rtol=1e-5, atol=1e-6)
    after = [batches(port, "tiny") for port in two_engines.metrics_ports]
    assert all(a > b for a, b in zip(after, before)), (before, after)


def test_info_lists_every_engines_devices_and_adds_their_counters(two_engines):
    with SemserveClient(two_engines.address) as c:
        before = next(m.stats.items for m in c.info().models if m.name == "tiny")
        embed_concurrently(two_engines.address, [f"counted {i}" for i in range(20)])
        model = next(m for m in c.info().models if m.name == "tiny")
    assert list(model.devices) == ["cpu", "cpu"]
    assert model.stats.items - before == 20


def test_a_model_loaded_through_one_front_end_is_served_by_every_engine(two_engines, tiny_folder):
    with SemserveClient(two_engines.address) as c:
        loaded = c.admin.LoadModel(
            info_pb2.LoadModelRequest(name="later", path=str(tiny_folder), kind=common_pb2.MODEL_KIND_ENCODER),
            metadata=AUTH, timeout=60,
        )
        assert list(loaded.model.devices) == ["cpu", "cpu"]
    embed_concurrently(two_engines.address, [f"later {i}" for i in range(24)], model="later")
    assert all(batches(port, "later") > 0 for port in two_engines.metrics_ports)
    with SemserveClient(two_engines.address) as c:
        c.admin.UnloadModel(info_pb2.UnloadModelRequest(name="later"), metadata=AUTH, timeout=60)
        with pytest.raises(grpc.RpcError) as err:
            c.encoder.Embed(encoder_pb2.EmbedRequest(texts=["gone"], model="later"), timeout=30)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_collections_live_in_the_first_engine_and_are_searched_there(two_engines):
    with SemserveClient(two_engines.address) as c:
        c.create_collection("engines", model="tiny")
        c.upsert("engines", ["a", "b", "c"], ["a cat on a mat", "a dog in the fog", "stock prices fell"])
        for _ in range(6):  # from each front end and after embeds on either engine
            assert c.search_collection("engines", "a cat on a mat", top_k=1).results[0].hits[0].id == "a"
        assert [x.name for x in c.list_collections()] == ["engines"]
        c.drop_collection("engines")
    text = urllib.request.urlopen(f"http://127.0.0.1:{two_engines.metrics_ports[1]}/metrics", timeout=10).read()
    assert b"semserve_collection_documents" not in text  # the second engine holds no store


def test_a_killed_second_engine_ends_the_server(tiny_folder):
    server = ProcessServer(per_device_config(tiny_folder), frontends=1)
    try:
        embed_concurrently(server.address, ["before"])
        engines = {pid: line for pid, line in children(server.proc.pid).items() if "engine_main" in line}
        assert len(engines) == 2
        second = next(pid for pid, line in engines.items() if "engine-1" in line)
        assert_killing_ends_the_server(server, second, "engine 1")
    finally:
        server.stop()


def test_sigterm_drains_the_front_ends_then_stops_every_engine(tiny_folder):
    server = ProcessServer(per_device_config(tiny_folder), frontends=1)
    try:
        embed_concurrently(server.address, ["before"])
        engines = [pid for pid, line in children(server.proc.pid).items() if "engine_main" in line]
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(30) == 0
        assert all(not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
                   for pid in engines)
        assert any(line.rstrip().endswith("stopped") for line in server.lines)
    finally:
        server.stop()


def test_an_engine_per_device_without_front_ends_is_refused_with_a_message():
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "semserve", "serve", "--device", "cpu,cpu", "--engines", "per-device",
         "--frontends", "0", "--port", "0"],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 2 and "--engines per-device needs front-end processes" in out.stderr
