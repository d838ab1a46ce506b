"""The Node.js client (client/node) against a live server: embed in every wire format, rerank,
info, errors. Search from Node is covered by test_node_search.py."""

import json
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
NODE_DIR = ROOT / "client" / "node"
NODE = shutil.which("node")

if NODE is None:
    pytest.skip("node is not on PATH; the Node.js client cannot be tested", allow_module_level=True)
if not (NODE_DIR / "node_modules").is_dir():
    pytest.skip(
        "client/node/node_modules is missing; run `make node-install` (make test does it)",
        allow_module_level=True,
    )

DIMENSION = 384


def run_cli(address, *args, timeout=60):
    return subprocess.run(
        [NODE, "cli.js", "--target", address, *args],
        cwd=NODE_DIR,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def cli_json(address, *args):
    proc = run_cli(address, *args)
    assert proc.returncode == 0, f"cli.js {' '.join(args)} failed ({proc.returncode}): {proc.stderr}"
    return json.loads(proc.stdout)


def test_embed_returns_unit_norm_embeddings(encoder_server):
    reply = cli_json(encoder_server.address, "embed", "hello", "world")
    assert reply["dimension"] == DIMENSION
    assert len(reply["embeddings"]) == 2
    for embedding in reply["embeddings"]:
        assert len(embedding) == DIMENSION
        assert all(isinstance(v, (int, float)) for v in embedding)
        assert math.isclose(math.sqrt(sum(v * v for v in embedding)), 1.0, abs_tol=1e-3)


@pytest.mark.parametrize(
    ("fmt", "wire_name", "tolerance"),
    [
        ("float32", "EMBEDDING_FORMAT_FLOAT32_BYTES", 1e-5),
        # float16 keeps ~11 significant bits; unit-norm components are < 1, so 2e-3 is generous.
        ("float16", "EMBEDDING_FORMAT_FLOAT16_BYTES", 2e-3),
    ],
)
def test_byte_formats_decode_to_the_float_list_values(encoder_server, fmt, wire_name, tolerance):
    texts = ["hello", "world"]
    as_list = cli_json(encoder_server.address, "embed", "--format", "list", *texts)
    as_bytes = cli_json(encoder_server.address, "embed", "--format", fmt, *texts)
    assert as_bytes["format"] == wire_name
    assert as_bytes["dimension"] == DIMENSION
    expected = np.asarray(as_list["embeddings"], dtype=np.float64)
    got = np.asarray(as_bytes["embeddings"], dtype=np.float64)
    assert got.shape == (2, DIMENSION)
    np.testing.assert_allclose(got, expected, rtol=0, atol=tolerance)


def test_info_lists_the_default_encoder(encoder_server):
    info = cli_json(encoder_server.address, "info")
    defaults = [
        m for m in info["models"] if m["is_default"] and m["kind"] == "MODEL_KIND_ENCODER"
    ]
    assert len(defaults) == 1, info["models"]
    assert defaults[0]["dimension"] == DIMENSION
    # An empty model name in Embed must land on the model info calls the default.
    assert cli_json(encoder_server.address, "embed", "x")["model"] == defaults[0]["name"]


def test_unknown_model_exits_non_zero_with_not_found(encoder_server):
    proc = run_cli(encoder_server.address, "embed", "--model", "no-such-model", "hello")
    assert proc.returncode != 0
    assert "NOT_FOUND" in proc.stderr
    assert proc.stdout == ""


def test_float16_decoding_matches_numpy():
    # No server needed: feeds known binary16 patterns (normals, subnormals, signed zero,
    # infinities, the largest finite value) through the client's decoder.
    values = np.array(
        [0.0, -0.0, 1.0, -2.5, 0.1, 65504.0, 6e-8, -3e-5, np.inf, -np.inf], dtype="<f2"
    )
    script = (
        "const {decodeEmbedding} = require('./embeddings');"
        "const data = Buffer.from(process.argv[1], 'hex');"
        "const out = decodeEmbedding({data}, 'EMBEDDING_FORMAT_FLOAT16_BYTES', 0);"
        # JSON has no -0 or Infinity, so every value travels as a string.
        "const str = (v) => (Object.is(v, -0) ? '-0' : String(v));"
        "process.stdout.write(JSON.stringify(Array.from(out, str)));"
    )
    proc = subprocess.run(
        [NODE, "-e", script, values.tobytes().hex()],
        cwd=NODE_DIR,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    got = np.array([float(v) for v in json.loads(proc.stdout)], dtype=np.float64)
    np.testing.assert_array_equal(got, values.astype(np.float64))
    assert np.signbit(got[1])


@pytest.fixture(scope="module")
def rerank_server(tmp_path_factory):
    from conftest import server_config
    from model_factory import make_tiny_cross_encoder
    from semserve.config import ModelSpec
    from conftest import start_server

    folder = make_tiny_cross_encoder(tmp_path_factory.mktemp("node-ce"), num_labels=1, seed=3)
    handle = start_server(server_config(rerankers=[ModelSpec("ce", folder, "cross_encoder")]))
    yield handle
    handle.stop()


def test_rerank_matches_the_python_client(rerank_server):
    from semserve_client import SemserveClient

    query, docs = "which car is good off-road?", ["Prado off-road", "bananas", "SUV", "越野车"]
    out = cli_json(rerank_server.address, "rerank", query, *docs)
    with SemserveClient(rerank_server.address) as c:
        want = c.rerank(query, docs)
    assert [r["index"] for r in out["results"]] == [r.index for r in want.results]
    for got, ref in zip(out["results"], want.results):
        assert abs(got["score"] - ref.score) <= 1e-6
