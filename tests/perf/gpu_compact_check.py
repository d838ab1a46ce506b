"""On a CUDA machine: the compact scans (int8, binary) give the same candidates on the GPU as on
the CPU (float16 widening and the sign table on the device). Needs torch and numpy only.

    PYTHONPATH=server python3 tests/perf/gpu_compact_check.py
"""

from __future__ import annotations

import json
import time

import numpy as np
import torch

from semserve.search.compact import binary_rows, int8_rows
from semserve.search.topk import exact_topk


def main() -> None:
    rng = np.random.default_rng(0)
    corpus = rng.standard_normal((200_000, 384)).astype(np.float32)
    corpus /= np.linalg.norm(corpus, axis=1, keepdims=True)
    queries = corpus[rng.integers(0, len(corpus), 32)] + 0.05 * rng.standard_normal((32, 384)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    out = {"device": torch.cuda.get_device_name(0)}
    for name, rows, dtype in (("int8", int8_rows(corpus), torch.int8), ("binary", binary_rows(corpus), torch.uint8)):
        results = {}
        for device in ("cpu", "cuda"):
            matrix = torch.from_numpy(rows).to(device=device, dtype=dtype)
            exact_topk([(matrix, len(rows), None)], torch.from_numpy(queries), 40, 65536, 1 << 24)  # warm
            if device == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
            hits = exact_topk([(matrix, len(rows), None)], torch.from_numpy(queries), 40, 65536, 1 << 24)
            results[device] = (hits, (time.perf_counter() - started) * 1000)
        overlap = np.mean([len({r for _, r, _ in a} & {r for _, r, _ in b}) / 40
                           for a, b in zip(results["cpu"][0], results["cuda"][0])])
        out[name] = {"candidate_overlap_cpu_vs_cuda": round(float(overlap), 4),
                     "cpu_ms": round(results["cpu"][1], 1), "cuda_ms": round(results["cuda"][1], 2),
                     "bytes": int(rows.shape[0] * rows.shape[1])}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
