"""Several devices and replicas: two replicas of a model on one device (``--device cpu,cpu``;
``cuda:0,cuda:0`` on a GPU) serve the vectors of one, and ``--frontends auto`` grows with the
GPUs named."""

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


def test_front_ends_by_default_scale_with_the_gpus_named(monkeypatch):
    from semserve.process import supervisor

    monkeypatch.setattr(supervisor.os, "cpu_count", lambda: 32)
    assert supervisor.gpu_count("cuda:0,cuda:1") == 2
    assert supervisor.gpu_count("cuda:0,cuda:0") == 1  # two replicas, one GPU
    assert supervisor.gpu_count("cpu") == 0
    assert supervisor.default_frontends("cuda:0") == 16  # at most 16 per GPU
    assert supervisor.default_frontends("cuda:0,cuda:1") == 30  # cores - 2
    assert supervisor.default_frontends("cpu") == 0
    monkeypatch.setattr(supervisor.os, "cpu_count", lambda: 16)
    assert supervisor.default_frontends("cuda:0") == 14
    assert supervisor.default_frontends("cuda:0,cuda:1") == 14
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert supervisor.default_frontends("auto") == 0
