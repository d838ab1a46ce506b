"""Recall and memory of int8 and binary collections on real text (not part of make test).

    PYTHONPATH=server:client .venv/bin/python tests/perf/bench_compact.py [--documents 20000] [--queries 500]

The corpus is sentences from the docstrings and comments of the Python packages installed beside
semserve (real English, varied topics), embedded with the bundled all-MiniLM-L6-v2 on this
machine; queries are further sentences of the same source, not in the corpus. For each
rescore multiplier: recall@10 of the int8 collection against an exact float32 collection of the
same vectors, and the shard bytes per document.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "server"), str(ROOT / "client")]

from semserve.config import SearchConfig  # noqa: E402
from semserve.search.store import CollectionStore  # noqa: E402

SENTENCE = re.compile(r"[A-Z][a-z][^.!?\n]{30,200}[.!?]")


def sentences(limit: int, seed: int = 0) -> list[str]:
    """Distinct sentences from the installed packages' sources, in a seeded random order."""
    found: set[str] = set()
    for path in sorted(Path(sysconfig.get_paths()["purelib"]).rglob("*.py")):
        try:
            text = path.read_text(errors="ignore")
        except OSError:
            continue
        for match in SENTENCE.finditer(text):
            sentence = " ".join(match.group(0).split())
            if len(sentence.split()) >= 6:
                found.add(sentence)
        if len(found) >= limit * 3:
            break
    ordered = sorted(found)
    random.Random(seed).shuffle(ordered)
    return ordered[:limit]


def embed(texts: list[str]) -> np.ndarray:
    from semserve.models.bundled import default_encoder_path
    from semserve.models.encoder import load_encoder
    from semserve.training.embedding import embed as embed_texts

    encoder = load_encoder(default_encoder_path(), device="cpu")
    return embed_texts(encoder, texts, batch_size=128).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--documents", type=int, default=20000)
    parser.add_argument("--queries", type=int, default=500)
    args = parser.parse_args()
    texts = sentences(args.documents + args.queries)
    started = time.monotonic()
    vectors = embed(texts)
    embed_s = time.monotonic() - started
    corpus, queries = vectors[: args.documents], vectors[args.documents :]
    ids = [f"d{i}" for i in range(len(corpus))]
    out: dict = {"date": time.strftime("%Y-%m-%d"), "documents": len(corpus), "queries": len(queries),
                 "dimension": int(vectors.shape[1]), "embed_seconds": round(embed_s, 1)}
    with tempfile.TemporaryDirectory() as tmp:
        store = CollectionStore(SearchConfig(data_dir=Path(tmp), devices="cpu"), ["cpu"])
        store.open()
        collections = {"float": store.create("float", "", corpus.shape[1], "cosine")}
        for storage, multipliers in (("int8", (1, 2, 4, 8)), ("binary", (4, 10, 20, 40))):
            for multiplier in multipliers:
                name = f"{storage}x{multiplier}"
                collections[name] = store.create(name, "", corpus.shape[1], "cosine", storage=storage,
                                                 rescore_multiplier=multiplier)
        for c in collections.values():
            for start in range(0, len(ids), 1000):
                c.upsert(ids[start : start + 1000], [""] * len(ids[start : start + 1000]),
                         [{}] * len(ids[start : start + 1000]), corpus[start : start + 1000])
        exact = collections["float"].search(queries, 10, {})
        # Bytes a row takes on the search device, and what the shards hold allocated (capacity doubles).
        out["float32_bytes_per_vector"] = corpus.shape[1] * 4
        out["int8_bytes_per_vector"] = corpus.shape[1]
        out["binary_bytes_per_vector"] = (corpus.shape[1] + 7) // 8
        out["float_allocated_bytes_per_document"] = round(collections["float"].describe()["bytes"] / len(corpus))
        for name, c in collections.items():
            if name == "float":
                continue
            started = time.monotonic()
            got = c.search(queries, 10, {})
            recall = np.mean([len({i for i, _ in g} & {i for i, _ in w}) / 10 for g, w in zip(got, exact)])
            out[name] = {"recall_at_10": round(float(recall), 4),
                         "search_ms_per_query": round((time.monotonic() - started) * 1000 / len(queries), 2)}
        out["int8_allocated_bytes_per_document"] = round(collections["int8x4"].describe()["bytes"] / len(corpus))
        out["binary_allocated_bytes_per_document"] = round(collections["binaryx10"].describe()["bytes"] / len(corpus))
        store.close()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
