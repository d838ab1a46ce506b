"""Two replicas of a model on one device (``--device cpu,cpu``; ``cuda:0,cuda:0`` on a GPU): the
batcher feeds both workers, and the vectors are those of one replica."""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from conftest import server_config, start_server
from semserve.config import ModelSpec
from semserve.engine.runtime.devices import resolve_devices
from semserve_client import SemserveClient
from model_factory import make_tiny_st_encoder


def test_a_device_named_twice_holds_two_replicas():
    assert resolve_devices("cpu,cpu") == ["cpu", "cpu"]


def test_two_replicas_on_one_device_serve_the_same_vectors(tmp_path):
    folder = make_tiny_st_encoder(tmp_path / "tiny")
    texts = [f"text number {i} " * (1 + i % 7) for i in range(96)]
    vectors = {}
    for device in ("cpu", "cpu,cpu"):
        config = dataclasses.replace(server_config([ModelSpec("tiny", folder, "encoder")], max_batch_size=8),
                                     device=device)
        server = start_server(config)
        try:
            with SemserveClient(server.address, timeout=60) as client:
                assert list(client.info().models[0].devices) == device.split(",")
                with ThreadPoolExecutor(8) as pool:  # concurrent calls, so both workers get batches
                    parts = list(pool.map(lambda i: client.embed(texts[i:i + 4]).vectors, range(0, 96, 4)))
                vectors[device] = np.concatenate(parts)
                assert client.info().models[0].stats.batches >= 2
        finally:
            server.stop()
    np.testing.assert_allclose(vectors["cpu,cpu"], vectors["cpu"], rtol=1e-5, atol=1e-6)
