"""The fused search path on a GPU: exactness against a float32 brute force, then its speed
against plain ``torch.topk(q @ M.T)`` and the chunked path in the same run.

    python3 tests/perf/gpu_fused_topk.py [--rows 4000000] [--dim 768] [--out FILE.json]

Run on the GPU machine (Triton comes with its torch); results go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "server"), str(ROOT / "client")]

from semserve.config import SearchConfig  # noqa: E402
from semserve.search.group_max import GROUP, group_max_reference, group_max_triton, rescore_triton  # noqa: E402
from semserve.search.threshold_scan import MAX_THRESHOLD_K, complete, threshold_scan_triton, threshold_shard_topk  # noqa: E402
from semserve.search.topk import (  # noqa: E402
    exact_topk, fused_applies, grouped_shard_topk, ranked_topk, shard_topk, step_rows, threshold_applies,
)


def log(*parts) -> None:
    print(*parts, flush=True)


def timed(fn, repeat: int, warmup: int = 2) -> float:
    """Median seconds of ``fn`` (device synchronised around each call)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2]


def exactness(dim: int) -> dict:
    """Ids of the fused path against a float32 brute force over the same fp16 values; where they
    differ the scores must tie within fp16 rounding. Also the kernel's maxima against the torch
    reference, with a mask and a ragged tail."""
    out: dict = {}
    generator = torch.Generator(device="cuda").manual_seed(0)
    rows = 300_007
    matrix = torch.randn(rows, dim, device="cuda", generator=generator).half()
    matrix /= matrix.norm(dim=1, keepdim=True)
    mask = torch.rand(rows, device="cuda", generator=generator) > 0.1
    for n in (1, 7, 64, 1024):
        queries = torch.nn.functional.normalize(torch.randn(n, dim, device="cuda", generator=generator), dim=1).half()
        want = group_max_reference(queries, matrix, mask)
        got = group_max_triton(queries, matrix, mask)
        out[f"maxima_max_abs_diff_{n}"] = float((got.float() - want.float()).abs().max())
        for k in (1, 10, 100):
            hits = grouped_shard_topk(matrix, rows, queries, k, 1 << 30, mask, group_max_triton, rescore_triton)
            exact = (queries.float() @ matrix.float().T).masked_fill(~mask, float("-inf"))
            best, ids = torch.topk(exact, k, dim=1)
            mismatched = 0
            for q in range(n):
                got_ids = set(hits.rows[q].tolist())
                missing = set(ids[q].tolist()) - got_ids
                if missing:
                    # A miss is allowed only for a tie within fp16 rounding at the k-th score.
                    kth = float(best[q, -1])
                    worst_missing = max(float(exact[q, i]) for i in missing)
                    if worst_missing - kth > 2e-3:
                        mismatched += 1
            out[f"mismatched_queries_{n}_k{k}"] = mismatched
        for k in (200, 1000):
            # Large k: the sampled-threshold scan (search/threshold_scan.py), same check.
            hits = threshold_shard_topk(matrix, rows, queries, k, mask, threshold_scan_triton)
            out[f"threshold_complete_{n}_k{k}"] = complete(hits.counts.cpu(), k)
            exact = (queries.float() @ matrix.float().T).masked_fill(~mask, float("-inf"))
            best, ids = torch.topk(exact, k, dim=1)
            mismatched = 0
            for q in range(n):
                missing = set(ids[q].tolist()) - set(hits.rows[q].tolist())
                if missing and max(float(exact[q, i]) for i in missing) - float(best[q, -1]) > 2e-3:
                    mismatched += 1
            out[f"threshold_mismatched_queries_{n}_k{k}"] = mismatched
    log("exactness:", json.dumps(out))
    return out


