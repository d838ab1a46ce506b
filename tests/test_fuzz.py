"""Random and mutated request bytes against every method, over a generic channel: the answer is
always a precise status (never UNKNOWN or INTERNAL), and the server keeps serving. Bounded:
a fixed number of payloads per method, a seeded generator, a timeout on every call."""

from __future__ import annotations

import random
from pathlib import Path

import grpc
import pytest

from conftest import server_config, start_server
from semserve.config import ModelSpec
from semserve_client import SemserveClient
from semserve_client.v1 import common_pb2, encoder_pb2, info_pb2, reranker_pb2, search_pb2

PAYLOADS_PER_METHOD = 120
NEVER = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}

VALID = {
    "/semserve.v1.EncoderService/Embed": encoder_pb2.EmbedRequest(texts=["hello world", "second text"]),
    "/semserve.v1.EncoderService/Tokenize": encoder_pb2.TokenizeRequest(texts=["hello world"]),
    "/semserve.v1.EncoderService/Similarity": encoder_pb2.SimilarityRequest(source_text="a", texts=["b", "c"]),
    "/semserve.v1.RerankerService/Rerank": reranker_pb2.RerankRequest(query="q", documents=["d1", "d2"], top_n=1),
    "/semserve.v1.SearchService/Search": search_pb2.SearchRequest(
        collection="fuzz", top_k=3, queries=[search_pb2.SearchQuery(text="hello")]),
    "/semserve.v1.SearchService/Upsert": search_pb2.UpsertRequest(
        collection="fuzz", documents=[search_pb2.Document(id="x", text="some text", metadata={"k": "v"})]),
    "/semserve.v1.SearchService/GetDocuments": search_pb2.GetDocumentsRequest(collection="fuzz", ids=["a", "x"]),
    "/semserve.v1.SearchService/Delete": search_pb2.DeleteRequest(collection="fuzz", ids=["nope"]),
    "/semserve.v1.SearchService/GetCollection": search_pb2.GetCollectionRequest(name="fuzz"),
    "/semserve.v1.SearchService/CreateCollection": search_pb2.CreateCollectionRequest(name="made", dimension=4),
    "/semserve.v1.InfoService/GetInfo": info_pb2.GetInfoRequest(),
    "/semserve.v1.AdminService/LoadModel": info_pb2.LoadModelRequest(
        name="m", path="/nonexistent", kind=common_pb2.MODEL_KIND_ENCODER),
}


def mutate(data: bytes, rng: random.Random) -> bytes:
    if not data or rng.random() < 0.2:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
    out = bytearray(data)
    for _ in range(rng.randrange(1, 4)):
        choice = rng.random()
        if choice < 0.4:
            out[rng.randrange(len(out))] = rng.randrange(256)
        elif choice < 0.6:
            del out[rng.randrange(len(out)):]
        elif choice < 0.8:
            out.insert(rng.randrange(len(out) + 1), rng.randrange(256))
        else:
            out += bytes([0xff, 0xfe, 0x80])  # invalid UTF-8 / bad tags at the end
        if not out:
            out = bytearray(b"\x0a\x02\xc3\x28")  # field 1, invalid UTF-8
    return bytes(out)


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory):
    from model_factory import make_tiny_cross_encoder, make_tiny_st_encoder

    root = tmp_path_factory.mktemp("fuzz")
    config = server_config(
        encoders=[ModelSpec("tiny", make_tiny_st_encoder(root / "enc"), "encoder")],
        rerankers=[ModelSpec("ce", make_tiny_cross_encoder(root / "ce"), "cross_encoder")],
        admin_token="fuzz-token", max_texts_per_request=64, max_documents_per_rerank=64,
    )
    handle = start_server(config)
    with SemserveClient(handle.address) as c:
        c.create_collection("fuzz")
        c.upsert("fuzz", ["a", "b"], ["alpha text", "beta text"])
    yield handle
    handle.stop()


@pytest.mark.parametrize("method", sorted(VALID))
def test_mutated_payloads_get_precise_statuses(fuzz_server, method):
    rng = random.Random(method)
    seen: dict[grpc.StatusCode, int] = {}
    with grpc.insecure_channel(fuzz_server.address) as channel:
        call = channel.unary_unary(method)  # raw bytes in, raw bytes out
        valid = VALID[method].SerializeToString()
        for _ in range(PAYLOADS_PER_METHOD):
            try:
                call(mutate(valid, rng), timeout=20, metadata=(("authorization", "Bearer fuzz-token"),))
                code = grpc.StatusCode.OK
            except grpc.RpcError as err:
                code = err.code()
                assert code not in NEVER, f"{method}: {code} {err.details()}"
            seen[code] = seen.get(code, 0) + 1
    assert grpc.StatusCode.INVALID_ARGUMENT in seen  # the bad bytes were refused, precisely
    with SemserveClient(fuzz_server.address) as c:
        assert c.embed(["still serving"]).vectors.shape[0] == 1


def test_unparseable_stream_messages_end_the_stream_with_invalid_argument(fuzz_server):
    with grpc.insecure_channel(fuzz_server.address) as channel:
        for method in ("/semserve.v1.EncoderService/EmbedStream", "/semserve.v1.RerankerService/RerankStream"):
            call = channel.stream_stream(method)
            with pytest.raises(grpc.RpcError) as err:
                list(call(iter([b"\x0a\x02\xc3\x28", b"\xff\xff\xff"]), timeout=20))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        upsert = channel.stream_unary("/semserve.v1.SearchService/UpsertStream")
        with pytest.raises(grpc.RpcError) as err:
            upsert(iter([b"\xff\xff\xff"]), timeout=20)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
