"""`semserve-client` search commands against a live server: collections, index (CSV with an
interrupted run that resumes, TSV, JSON Lines), and a two-stage search."""

from __future__ import annotations

import csv
import json

import pytest

from conftest import server_config, start_server
from semserve.config import ModelSpec, SearchConfig
from semserve_client.cli import main

ROWS = 300
EMPTY_ROWS = {17, 250}  # rows with an empty title: skipped, counted


@pytest.fixture(scope="module")
def address(tmp_path_factory):
    from model_factory import make_tiny_cross_encoder, make_tiny_st_encoder

    handle = start_server(
        server_config(
            encoders=[ModelSpec("tiny", make_tiny_st_encoder(tmp_path_factory.mktemp("enc")), "encoder")],
            rerankers=[ModelSpec("ce", make_tiny_cross_encoder(tmp_path_factory.mktemp("ce")), "cross_encoder")],
            search=SearchConfig(data_dir=tmp_path_factory.mktemp("data"), devices="cpu", shards_per_device=2),
        )
    )
    yield handle.address
    handle.stop()


def cli(capsys, address, *args) -> dict:
    capsys.readouterr()
    assert main(["--target", address, *args]) == 0, capsys.readouterr().err
    captured = capsys.readouterr()
    cli.stderr = captured.err
    return json.loads(captured.out)


@pytest.fixture
def news_csv(tmp_path):
    path = tmp_path / "news.csv"
    categories = ["world", "sport", "business", "tech"]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["article_id", "title", "category"])
        for i in range(ROWS):
            title = "" if i in EMPTY_ROWS else f"{categories[i % 4]} headline {i}, with a comma"
            writer.writerow([f"n{i}", title, categories[i % 4]])
    return path


def test_index_a_csv_interrupted_then_resumed(capsys, address, news_csv):
    created = cli(capsys, address, "collections", "create", "news")
    assert created["name"] == "news" and created["dimension"] == 256
    first = cli(capsys, address, "index", str(news_csv), "--collection", "news", "--id-column", "article_id",
                "--text-column", "title", "--metadata-columns", "category", "--batch-size", "32", "--max-rows", "100")
    assert first["rows_done"] == 100 and not first["complete"] and first["resumed_from"] == 0
    assert "rows" in cli.stderr  # the progress bar
    assert int(cli(capsys, address, "collections", "info", "news")["count"]) == 100 - len([r for r in EMPTY_ROWS if r < 100])
    progress = json.loads((news_csv.parent / "news.csv.semserve-progress.json").read_text())
    assert progress["rows_done"] == 100

    second = cli(capsys, address, "index", str(news_csv), "--collection", "news", "--id-column", "article_id",
                 "--text-column", "title", "--metadata-columns", "category", "--batch-size", "32", "--no-progress")
    assert second["resumed_from"] == 100 and second["rows_done"] == ROWS and second["complete"]
    assert second["upserted"] == ROWS - 100 - len([r for r in EMPTY_ROWS if r >= 100])
    info = cli(capsys, address, "collections", "info", "news")
    assert int(info["count"]) == ROWS - len(EMPTY_ROWS)

    third = cli(capsys, address, "index", str(news_csv), "--collection", "news", "--id-column", "article_id",
                "--text-column", "title", "--no-progress")
    assert third["upserted"] == 0 and third["resumed_from"] == ROWS

    got = cli(capsys, address, "get", "n5", "--collection", "news")
    assert got["documents"][0]["text"] == "sport headline 5, with a comma"
    assert got["documents"][0]["metadata"] == {"category": "sport"}


def test_index_tsv_and_jsonl_with_row_numbers_as_ids(capsys, address, tmp_path):
    tsv = tmp_path / "items.tsv"
    tsv.write_text("name\tbody\nx\tfirst body\ny\tsecond body\n")
    jsonl = tmp_path / "items.jsonl"
    jsonl.write_text("".join(json.dumps({"body": f"json body {i}"}) + "\n" for i in range(5)))
    cli(capsys, address, "collections", "create", "items", "--metric", "dot")
    out = cli(capsys, address, "index", str(tsv), "--collection", "items", "--text-column", "body",
              "--id-column", "name", "--no-progress")
    assert out["upserted"] == 2 and out["complete"]
    out = cli(capsys, address, "index", str(jsonl), "--collection", "items", "--text-column", "body",
              "--batch-size", "2", "--no-progress")
    assert out["upserted"] == 5
    got = cli(capsys, address, "get", "x", "0", "4", "--collection", "items")
    assert [d["text"] for d in got["documents"]] == ["first body", "json body 0", "json body 4"]
    listed = cli(capsys, address, "collections", "list")
    assert {"items", "news"} <= {c["name"] for c in listed["collections"]}
    assert cli(capsys, address, "collections", "drop", "items") == {"dropped": "items"}


def test_search_from_the_command_line_with_rerank(capsys, address):
    cli(capsys, address, "collections", "create", "small")
    cli(capsys, address, "upsert", "a", "the cat sat on the mat", "--collection", "small", "--meta", "kind=pet")
    cli(capsys, address, "upsert", "b", "markets rallied today", "--collection", "small", "--meta", "kind=fin")
    cli(capsys, address, "upsert", "c", "a kitten plays", "--collection", "small", "--meta", "kind=pet")
    plain = cli(capsys, address, "search", "cat", "--collection", "small", "--top-k", "3")
    assert len(plain["results"][0]["hits"]) == 3 and plain["results"][0]["hits"][0]["text"]
    reranked = cli(capsys, address, "search", "cat", "--collection", "small", "--top-k", "3", "--rerank",
                   "--top-n", "2")
    assert len(reranked["results"][0]["hits"]) == 2
    assert all("embedding_score" in h for h in reranked["results"][0]["hits"])
    filtered = cli(capsys, address, "search", "cat", "--collection", "small", "--top-k", "3", "--filter", "kind=fin")
    assert [h["id"] for h in filtered["results"][0]["hits"]] == ["b"]
    assert cli(capsys, address, "delete", "a", "--collection", "small") == {"deleted": 1}
    capsys.readouterr()
    assert main(["--target", address, "search", "q", "--collection", "nope"]) == 1
    assert "NOT_FOUND" in capsys.readouterr().err
