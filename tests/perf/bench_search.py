"""GPU check of the searcher's scan (not part of `make test`): exactness of fp16 shards against a
float64 brute force, one-query scan bandwidth against a device-to-device copy, and a batch of
queries against a plain `torch.topk(q @ M.T)`.

    PYTHONPATH=server python tests/perf/bench_search.py --rows 4000000 --dim 768
"""

from __future__ import annotations

import argparse
import json

import torch

from semserve.search.topk import exact_topk

import bench_gpu  # noqa: E402  (same folder: the shared timer)


def timed(fn, repeat: int) -> float:
    return bench_gpu.timed(fn, repeat, warmup=1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=4_000_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--chunk-rows", type=int, default=65536)
    parser.add_argument("--max-score-elements", type=int, default=1 << 24)
    args = parser.parse_args()
    device = "cuda:0"
    g = torch.Generator(device=device).manual_seed(0)
    matrix = torch.randn(args.rows, args.dim, device=device, dtype=torch.float16, generator=g)
    matrix /= matrix.float().norm(dim=1, keepdim=True).half()
    report: dict = {"device": torch.cuda.get_device_name(0), "rows": args.rows, "dim": args.dim, "k": args.k}

    # Exactness on a slice: fp16 scores vs float64 over the same fp16 vectors.
    sub = matrix[:200_000]
    q = torch.randn(8, args.dim, device=device).float()
    hits = exact_topk([(sub, sub.shape[0], None)], q.cpu(), args.k, 4096)
    ref = (q.double() @ sub.double().T).topk(args.k, dim=1)
    worst = 0.0
    overlap = 0
    for i, row in enumerate(hits):
        worst = max(worst, max(abs(s - ref.values[i, j].item()) for j, (_, _, s) in enumerate(row)))
        overlap += len({r for _, r, _ in row} & set(ref.indices[i].tolist()))
    report["fp16_max_score_error"] = worst
    report["fp16_id_overlap"] = overlap / (8 * args.k)

    nbytes = matrix.numel() * matrix.element_size()
    copy = torch.empty_like(matrix)
    t_copy = timed(lambda: copy.copy_(matrix), 5)
    del copy
    report["copy_read_write_GBps"] = 2 * nbytes / t_copy / 1e9
    report["copy_read_GBps"] = nbytes / t_copy / 1e9

    one = torch.randn(1, args.dim)
    shards = [(matrix, args.rows, None)]
    t_one = timed(lambda: exact_topk(shards, one, args.k, args.chunk_rows, args.max_score_elements), 20)
    report["one_query_ms"] = t_one * 1e3
    report["one_query_scan_GBps"] = nbytes / t_one / 1e9
    one_gpu = one.to(device, torch.float16)
    report["one_query_matmul_only_ms"] = timed(lambda: one_gpu @ matrix.T, 20) * 1e3
    report["one_query_vs_copy_bandwidth"] = report["one_query_scan_GBps"] / report["copy_read_write_GBps"]

    batch = torch.randn(args.batch, args.dim)
    t_batch = timed(lambda: exact_topk(shards, batch, args.k, args.chunk_rows, args.max_score_elements), 3)
    batch_gpu = batch.to(device, torch.float16)

    def plain():
        values, indices = torch.topk(batch_gpu @ matrix.T, args.k, dim=1)
        return values.float().cpu(), indices.cpu()

    try:
        t_plain = timed(plain, 3)
    except torch.OutOfMemoryError:
        t_plain = float("nan")
    report["batch_ms"] = t_batch * 1e3
    report["plain_torch_batch_ms"] = t_plain * 1e3
    report["batch_speedup_vs_plain"] = t_plain / t_batch
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
