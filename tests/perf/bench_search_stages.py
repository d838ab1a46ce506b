"""Where a search's time goes on one GPU: the group-maxima scan, the top-k of the maxima, the
rescoring of the kept groups, and the host's part (launches, copy back, merge, lists), for one
4M x 768 fp16 shard against two 2M shards, 1 and 1024 queries, k = 10.

    python3 tests/perf/bench_search_stages.py      (a CUDA GPU; not part of `make test`)

The stages are timed with CUDA events (device time), the whole calls by the wall clock, and
the two-shard call once more under the torch profiler, whose table it prints.
"""
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[2] / "server")]
import torch  # noqa: E402

from semserve.config import SearchConfig  # noqa: E402
from semserve.search.group_max import group_max_triton, rescore_triton  # noqa: E402
from semserve.search.topk import GROUP, exact_topk, grouped_shard_topk, ranked_topk, step_rows  # noqa: E402

def bench(fn, reps=10):
    """Best mean device milliseconds of ``reps`` calls, of three tries."""
    fn(); torch.cuda.synchronize()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    best = 1e9
    for _ in range(3):
        s.record()
        for _ in range(reps): fn()
        e.record(); torch.cuda.synchronize()
        best = min(best, s.elapsed_time(e) / reps)
    return best

def wall(fn, reps=10):
    """Best mean wall milliseconds of ``reps`` calls, the device synchronised, of three tries."""
    fn(); torch.cuda.synchronize()
    best = 1e9
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(reps): fn()
        torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - t) / reps * 1e3)
    return best

c = SearchConfig()
k, dim = 10, 768
whole = torch.randn(4_000_000, dim, device="cuda", dtype=torch.float16)
halves = [whole[:2_000_000].clone(), whole[2_000_000:].clone()]
out = {}
for n in (1, 1024):
    qc = torch.nn.functional.normalize(torch.randn(n, dim), dim=1)
    q = qc.to("cuda", torch.float16)
    for rows, m in (("4M", whole), ("2M", halves[0])):
        step = step_rows(c.chunk_rows, n, c.max_score_elements) * GROUP
        out[f"{n}q {rows} group_max ms"] = bench(lambda: group_max_triton(q, m[:min(step, m.shape[0])], None))
        maxima = group_max_triton(q, m[:min(step, m.shape[0])], None)
        out[f"{n}q {rows} topk(maxima) ms"] = bench(lambda: torch.topk(maxima, k, dim=1, sorted=False))
        groups = torch.topk(maxima, k, dim=1, sorted=False)[1]
        out[f"{n}q {rows} rescore ms"] = bench(lambda: rescore_triton(q, m, groups, m.shape[0], None))
        out[f"{n}q {rows} grouped_shard_topk ms"] = bench(lambda: grouped_shard_topk(m, m.shape[0], q, k, step, None, group_max_triton, rescore_triton))
        out[f"{n}q {rows} steps"] = -(-m.shape[0] // step)
    out[f"{n}q exact_topk one 4M shard wall ms"] = wall(lambda: exact_topk([(whole, whole.shape[0], None)], qc, k, c.chunk_rows, c.max_score_elements))
    out[f"{n}q exact_topk two 2M shards, one GPU wall ms"] = wall(lambda: exact_topk([(h, h.shape[0], None) for h in halves], qc, k, c.chunk_rows, c.max_score_elements))
    out[f"{n}q ranked_topk two 2M shards, one GPU wall ms"] = wall(lambda: ranked_topk([(h, h.shape[0], None) for h in halves], qc, k, c.chunk_rows, c.max_score_elements))
    # host time to launch everything of the two-shard search (no sync inside until copy-back waits)
    from torch.profiler import profile, ProfilerActivity
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            ranked_topk([(h, h.shape[0], None) for h in halves], qc, k, c.chunk_rows, c.max_score_elements)
        torch.cuda.synchronize()
    print(f"== profile {n}q two shards")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=14))
for key, v in out.items():
    print(key, round(v, 4) if isinstance(v, float) else v)