def speed(rows: int, dim: int) -> dict:
    layout = SearchConfig()
    out: dict = {"rows": rows, "dim": dim, "group": GROUP}
    matrix = torch.randn(rows, dim, device="cuda", dtype=torch.float16)
    matrix /= matrix.norm(dim=1, keepdim=True)
    assert fused_applies(matrix, 10)
    corpus_bytes = matrix.numel() * matrix.element_size()
    copy = torch.empty_like(matrix)
    out["copy_read_gbps"] = corpus_bytes / timed(lambda: copy.copy_(matrix), 10) / 1e9
    del copy
    torch.cuda.empty_cache()

    def plain(q: torch.Tensor, k: int):
        return torch.topk(q @ matrix.T, k, dim=1)

    def chunked(q: torch.Tensor, k: int):
        step = step_rows(layout.chunk_rows, q.shape[0], layout.max_score_elements)
        return shard_topk(matrix, rows, q, k, step)

    def fused(q: torch.Tensor, k: int):
        step = step_rows(layout.chunk_rows, q.shape[0], layout.max_score_elements)
        return grouped_shard_topk(matrix, rows, q, k, step * GROUP, None, group_max_triton, rescore_triton)

    def threshold(q: torch.Tensor, k: int):
        return threshold_shard_topk(matrix, rows, q, k, None, threshold_scan_triton)

    # What a collection's search does around the scan: host queries in, ids and scores out.
    ids = [f"d{i}" for i in range(rows)]

    def end_to_end(q_cpu: torch.Tensor, k: int):
        ranked = ranked_topk([(matrix, rows, None)], q_cpu, k, layout.chunk_rows, layout.max_score_elements)
        return ranked.columns([ids])

    for n, k in ((1, 10), (64, 10), (1024, 10), (64, 100), (64, 1000), (1, 1000), (1024, 1000), (1024, 128)):
        q_cpu = torch.nn.functional.normalize(torch.randn(n, dim), dim=1)
        q = q_cpu.to("cuda", torch.float16)
        repeat = 20 if n == 1 else 5
        key = f"{n}q_k{k}"
        out[f"plain_{key}_s"] = timed(lambda: plain(q, k), repeat)
        torch.cuda.empty_cache()
        out[f"chunked_{key}_s"] = timed(lambda: chunked(q, k), repeat)
        if fused_applies(matrix, k, n, rows):
            out[f"fused_{key}_s"] = timed(lambda: fused(q, k), repeat)
            got, want = fused(q, k).rows, plain(q, k)[1]
            out[f"fused_{key}_id_overlap"] = sum(len(set(a.tolist()) & set(b.tolist()))
                                                 for a, b in zip(got, want)) / (n * k)
            out[f"fused_{key}_vs_plain"] = out[f"plain_{key}_s"] / out[f"fused_{key}_s"]
        elif k <= MAX_THRESHOLD_K:
            # Timed for one query too, where exact_topk takes the chunked path instead.
            out[f"threshold_{key}_taken"] = threshold_applies(matrix, k, n, rows)
            out[f"threshold_{key}_s"] = timed(lambda: threshold(q, k), repeat)
            hits, want = threshold(q, k), plain(q, k)[1]
            out[f"threshold_{key}_complete"] = complete(hits.counts.cpu(), k)
            out[f"threshold_{key}_mean_count_per_k"] = float(hits.counts.float().mean()) / k
            out[f"threshold_{key}_id_overlap"] = sum(len(set(a.tolist()) & set(b.tolist()))
                                                     for a, b in zip(hits.rows, want)) / (n * k)
            out[f"threshold_{key}_vs_plain"] = out[f"plain_{key}_s"] / out[f"threshold_{key}_s"]
        out[f"end_to_end_{key}_s"] = timed(lambda: end_to_end(q_cpu, k), repeat)
        if k == 10 and n in (1, 1024):
            # The same corpus as two shards on this device, each on its own stream (exact_topk).
            half = rows // 2
            two = [(matrix[:half], half, None), (matrix[half:], rows - half, None)]
            out[f"end_to_end_2shards_{key}_s"] = timed(
                lambda: exact_topk(two, q_cpu, k, layout.chunk_rows, layout.max_score_elements), repeat)
            same = exact_topk(two, q_cpu, k, layout.chunk_rows, layout.max_score_elements)
            whole = exact_topk([(matrix, rows, None)], q_cpu, k, layout.chunk_rows, layout.max_score_elements)
            out[f"end_to_end_2shards_{key}_id_overlap"] = sum(
                len({(s * half + r) for s, r, _ in a} & {r for _, r, _ in b}) for a, b in zip(same, whole)) / (n * k)
        torch.cuda.empty_cache()
        log(key, {name: round(v, 6) if isinstance(v, float) else v for name, v in out.items() if key in name})
    out["fused_1q_k10_read_gbps"] = corpus_bytes / out["fused_1q_k10_s"] / 1e9
    out["fused_1q_k10_of_copy_read"] = out["fused_1q_k10_read_gbps"] / out["copy_read_gbps"]
    out["end_to_end_1q_k10_read_gbps"] = corpus_bytes / out["end_to_end_1q_k10_s"] / 1e9
    log("speed:", json.dumps(out))
    return out


def profiles(rows: int, dim: int) -> dict:
    """Where the time goes in the missed rows: CPU and CUDA time per operator."""
    from torch.profiler import ProfilerActivity, profile

    layout = SearchConfig()
    matrix = torch.randn(rows, dim, device="cuda", dtype=torch.float16)
    matrix /= matrix.norm(dim=1, keepdim=True)
    out = {}
    ids = [f"d{i}" for i in range(rows)]
    for name, n, k in (("1q_k10_end_to_end", 1, 10), ("64q_k1000_end_to_end", 64, 1000)):
        q = torch.nn.functional.normalize(torch.randn(n, dim), dim=1)
        run = lambda: ranked_topk([(matrix, rows, None)], q, k, layout.chunk_rows,  # noqa: E731
                                  layout.max_score_elements).columns([ids])
        for _ in range(3):
            run()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(5):
                run()
            torch.cuda.synchronize()
        table = prof.key_averages().table(sort_by="cpu_time_total", row_limit=18)
        log(f"profile {name} (5 calls):\n{table}")
        out[name] = table
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=4_000_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--skip-exactness", action="store_true")
    parser.add_argument("--profile", action="store_true",
                        help="torch profiler tables of the rows that miss their targets (1 query end to end, k = 1000)")
    args = parser.parse_args()
    results = {"date": time.strftime("%Y-%m-%d"), "device": torch.cuda.get_device_name(0), "torch": torch.__version__,
               "command": " ".join(sys.argv)}
    if not args.skip_exactness:
        results["exactness"] = exactness(args.dim)
    results["speed"] = speed(args.rows, args.dim)
    if args.profile:
        results["profiles"] = profiles(args.rows, args.dim)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
