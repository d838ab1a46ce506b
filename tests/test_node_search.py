"""The Node.js client's search (client/node) against a live server, checked against the Python
client: text queries from the CLI, vector queries and a rerank stage from the library, errors."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import server_config, start_server
from semserve.config import ModelSpec, SearchConfig
from semserve_client import SemserveClient

ROOT = Path(__file__).resolve().parents[1]
NODE_DIR = ROOT / "client" / "node"
NODE = shutil.which("node")

if NODE is None:
    pytest.skip("node is not on PATH; the Node.js client cannot be tested", allow_module_level=True)
if not (NODE_DIR / "node_modules").is_dir():
    pytest.skip("client/node/node_modules is missing; run `make node-install` (make test does it)",
                allow_module_level=True)

TEXTS = ["the cat sat on the mat", "dogs bark at night", "stocks fell sharply", "a kitten chased a ball",
         "rain is expected tomorrow", "the striker scored twice"]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from model_factory import make_tiny_cross_encoder, make_tiny_st_encoder

    handle = start_server(
        server_config(
            encoders=[ModelSpec("tiny", make_tiny_st_encoder(tmp_path_factory.mktemp("enc")), "encoder")],
            rerankers=[ModelSpec("ce", make_tiny_cross_encoder(tmp_path_factory.mktemp("ce")), "cross_encoder")],
            search=SearchConfig(devices="cpu", shards_per_device=2),
        )
    )
    with SemserveClient(handle.address) as c:
        c.create_collection("docs")
        c.upsert("docs", [f"d{i}" for i in range(len(TEXTS))], TEXTS,
                 metadata=[{"i": str(i)} for i in range(len(TEXTS))])
        yield handle.address, c
    handle.stop()


def node(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([NODE, *args], cwd=NODE_DIR, capture_output=True, text=True, timeout=timeout)


def test_cli_text_search_matches_the_python_client(served):
    address, c = served
    proc = node("cli.js", "--target", address, "search", "docs", "kitten", "weather",
                "--top-k", "3", "--include-text", "--include-metadata")
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)["results"]
    want = c.search_collection("docs", ["kitten", "weather"], top_k=3, include_text=True, include_metadata=True)
    assert len(results) == 2
    for got, expected in zip(results, want.results):
        assert [h["id"] for h in got["hits"]] == [h.id for h in expected.hits]
        np.testing.assert_allclose([h["score"] for h in got["hits"]], [h.score for h in expected.hits], atol=1e-6)
        assert [h["text"] for h in got["hits"]] == [h.text for h in expected.hits]
        assert [h["metadata"]["i"] for h in got["hits"]] == [h.metadata["i"] for h in expected.hits]


def test_library_vector_query_and_rerank_stage(served):
    address, c = served
    vector = c.get_documents("docs", ["d2"], include_embeddings=True).documents[0].embedding
    script = f"""
const {{ SemserveClient }} = require('./semserve');
(async () => {{
  const client = new SemserveClient({json.dumps(address)});
  try {{
    const byVector = await client.search('docs', [{json.dumps(list(vector))}], {{ topK: 2 }});
    const reranked = await client.search('docs', 'a cat', {{ topK: 4, rerank: {{ model: 'ce', topN: 2 }} }});
    process.stdout.write(JSON.stringify({{ byVector: byVector.results, reranked: reranked.results }}));
  }} finally {{ client.close(); }}
}})().catch((e) => {{ process.stderr.write(String(e)); process.exit(1); }});
"""
    proc = node("-e", script)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["byVector"][0]["hits"][0]["id"] == "d2"
    want = c.search_collection("docs", "a cat", top_k=4, rerank=True, rerank_model="ce", top_n=2).results[0].hits
    got = out["reranked"][0]["hits"]
    assert [h["id"] for h in got] == [h.id for h in want]
    np.testing.assert_allclose([h["embedding_score"] for h in got], [h.embedding_score for h in want], atol=1e-6)


def test_cli_reports_unknown_collection_as_not_found(served):
    address, _ = served
    proc = node("cli.js", "--target", address, "search", "nope", "query")
    assert proc.returncode == 1 and proc.stderr.startswith("NOT_FOUND:")
