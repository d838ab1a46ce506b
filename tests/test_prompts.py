"""Prompts against sentence-transformers' encode(prompt_name=..., prompt=...): a model folder's
named prompts, literal prompts, a default prompt per model, the prompt's tokens in Tokenize and
token_counts, bad names, a collection's document and query prompts, the CLI and the Node client."""

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

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = {"query": "query: ", "passage": "passage: "}
TEXTS = ["how tall is the lighthouse", "The lighthouse is forty metres tall."]


@pytest.fixture(scope="module")
def prompted_folder(tmp_path_factory) -> Path:
    from model_factory import make_tiny_st_encoder

    folder = Path(make_tiny_st_encoder(tmp_path_factory.mktemp("prompted") / "e5ish"))
    config_file = folder / "config_sentence_transformers.json"
    config = json.loads(config_file.read_text()) if config_file.exists() else {}
    config.update({"prompts": PROMPTS, "default_prompt_name": None})
    config_file.write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="module")
def server(prompted_folder):
    handle = start_server(server_config(encoders=[
        ModelSpec("plain", prompted_folder, "encoder"),
        ModelSpec("defaulted", prompted_folder, "encoder", default_prompt_name="query"),
    ]))
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def c(server):
    with SemserveClient(server.address, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def reference(prompted_folder):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(prompted_folder), device="cpu")


def test_named_and_literal_prompts_match_sentence_transformers(c, reference):
    for kwargs in ({"prompt_name": "query"}, {"prompt_name": "passage"}, {"prompt": "instruct: find facts\n"}):
        expected = reference.encode(TEXTS, normalize_embeddings=True, **kwargs)
        got = c.embed(TEXTS, model="plain", **kwargs).vectors
        assert np.abs(got - expected).max() < 1e-5, kwargs
    plain = c.embed(TEXTS, model="plain").vectors
    assert np.abs(plain - reference.encode(TEXTS, normalize_embeddings=True)).max() < 1e-5


def test_a_default_prompt_applies_unless_the_request_names_another(c):
    query = c.embed(TEXTS, model="plain", prompt_name="query").vectors
    assert np.abs(c.embed(TEXTS, model="defaulted").vectors - query).max() < 1e-6
    none = c.embed(TEXTS, model="plain").vectors
    assert np.abs(c.embed(TEXTS, model="defaulted", prompt="").vectors - none).max() < 1e-6
    models = {m.name: m for m in c.info().models}
    assert dict(models["defaulted"].prompts) == PROMPTS and models["defaulted"].default_prompt_name == "query"
    assert models["plain"].default_prompt_name == ""


def test_the_prompt_counts_in_tokens(c):
    bare = c.embed(TEXTS[:1], model="plain").response.token_counts[0]
    with_prompt = c.embed(TEXTS[:1], model="plain", prompt_name="query").response.token_counts[0]
    assert with_prompt == bare + 2  # "query", ":"
    pieces = [t.piece for t in c.tokenize(TEXTS[:1], model="plain", prompt_name="query").texts[0].tokens]
    assert pieces[1:3] == ["query", ":"]


def test_bad_prompt_requests_are_invalid_argument(c):
    for kwargs, message in (({"prompt_name": "nope"}, "has no prompt named 'nope'; its prompts: passage, query"),
                            ({"prompt_name": "query", "prompt": "x"}, "give prompt_name or prompt, not both")):
        with pytest.raises(grpc.RpcError) as err:
            c.embed(TEXTS, model="plain", **kwargs)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in err.value.details()


def test_a_collection_embeds_documents_and_queries_with_its_prompts(c):
    info = c.create_collection("prompted", model="plain", metric="dot", document_prompt="passage: ",
                               query_prompt="query: ")
    assert (info.document_prompt, info.query_prompt) == ("passage: ", "query: ")
    c.upsert("prompted", ["d1", "d2"], TEXTS)
    stored = c.get_documents("prompted", ["d1"], include_embeddings=True).documents[0]
    passage = c.embed(TEXTS[:1], model="plain", prompt_name="passage", normalize=False).vectors[0]  # dot: as is
    assert np.abs(np.array(stored.embedding) - passage).max() < 1e-5
    assert stored.text == TEXTS[0]  # the prompt is not stored
    hit = c.search_collection("prompted", ["lighthouse height"], top_k=1).results[0].hits[0]
    query = c.embed(["lighthouse height"], model="plain", prompt_name="query", normalize=False).vectors[0]
    documents = {d.id: np.array(d.embedding) for d in
                 c.get_documents("prompted", ["d1", "d2"], include_embeddings=True).documents}
    assert abs(hit.score - float(documents[hit.id] @ query)) < 1e-4


def test_prompts_through_the_cli_and_the_node_client(server, c, capsys):
    expected = c.embed(TEXTS[:1], model="plain", prompt_name="query").vectors[0]
    assert cli_main(["--target", server.address, "embed", TEXTS[0], "--model", "plain", "--prompt-name", "query"]) == 0
    assert np.abs(np.array(json.loads(capsys.readouterr().out)["embeddings"][0]) - expected).max() < 1e-5
    node = shutil.which("node")
    if node is None or not (ROOT / "client" / "node" / "node_modules").is_dir():
        pytest.skip("node or client/node/node_modules is missing (make test installs them)")
    done = subprocess.run([node, "cli.js", "--target", server.address, "embed", TEXTS[0], "--model", "plain",
                           "--prompt", "query: "], cwd=ROOT / "client" / "node", capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert np.abs(np.array(json.loads(done.stdout)["embeddings"][0]) - expected).max() < 1e-5
