"""CPU benchmark of the batch policy (not part of `make test`): `make serve` defaults with the
measured policy against the old fixed numbers, and sentence-transformers in process, in one run.

The bundled all-MiniLM-L6-v2 on the CPU, texts of ~44 tokens, `semserve-client bench` in one
client process. It reports single-text calls one at a time and with 64 in flight, 32-text calls,
`SentenceTransformer.encode` on the same texts, the first request after `listening` against a
warm one, and the start-up time the measurement adds.

    PYTHONPATH=server:client .venv/bin/python tests/perf/bench_batching_cpu.py
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import time

from semserve_client import SemserveClient
from semserve_client.bench import _WORDS, LoadSpec, run_load


def texts_of_about_44_tokens(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(_WORDS) for _ in range(40)) for _ in range(count)]


def start(policy: str) -> tuple[subprocess.Popen, str, float]:
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "semserve", "serve", "--host", "127.0.0.1", "--port", "0", "--metrics-port", "0",
         "--batch-policy", policy],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    while True:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError("server did not start")
        match = re.search(r"listening on (\S+):(\d+)", line)
        if match:
            return proc, f"127.0.0.1:{match.group(2)}", time.monotonic() - started


def first_and_warm(address: str, texts: list[str]) -> tuple[float, float]:
    with SemserveClient(address) as c:
        t = time.monotonic()
        c.embed([texts[0]])
        first = time.monotonic() - t
        warm = []
        for text in texts[1:21]:
            t = time.monotonic()
            c.embed([text])
            warm.append(time.monotonic() - t)
    return first * 1000, sorted(warm)[len(warm) // 2] * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    args = parser.parse_args()
    texts = texts_of_about_44_tokens(2000)
    from semserve.models.bundled import default_encoder_path

    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(default_encoder_path()), device="cpu")
    lengths = [len(x) for x in st.tokenizer(texts[:200])["input_ids"]]
    st.encode(texts[:64], batch_size=32)
    t = time.monotonic()
    st.encode(texts[:512], batch_size=32)
    st_rate = 512 / (time.monotonic() - t)
    del st
    out: dict = {"date": time.strftime("%Y-%m-%d"), "cores": os.cpu_count(),
                 "mean_tokens": sum(lengths) / len(lengths), "st_encode_b32_texts_per_s": round(st_rate, 1)}
    print(json.dumps(out), flush=True)
    workloads = {
        "one_at_a_time": dict(mode="embed", request_size=1, concurrency=1),
        "single_64_in_flight": dict(mode="embed", request_size=1, concurrency=64),
        "32_text_2_in_flight": dict(mode="embed", request_size=32, concurrency=2),
    }
    for policy in ("fixed", "measured"):
        proc, address, start_s = start(policy)
        try:
            first_ms, warm_ms = first_and_warm(address, texts)
            with SemserveClient(address) as c:
                batching = c.info().models[0].batching
            row = {"policy": policy, "start_s": round(start_s, 1), "calibration_s": round(batching.calibration_seconds, 1),
                   "max_batch_tokens": batching.max_batch_tokens, "max_batch_size": batching.max_batch_size,
                   "first_request_ms": round(first_ms, 1), "warm_request_ms": round(warm_ms, 1)}
            for name, workload in workloads.items():
                result = run_load(LoadSpec(target=address, duration_s=args.duration, warmup_s=args.warmup,
                                           texts=texts, **workload))
                row[name] = {"texts_per_s": result["items_per_s"], "p50_ms": result["p50_ms"], "p99_ms": result["p99_ms"]}
            out[policy] = row
            print(json.dumps(row), flush=True)
        finally:
            proc.terminate()
            proc.wait(30)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
