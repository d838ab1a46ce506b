"""Embed options against sentence-transformers: output precision (int8, uint8, binary, ubinary),
Matryoshka `dimensions`, truncation from the left; bad values; the options through EmbedStream,
the CLI and the Node client; a model's own int8 ranges."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import grpc
import numpy as np
import pytest

from conftest import server_config, start_server
from semserve.config import ModelSpec
from semserve_client import SemserveClient
from semserve_client.cli import main as cli_main
from semserve_client.v1 import common_pb2, encoder_pb2

ROOT = Path(__file__).resolve().parents[1]
TEXTS = ["A man is eating food.", "A monkey is playing drums.", "The new movie is awesome",
         "Two men pushed carts through the woods.", "A cheetah is running behind its prey."]
# Over MiniLM's 256 tokens, with different starts and ends, so the two directions differ.
LONG = "the beginning of a story about a lighthouse keeper. " + "filler words " * 200 + "and it ends at sea."


def fixed_ranges(dimension: int) -> np.ndarray:
    return np.array([[-1.0] * dimension, [1.0] * dimension])


@pytest.mark.parametrize("precision", ["int8", "uint8", "binary", "ubinary"])
def test_precision_matches_quantize_embeddings(client, bundled_st, precision):
    from sentence_transformers.util.quantization import quantize_embeddings

    reference_float = bundled_st.encode(TEXTS, normalize_embeddings=True)
    ranges = fixed_ranges(384) if precision in ("int8", "uint8") else None
    expected = quantize_embeddings(reference_float, precision, ranges=ranges)
    got = client.embed(TEXTS, format=precision).vectors
    assert got.dtype == expected.dtype and got.shape == expected.shape
    if precision in ("int8", "uint8"):
        # float32 sums in another order may land a value on the other side of a step boundary
        assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1
        assert (got == expected).mean() >= 0.98
    else:
        assert (np.unpackbits(got.view(np.uint8)) == np.unpackbits(expected.view(np.uint8))).mean() >= 0.999


def test_dimensions_match_truncate_dim_and_are_renormalised(client, bundled_st):
    expected = bundled_st.encode(TEXTS, truncate_dim=128, normalize_embeddings=True)
    got = client.embed(TEXTS, dimensions=128).vectors
    assert got.shape == (5, 128)
    assert np.abs(got - expected).max() < 1e-5
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    raw = client.embed(TEXTS, dimensions=128, normalize=False).vectors
    full = client.embed(TEXTS, normalize=False).vectors
    assert np.allclose(raw, full[:, :128], atol=1e-6)
    binary = client.embed(TEXTS, dimensions=100, format="ubinary")
    assert binary.vectors.shape == (5, 13) and binary.response.dimension == 100


def test_truncation_from_the_left_keeps_the_end(client, bundled_st):
    tokenizer = bundled_st.tokenizer
    try:
        tokenizer.truncation_side = "left"
        expected_left = bundled_st.encode([LONG], normalize_embeddings=True)[0]
    finally:
        tokenizer.truncation_side = "right"
    expected_right = bundled_st.encode([LONG], normalize_embeddings=True)[0]
    left = client.embed([LONG], truncation_direction="left")
    right = client.embed([LONG])
    assert np.abs(left.vectors[0] - expected_left).max() < 1e-5
    assert np.abs(right.vectors[0] - expected_right).max() < 1e-5
    assert np.abs(left.vectors[0] - right.vectors[0]).max() > 1e-3
    assert list(left.response.truncated_indexes) == [0] and list(left.response.token_counts) == [256]


def test_bad_option_values_are_invalid_argument(client):
    cases = [
        (encoder_pb2.EmbedRequest(texts=["x"], dimensions=0), "dimensions must be in 1..384"),
        (encoder_pb2.EmbedRequest(texts=["x"], dimensions=385), "dimensions must be in 1..384"),
        (encoder_pb2.EmbedRequest(texts=["x"], format=99), "unknown embedding format 99"),
        (encoder_pb2.EmbedRequest(texts=["x"], truncation_direction=7), "unknown truncation_direction 7"),
    ]
    for request, message in cases:
        with pytest.raises(grpc.RpcError) as err:
            client.encoder.Embed(request, timeout=30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in err.value.details()


def test_options_through_embed_stream(client):
    requests = [encoder_pb2.EmbedStreamRequest(id="a", request=encoder_pb2.EmbedRequest(
        texts=TEXTS[:2], dimensions=64, format=common_pb2.EMBEDDING_FORMAT_INT8_BYTES))]
    (reply,) = list(client.encoder.EmbedStream(iter(requests), timeout=30))
    assert reply.id == "a" and reply.response.dimension == 64
    assert [len(e.data) for e in reply.response.embeddings] == [64, 64]


def test_options_through_the_cli(encoder_server, capsys):
    assert cli_main(["--target", encoder_server.address, "embed", "hello", "--format", "int8", "--dimensions", "32",
                     "--truncation-direction", "left"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["dimension"] == 32 and len(out["embeddings"][0]) == 32
    assert all(isinstance(v, int) and -128 <= v <= 127 for v in out["embeddings"][0])


def test_options_through_the_node_client(encoder_server):
    node = shutil.which("node")
    if node is None or not (ROOT / "client" / "node" / "node_modules").is_dir():
        pytest.skip("node or client/node/node_modules is missing (make test installs them)")
    done = subprocess.run([node, "cli.js", "--target", encoder_server.address, "embed", "hello", "--format", "binary",
                           "--dimensions", "64", "--truncation-direction", "left"], cwd=ROOT / "client" / "node",
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    reply = json.loads(done.stdout)
    assert reply["dimension"] == 64 and reply["format"] == "EMBEDDING_FORMAT_BINARY_BYTES"
    assert len(reply["embeddings"][0]) == 8 and all(-128 <= v <= 127 for v in reply["embeddings"][0])


def test_a_models_own_int8_ranges_are_used_and_reported(tmp_path):
    from model_factory import make_tiny_st_encoder
    from sentence_transformers.util.quantization import quantize_embeddings

    folder = make_tiny_st_encoder(tmp_path / "tiny")
    rng = np.random.default_rng(0)
    lower = -rng.uniform(0.05, 0.3, 256)
    upper = rng.uniform(0.05, 0.3, 256)
    (Path(folder) / "semserve_quantization.json").write_text(json.dumps({"lower": lower.tolist(),
                                                                         "upper": upper.tolist()}))
    server = start_server(server_config(encoders=[ModelSpec("tiny", folder, "encoder")]))
    try:
        with SemserveClient(server.address, timeout=30) as c:
            info = c.info().models[0].quantization
            assert info.source == "calibrated" and np.allclose(info.lower, lower, atol=1e-6)
            floats = c.embed(TEXTS).vectors
            got = c.embed(TEXTS, format="uint8").vectors
            expected = quantize_embeddings(floats, "uint8", ranges=np.vstack([lower, upper]))
            assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1
    finally:
        server.stop()


def test_quantization_ranges_command_writes_the_file_the_server_reads(tmp_path):
    import sys

    from model_factory import make_tiny_st_encoder

    folder = make_tiny_st_encoder(tmp_path / "tiny")
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(TEXTS * 4) + "\n")
    done = subprocess.run([sys.executable, "-m", "semserve", "quantization-ranges", "--model", str(folder),
                           "--texts", str(texts), "--device", "cpu"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    written = json.loads((Path(folder) / "semserve_quantization.json").read_text())
    assert len(written["lower"]) == 256 and all(lo < up for lo, up in zip(written["lower"], written["upper"]))
    server = start_server(server_config(encoders=[ModelSpec("tiny", folder, "encoder")]))
    try:
        with SemserveClient(server.address, timeout=30) as c:
            assert c.info().models[0].quantization.source == "calibrated"
            got = c.embed(TEXTS, format="uint8").vectors  # the texts span the ranges: values use the full scale
            assert got.min() <= 1 and got.max() >= 254
    finally:
        server.stop()
