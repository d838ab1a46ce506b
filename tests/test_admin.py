"""Run-time model management: load a further folder beside the others, unload it, lose no request."""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import pytest

from conftest import BUNDLED_NAME, server_config, start_server
from semserve.config import ModelSpec
from semserve_client import SemserveClient
from semserve_client.v1 import common_pb2, encoder_pb2, info_pb2

TOKEN = "test-admin-token"
AUTH = (("authorization", f"Bearer {TOKEN}"),)


@pytest.fixture(scope="module")
def admin_server(tmp_path_factory):
    handle = start_server(server_config(admin_token=TOKEN, model_root=tmp_path_factory.getbasetemp(),
                                        max_batch_size=4, max_queue_delay_us=0))
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    from model_factory import make_tiny_st_encoder

    return make_tiny_st_encoder(tmp_path_factory.mktemp("tiny-admin"))


def load(c: SemserveClient, name: str, path, kind=common_pb2.MODEL_KIND_ENCODER, metadata=AUTH):
    return c.admin.LoadModel(info_pb2.LoadModelRequest(name=name, path=str(path), kind=kind), metadata=metadata,
                             timeout=120)


def unload(c: SemserveClient, name: str, metadata=AUTH):
    return c.admin.UnloadModel(info_pb2.UnloadModelRequest(name=name), metadata=metadata, timeout=120)


def test_admin_is_disabled_without_a_token(client, tiny_folder):
    with pytest.raises(grpc.RpcError) as err:
        load(client, "x", tiny_folder)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED and "--admin-token" in err.value.details()
    assert str(tiny_folder) not in err.value.details()


def test_admin_needs_the_right_token(admin_server, tiny_folder):
    with SemserveClient(admin_server.address) as c:
        for metadata in ((), (("authorization", "Bearer wrong"),)):
            with pytest.raises(grpc.RpcError) as err:
                load(c, "x", tiny_folder, metadata=metadata)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_load_serve_beside_the_base_and_unload_losing_no_request(admin_server, tiny_folder):
    with SemserveClient(admin_server.address) as c:
        failures: list[BaseException] = []
        served = {"n": 0}
        stop = threading.Event()

        def keep_embedding_with_the_base():
            while not stop.is_set():
                try:
                    assert c.embed(["base model traffic"] * 3).vectors.shape == (3, 384)
                    served["n"] += 1
                except BaseException as exc:  # noqa: BLE001 - any failure is a lost request
                    failures.append(exc)

        traffic = [threading.Thread(target=keep_embedding_with_the_base) for _ in range(3)]
        for t in traffic:
            t.start()
        try:
            info = load(c, "tiny", tiny_folder).model
            assert info.name == "tiny" and info.dimension == 256 and not info.is_default
            assert c.embed(["hello"], model="tiny").vectors.shape == (1, 256)
            assert {m.name for m in c.info().models} == {BUNDLED_NAME, "tiny"}

            # requests to the model being unloaded, in flight when the unload arrives
            in_flight = [
                c.encoder.Embed.future(
                    encoder_pb2.EmbedRequest(model="tiny", texts=[f"item {i} {k} " + "word " * 120 for k in range(64)]),
                    timeout=120,
                )
                for i in range(12)
            ]
            deadline = time.monotonic() + 30

            def active() -> int:
                return next(m.stats.active_requests for m in c.info().models if m.name == "tiny")

            # wait until every request has reached the engine (running there, or already answered)
            while active() + sum(f.done() for f in in_flight) < 12 and time.monotonic() < deadline:
                time.sleep(0.002)
            assert active() >= 2, "the unload must meet requests in flight"
            unload(c, "tiny")
            results = [f.result() for f in in_flight]  # every one of them is answered
            assert all(r.dimension == 256 and len(r.embeddings) == 64 for r in results)
            with pytest.raises(grpc.RpcError) as err:
                c.embed(["after"], model="tiny")
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
            assert {m.name for m in c.info().models} == {BUNDLED_NAME}
        finally:
            stop.set()
            for t in traffic:
                t.join(30)
        assert not failures, failures[:3]
        assert served["n"] > 0


def test_load_and_unload_errors(admin_server, tiny_folder, tmp_path):
    with SemserveClient(admin_server.address) as c:
        for name, path, kind, code in [
            (BUNDLED_NAME, tiny_folder, common_pb2.MODEL_KIND_ENCODER, grpc.StatusCode.ALREADY_EXISTS),
            ("missing", tmp_path / "nope", common_pb2.MODEL_KIND_ENCODER, grpc.StatusCode.NOT_FOUND),
            ("empty", tmp_path, common_pb2.MODEL_KIND_ENCODER, grpc.StatusCode.FAILED_PRECONDITION),
            ("nokind", tiny_folder, common_pb2.MODEL_KIND_UNSPECIFIED, grpc.StatusCode.INVALID_ARGUMENT),
            ("", tiny_folder, common_pb2.MODEL_KIND_ENCODER, grpc.StatusCode.INVALID_ARGUMENT),
        ]:
            with pytest.raises(grpc.RpcError) as err:
                load(c, name, path, kind)
            assert err.value.code() == code, (name, err.value.details())
        with pytest.raises(grpc.RpcError) as err:
            unload(c, "never-loaded")
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert c.embed(["still up"]).vectors.shape == (1, 384)


def test_a_loaded_model_embeds_like_a_model_loaded_at_start(admin_server, tiny_folder):
    handle = start_server(server_config(encoders=[ModelSpec("tiny", tiny_folder, "encoder")]))
    try:
        with SemserveClient(handle.address) as at_start, SemserveClient(admin_server.address) as c:
            load(c, "tiny2", tiny_folder)
            try:
                a = at_start.embed(["same text"]).vectors
                b = c.embed(["same text"], model="tiny2").vectors
                assert np.abs(a - b).max() <= 1e-6
            finally:
                unload(c, "tiny2")
    finally:
        handle.stop()
