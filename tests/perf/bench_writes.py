"""Write throughput and memory of the search store, over gRPC on loopback (not part of make test).

    PYTHONPATH=server:client .venv/bin/python tests/perf/bench_writes.py [--seconds 8] [--rss-documents 1000000]
        [--writers 1,4,16] [--server-tree PATH]

``--server-tree`` runs the server of another checkout (e.g. ``git worktree add /tmp/before <rev>``)
with this client, so that two stores are compared in one run on one machine.

1. Upserts of 256 documents of 384 dimensions into a durable collection (`--data-dir`), from 1 and
   from 4 writer threads at once, for ``--seconds`` each: acknowledged documents per second (each
   acknowledged upsert is on disk). The storage issue compares its store with the previous one
   on these figures, measured on the same machine.
2. The server's resident memory before and after ``--rss-documents`` short documents (8-d
   vectors, so that the figure is about the documents' text and metadata, not the vectors).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "server"), str(ROOT / "client")]

from semserve_client import SemserveClient  # noqa: E402


def start(data_dir: Path, tree: Path) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "PYTHONPATH": f"{tree / 'server'}:{tree / 'client'}"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "semserve", "serve", "--host", "127.0.0.1", "--port", "0", "--device", "cpu",
         "--metrics-port", "0", "--batch-policy", "fixed", "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tree,
    )
    for line in proc.stdout:
        match = re.search(r"listening on (\S+):(\d+)", line)
        if match:
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
            return proc, f"127.0.0.1:{match.group(2)}"
    raise RuntimeError("server did not start")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def write_rate(address: str, collection: str, writers: int, seconds: float, batch: int = 256, dim: int = 384) -> float:
    done = [0] * writers
    stop = time.monotonic() + seconds

    def writer(w: int) -> None:
        rng = np.random.default_rng(w)
        with SemserveClient(address, timeout=60) as c:
            n = 0
            while time.monotonic() < stop:
                ids = [f"{collection}-w{w}-{n}-{i}" for i in range(batch)]
                c.upsert(collection, ids, [f"document {i} of writer {w}" for i in ids],
                         embeddings=rng.standard_normal((batch, dim)).astype(np.float32))
                done[w] += batch
                n += 1

    start_at = time.monotonic()
    threads = [threading.Thread(target=writer, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done) / (time.monotonic() - start_at)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rss-documents", type=int, default=1_000_000)
    parser.add_argument("--writers", default="1,4,16", help="writer thread counts, comma-separated")
    parser.add_argument("--server-tree", type=Path, default=ROOT, help="checkout whose server is measured")
    args = parser.parse_args()
    tree = args.server_tree.resolve()
    revision = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    out: dict = {"date": time.strftime("%Y-%m-%d"), "server_tree": str(tree), "revision": revision.stdout.strip()}
    with tempfile.TemporaryDirectory(prefix="semserve-writes-") as tmp:
        proc, address = start(Path(tmp) / "data", tree)
        try:
            with SemserveClient(address, timeout=60) as c:
                for writers in (int(w) for w in args.writers.split(",")):
                    name = f"w{writers}"
                    c.create_collection(name, dimension=384, metric="cosine")
                    out[f"upsert_256x384_docs_per_s_{writers}_writers"] = round(write_rate(address, name, writers, args.seconds))
                    print(json.dumps(out), flush=True)
                if args.rss_documents:
                    c.create_collection("small", dimension=8, metric="dot")
                    out["rss_mb_before"] = round(rss_mb(proc.pid))
                    rng = np.random.default_rng(0)
                    for start_id in range(0, args.rss_documents, 4000):
                        ids = [f"doc-{i}" for i in range(start_id, min(start_id + 4000, args.rss_documents))]
                        c.upsert("small", ids, [f"a short document number {i}" for i in ids],
                                 metadata=[{"lang": "en"}] * len(ids),
                                 embeddings=rng.standard_normal((len(ids), 8)).astype(np.float32))
                    out["rss_documents"] = args.rss_documents
                    out["rss_mb_after"] = round(rss_mb(proc.pid))
        finally:
            proc.terminate()
            proc.wait(120)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
