"""GPU benchmark: semserve against the peers a user would otherwise pick, in one run on one GPU.

Run with `make bench-gpu` (or `python tests/perf/bench_gpu.py --minilm DIR --out FILE`) on a
machine with a CUDA GPU. It measures, on the same deterministic texts:
  peers   sentence-transformers encode (batch 256, and one text per call), CrossEncoder.predict,
          a BERT-base-sized encoder, and the GPU's fp16 matrix rate;
  semserve a server started on the GPU, driven over gRPC by `semserve-client bench`
          (several client processes), for each target of docs/benchmarks.md.
It prints every figure with its ratio to the peer and writes JSON. Not part of `make test`.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "server"), str(ROOT / "client")]

from semserve_client import SemserveClient  # noqa: E402
from semserve_client.bench import LoadSpec, run_load, synthetic_texts  # noqa: E402


def log(*parts) -> None:
    print(*parts, flush=True)


def timed(fn, repeat: int = 1, warmup: int = 0) -> float:
    """Mean seconds of ``fn`` over ``repeat`` calls, the device synchronised on both sides."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeat


def matmul_tflops() -> float:
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.float16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.float16)
    for _ in range(3):
        a @ b
    seconds = timed(lambda: a @ b, repeat=20)
    return 2 * 8192**3 / seconds / 1e12


def make_random_folder(path: Path, tokenizer_dir: Path, kind: str, **config) -> Path:
    """A random-init BERT folder (speed does not depend on weights) with a real tokenizer."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(**config)
    model = BertModel(cfg) if kind == "encoder" else BertForSequenceClassification(cfg)
    model.half().save_pretrained(path)
    AutoTokenizer.from_pretrained(str(tokenizer_dir)).save_pretrained(path)
    return path


def st_folder(hf_folder: Path, out: Path) -> Path:
    from sentence_transformers import SentenceTransformer, models

    transformer = models.Transformer(str(hf_folder), max_seq_length=256)
    pooling = models.Pooling(transformer.get_word_embedding_dimension(), "mean")
    SentenceTransformer(modules=[transformer, pooling]).save(str(out))
    return out


def peer_encode(folder: Path, texts: list[str], batch_size: int) -> float:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(folder), device="cuda").half()
    model.encode(texts[:2048], batch_size=batch_size)
    seconds = timed(lambda: model.encode(texts, batch_size=batch_size, convert_to_numpy=True))
    del model
    return len(texts) / seconds


def peer_encode_single(folder: Path, texts: list[str]) -> float:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(folder), device="cuda").half()
    for t in texts[:20]:
        model.encode([t])
    seconds = timed(lambda: [model.encode([t]) for t in texts])
    del model
    return len(texts) / seconds


def peer_rerank(folder: Path, texts: list[str], batch_size: int) -> float:
    from sentence_transformers import CrossEncoder

    model = CrossEncoder(str(folder), device="cuda")
    model.model.half()
    pairs = [(texts[i], texts[i + 1]) for i in range(0, len(texts) - 1)]
    model.predict(pairs[:2048], batch_size=batch_size)
    seconds = timed(lambda: model.predict(pairs, batch_size=batch_size))
    del model
    return len(pairs) / seconds


def search_bench(rows: int, dim: int, k: int) -> dict:
    """The searcher's scoring path (semserve.search.topk.exact_topk, as Collection.search calls it)
    on one fp16 shard, against the device's copy bandwidth and plain torch matmul + topk."""
    from sentence_transformers import util

    from semserve.config import SearchConfig
    from semserve.search.topk import exact_topk

    layout = SearchConfig()
    out: dict = {"rows": rows, "dim": dim, "k": k}
    matrix = torch.randn(rows, dim, device="cuda", dtype=torch.float16)
    matrix /= matrix.norm(dim=1, keepdim=True)
    corpus_bytes = matrix.numel() * matrix.element_size()
    copy = torch.empty_like(matrix)
    copy.copy_(matrix)
    seconds = timed(lambda: copy.copy_(matrix), repeat=10)
    del copy
    out["copy_read_write_gbps"] = 2 * corpus_bytes / seconds / 1e9
    out["copy_read_gbps"] = corpus_bytes / seconds / 1e9

    def ours(queries: torch.Tensor):
        return exact_topk([(matrix, rows, None)], queries, k, layout.chunk_rows, layout.max_score_elements)

    def plain(queries: torch.Tensor):
        q = queries.to("cuda", torch.float16)
        scores, idx = torch.topk(q @ matrix.T, k, dim=1)
        return scores.cpu(), idx.cpu()

    for n in (1, 1024):
        queries = torch.nn.functional.normalize(torch.randn(n, dim), dim=1)
        ours(queries), plain(queries)
        repeat = 20 if n == 1 else 3
        out[f"ours_{n}_s"] = timed(lambda: ours(queries), repeat)
        out[f"plain_{n}_s"] = timed(lambda: plain(queries), repeat)
        got = {r for _, r, _ in ours(queries[:1])[0]}
        want = set(plain(queries[:1])[1][0].tolist())
        out[f"overlap_{n}"] = len(got & want) / k  # fp16 ties aside, the same ids
    queries = torch.nn.functional.normalize(torch.randn(1024, dim), dim=1).to("cuda", torch.float16)
    out["semantic_search_1024_s"] = timed(lambda: util.semantic_search(queries, matrix, top_k=k), 1)
    out["ours_1_corpus_gbps"] = corpus_bytes / out["ours_1_s"] / 1e9
    out["plain_1_corpus_gbps"] = corpus_bytes / out["plain_1_s"] / 1e9
    del matrix
    torch.cuda.empty_cache()
    for key, value in out.items():
        log(f"  search {key}: {value:.4g}" if isinstance(value, float) else f"  search {key}: {value}")
    return out


def start_server(args: argparse.Namespace, models: dict[str, Path], reranker: Path,
                 device: str = "cuda", frontends: str = "0", engines: str = "one",
                 extra: tuple[str, ...] = ()) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "semserve", "serve", "--host", "127.0.0.1", "--port", "0", "--device", device,
           "--frontends", frontends, "--engines", engines,
           "--dtype", "float16", "--metrics-port", "0", "--max-batch-tokens", str(args.max_batch_tokens),
           "--max-batch-size", str(args.max_batch_size), "--max-queue-delay-ms", str(args.max_queue_delay_ms),
           "--tokenizer-threads", str(args.tokenizer_threads), "--max-queue-size", "65536",
           "--max-queue-tokens", "20000000", "--reranker", f"ce={reranker}"]
    if args.no_cuda_graphs:
        cmd.append("--no-cuda-graphs")
    if args.no_unpadded:
        cmd.append("--no-unpadded")
    for name, path in models.items():
        cmd += ["--encoder", f"{name}={path}"]
    return launch(cmd + list(extra))


def launch(cmd: list[str]) -> tuple[subprocess.Popen, str]:
    """Start a server command line (``--port 0``) and return it with its address once it
    listens; its output keeps being read so a full pipe never stalls it."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "server"), str(ROOT / "client"),
                                                         os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        log("  server:", line.rstrip())
        match = re.search(r"listening on (\S+):(\d+)", line)
        if match:
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
            return proc, f"{match.group(1)}:{match.group(2)}"
    proc.kill()
    raise RuntimeError("server did not start")


def served_parity(address: str, minilm: Path, texts: list[str]) -> dict:
    """Cosine of the served (fp16) embeddings with sentence-transformers in fp32 on the same folder."""
    import numpy as np
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(minilm), device="cuda").float().encode(texts, normalize_embeddings=True)
    with SemserveClient(address) as c:
        got = np.concatenate([c.embed(texts[i : i + 32], model="minilm").vectors for i in range(0, len(texts), 32)])
    cos = (got * reference).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(reference, axis=1)
    return {"min_cosine": float(cos.min()), "mean_cosine": float(cos.mean())}


def served_rerank_parity(address: str, ce: Path, texts: list[str]) -> dict:
    """Served cross-encoder scores (fp16, CUDA graphs) against CrossEncoder.predict in fp32."""
    import numpy as np
    from sentence_transformers import CrossEncoder

    query, docs = texts[0], texts[1:65]
    reference = CrossEncoder(str(ce), device="cuda")
    reference.model.float()
    want = np.asarray(reference.predict([(query, d) for d in docs]))
    with SemserveClient(address) as c:
        got = np.zeros(len(docs))
        for r in c.rerank(query, docs, model="ce").results:
            got[r.index] = r.score
    return {"max_abs_diff": float(np.abs(got - want).max()),
            "same_top1": bool(int(np.argmax(got)) == int(np.argmax(want)))}


def model_info(address: str, name: str):
    with SemserveClient(address) as c:
        return next(m for m in c.info().models if m.name == name)


def model_stats(address: str, name: str):
    """The server's own counters for a model (batches, items, tokens, padded tokens)."""
    return model_info(address, name).stats


def model_tokens(address: str, name: str) -> tuple[int, int]:
    stats = model_stats(address, name)
    return stats.items, stats.tokens


class UsageMeter(threading.Thread):
    """CPU cores used by each kind of process (clients, front ends, engine, ...) and the GPU's
    utilisation, sampled from /proc and NVML over the measured part of a load: where the
    machine's cores go tells whether the server or the load generator is the limit; each GPU's
    utilisation tells whether the devices were kept busy alike."""

    KINDS = (("engine_main", "engine"), ("frontend_main", "frontends"), ("semserve serve", "server"),
             ("multiprocessing", "clients"), ("py-spy", "profiler"), ("h2load", "h2load"))

    def __init__(self, delay_s: float, duration_s: float):
        super().__init__(daemon=True)
        self.delay_s, self.duration_s = delay_s, duration_s
        self.first: dict[int, tuple[str, int]] = {}
        self.last: dict[int, int] = {}
        self.machine: list[tuple[float, int, int]] = []
        self.gpu: list[float] = []

    def kind(self, pid: int) -> str:
        if pid == os.getpid():
            return "bench"
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            return "other"
        return next((kind for key, kind in self.KINDS if key in cmdline), "other")

    def sample(self) -> None:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        ticks = [int(x) for x in fields]
        self.machine.append((time.monotonic(), sum(ticks), ticks[3] + ticks[4]))
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                continue
            parts = stat[stat.rindex(")") + 2:].split()
            used = int(parts[11]) + int(parts[12])  # utime + stime, in clock ticks
            if pid not in self.first:
                self.first[pid] = (self.kind(pid), used)
            self.last[pid] = used
        try:
            self.gpu.append([float(torch.cuda.utilization(i)) for i in range(torch.cuda.device_count())])
        except Exception:
            pass

    def run(self) -> None:
        time.sleep(self.delay_s)
        stop = time.monotonic() + self.duration_s
        while time.monotonic() < stop:
            self.sample()
            time.sleep(0.5)
        self.sample()

    def summary(self) -> dict:
        if len(self.machine) < 2:
            return {}
        hz = os.sysconf("SC_CLK_TCK")
        (t0, total0, idle0), (t1, total1, idle1) = self.machine[0], self.machine[-1]
        seconds = t1 - t0
        cores: dict[str, float] = {}
        for pid, (kind, used) in self.first.items():
            cores[kind] = cores.get(kind, 0.0) + (self.last[pid] - used) / hz / seconds
        busy = 1 - (idle1 - idle0) / max(1, total1 - total0)
        return {"cores": {k: round(v, 2) for k, v in sorted(cores.items())},
                "machine_busy_cores": round(busy * (os.cpu_count() or 1), 2),
                "gpu_util_percent": round(sum(map(sum, self.gpu)) / sum(map(len, self.gpu)), 1) if any(self.gpu) else None,
                "gpu_util_percent_by_device": [round(sum(col) / len(col), 1) for col in zip(*self.gpu)]}


def start_profiler(args, profile_as: str, server_pid: int, duration_s: float) -> subprocess.Popen | None:
    """py-spy sampling the server's Python stacks (every process and thread) during the measured
    part of a load, when ``--profile-dir`` is given."""
    if not (args.profile_dir and profile_as):
        return None
    args.profile_dir.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        ["sh", "-c", f"sleep {args.warmup + 1}; exec {args.py_spy} record --pid {server_pid} --duration "
         f"{max(2, int(duration_s) - 2)} --format raw --threads --subprocesses "
         + ("--rate 100 --native " if args.py_spy_native else "--rate 250 --nonblocking ") +
         f"--output {args.profile_dir / (profile_as + '.txt')}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def load(address: str, args, profile_as: str = "", server_pid: int = 0, **kw) -> dict:
    processes = kw.pop("processes", None) or args.client_processes
    spec = LoadSpec(target=address, duration_s=kw.pop("duration", args.duration), warmup_s=args.warmup, **kw)
    if spec.concurrency < processes:
        processes = 1
    profiler = start_profiler(args, profile_as, server_pid, spec.duration_s)
    before = model_stats(address, spec.model)
    # The clients start (spawn, imports) before their warm-up: the meter starts well after it.
    meter = UsageMeter(spec.warmup_s + 2.5, max(1.0, spec.duration_s - 3.5))
    meter.start()
    result = run_load(spec, processes=processes)
    meter.join()
    after = model_stats(address, spec.model)
    batches = max(1, after.batches - before.batches)
    result.update(
        server_batches=after.batches - before.batches,
        mean_batch_items=round((after.items - before.items) / batches, 1),
        padding_overhead=round((after.padded_tokens - before.padded_tokens) / max(1, after.tokens - before.tokens), 3),
        usage=meter.summary(),
    )
    if profiler is not None:
        profiler.wait(60)
    log("  ", json.dumps(result))
    return result


def h2load_load(address: str, args, mode: str, texts: list[str], profile_as: str = "", server_pid: int = 0,
                per_call: int = 0, lone: bool = False, connections: int = 0, streams: int = 0) -> dict:
    """A load from h2load (tests/perf/h2load_load.py): unary calls of ``per_call`` texts (one by
    default), 256 in flight (one when ``lone``), or streams of 256 single-text messages, 64 at
    once. With the cores each kind of process used and the server's own count of texts computed:
    h2load does not read gRPC statuses, so the answers are checked by their count and size."""
    from h2load_load import response_bytes, run_h2load

    profiler = start_profiler(args, profile_as, server_pid, args.duration)
    before = model_stats(address, "minilm")
    meter = UsageMeter(args.warmup + 1.0, max(1.0, args.duration - 2.0))
    meter.start()
    # Many connections, as from many clients: SO_REUSEPORT spreads connections, not calls, over
    # the front ends, and 32 connections over 14 front ends left one without any.
    default = (1, 1) if lone else (64, 4) if mode == "unary" else (64, 1)
    connections, streams = connections or default[0], streams or default[1]
    per_call = per_call or (1 if mode == "unary" else 256)
    result = run_h2load(args.h2load, address, mode, "minilm", texts, args.duration, args.warmup, connections,
                        streams, threads=1 if lone else 4, per_call=per_call)
    meter.join()
    after = model_stats(address, "minilm")
    smallest = response_bytes(model_info(address, "minilm").dimension)
    result.update(
        engine_texts=after.items - before.items, smallest_answer_bytes=smallest,
        # Every counted answer a whole EmbedResponse, and the engine computed at least as many texts
        # (the warm-up's too); an error answer carries no vector.
        answers_whole=result["bytes_per_text"] >= smallest and result["failed"] == 0 and result["errored"] == 0
        and after.items - before.items >= result["succeeded"] * result["texts_per_call"],
        usage=meter.summary(),
    )
    if profiler is not None:
        profiler.wait(60)
    log("  ", json.dumps(result))
    return result


def serve_section(args, frontends: str, bert: Path, ce: Path, texts: list[str], nonembedding: int,
                  peers: dict) -> dict:
    """Every served load against one server started with ``--frontends frontends``."""
    skip = set(filter(None, args.skip.split(",")))
    proc, address = start_server(args, {"minilm": args.minilm, "bert-base": bert}, ce, frontends=frontends)
    ours: dict = {}
    try:
        ours["parity"] = served_parity(address, args.minilm, texts[:256])
        log("parity of served MiniLM embeddings with sentence-transformers fp32:", ours["parity"])
        ours["rerank_parity"] = served_rerank_parity(address, ce, texts)
        log("parity of served cross-encoder scores with CrossEncoder.predict fp32:", ours["rerank_parity"])
        log("semserve, MiniLM, 32-text Embed:")
        ours["embed_32"] = load(address, args, f"embed_32-f{frontends}", proc.pid, mode="embed", model="minilm", concurrency=64, request_size=32)
        log("semserve, MiniLM, single-text EmbedStream:")
        ours["stream_1"] = load(address, args, f"stream_1-f{frontends}", proc.pid, mode="embed-stream", model="minilm", concurrency=32, request_size=1,
                                window=64)
        log("semserve, MiniLM, single-text unary Embed:")
        ours["unary_1"] = load(address, args, f"unary_1-f{frontends}", proc.pid, mode="embed", model="minilm", concurrency=256, request_size=1)
        if args.h2load:
            log("semserve, MiniLM, single-text unary Embed from h2load:")
            ours["unary_1_h2load"] = h2load_load(address, args, "unary", texts, f"unary_1_h2load-f{frontends}", proc.pid)
            log("semserve, MiniLM, single-text unary Embed from h2load, 1024 in flight:")
            ours["unary_1_h2load_1024"] = h2load_load(address, args, "unary", texts, f"unary_1_h2load_1024-f{frontends}",
                                                      proc.pid, connections=256, streams=4)
            log("semserve, MiniLM, single-text EmbedStream from h2load (256 messages a stream):")
            ours["stream_1_h2load"] = h2load_load(address, args, "stream", texts, f"stream_1_h2load-f{frontends}",
                                                  proc.pid)
            log("semserve, MiniLM, lone single-text Embed from h2load:")
            ours["lone_1_h2load"] = h2load_load(address, args, "unary", texts, lone=True)
        log("semserve, MiniLM, lone single-text Embed:")
        ours["lone_1"] = load(address, args, mode="embed", model="minilm", concurrency=1, request_size=1,
                              processes=1, duration=8)
        if "bert" not in skip:
            log("semserve, BERT-base, 32-text Embed:")
            items0, tokens0 = model_tokens(address, "bert-base")
            ours["bert_32"] = load(address, args, f"bert_32-f{frontends}", proc.pid, mode="embed", model="bert-base", concurrency=64, request_size=32)
            items1, tokens1 = model_tokens(address, "bert-base")
            tokens_per_text = (tokens1 - tokens0) / max(1, items1 - items0)
            tflops = 2 * nonembedding * tokens_per_text * ours["bert_32"]["items_per_s"] / 1e12
            ours["bert_32"].update(tokens_per_text=tokens_per_text, tflops=tflops,
                                   fraction_of_matmul=tflops / peers["matmul_fp16_tflops"])
        if "rerank" not in skip:
            log("semserve, cross-encoder, 32-document Rerank:")
            ours["rerank_32"] = load(address, args, f"rerank_32-f{frontends}", proc.pid, mode="rerank", model="ce", concurrency=64, request_size=32)
    finally:
        proc.terminate()
        proc.wait(60)
    return ours


# Targets for every GPU against one, per model (docs/benchmarks.md, "Several GPUs").
SCALING_TARGETS = {"minilm": 1.7, "bert-base": 1.8}


def scaling_bench(args: argparse.Namespace, minilm: Path, bert: Path, ce: Path, save) -> dict:
    """The same loads on one GPU and on every GPU, the latter both ways (``--engines one``: a
    worker per GPU in one engine process; ``--engines per-device``: an engine process per GPU),
    and the searcher over one shard against one shard per GPU.

    One GPU is served twice: with ``--frontends auto`` (8 front ends a GPU) and with as many
    front ends as the spread layouts get, so a ratio cannot come from front-end cores alone.
    ``save(out)`` is called after every figure, so a run cut short keeps what it measured.
    With ``--profile-dir``, the engine-per-device layout's loads of the models with a target
    are run again under py-spy (every process of the server), so a miss has its profile from
    the same run."""
    from semserve.config import SearchConfig
    from semserve.process.supervisor import default_frontends
    from semserve.search.topk import ranked_topk

    # --scaling-devices cuda:0,cuda:0 rehearses the run on one GPU (two replicas, two shards).
    spread = args.scaling_devices or ",".join(f"cuda:{i}" for i in range(torch.cuda.device_count()))
    shard_devices = spread.split(",")
    gpus = len(shard_devices)
    spread_frontends = default_frontends(spread)
    out: dict = {"gpus": gpus, "devices": spread, "frontends": {"cuda:0": default_frontends("cuda:0"),
                                                                 spread: spread_frontends}}

    layout, rows, dim, k = SearchConfig(), args.search_rows, 768, 10
    whole = torch.randn(rows, dim, device="cuda:0", dtype=torch.float16)
    halves = [torch.randn(rows // gpus, dim, device=device, dtype=torch.float16) for device in shard_devices]
    # ranked_topk is what a search runs (arrays); exact_topk, used here until 2026-11-24, adds
    # the conversion to lists of tuples, host time that no second GPU divides.
    for n in (1, 1024):
        q = torch.nn.functional.normalize(torch.randn(n, dim), dim=1)
        one = lambda: ranked_topk([(whole, rows, None)], q, k, layout.chunk_rows, layout.max_score_elements)  # noqa: E731
        many = lambda: ranked_topk([(h, h.shape[0], None) for h in halves], q, k, layout.chunk_rows,  # noqa: E731
                                   layout.max_score_elements)
        one(), many()
        # Best of two rounds, alternated, so a clock or neighbour drifting during the run moves
        # both sides alike.
        rounds = [(timed(one, 10), timed(many, 10)) for _ in range(2)]
        out[f"search_{n}_one_gpu_s"] = min(r[0] for r in rounds)
        out[f"search_{n}_all_gpus_s"] = min(r[1] for r in rounds)
        log(f"scaling: search {n} queries: one GPU {out[f'search_{n}_one_gpu_s']:.5f}s, "
            f"{gpus} GPUs {out[f'search_{n}_all_gpus_s']:.5f}s")
        save(out)
    del whole, halves
    gc.collect()
    torch.cuda.empty_cache()

    layouts = [(spread, "per-device", "auto"), ("cuda:0", "one", "auto"), (spread, "one", "auto")]
    if spread_frontends != out["frontends"]["cuda:0"]:
        layouts.insert(2, ("cuda:0", "one", str(spread_frontends)))
    if "encode" in set(filter(None, args.skip.split(","))):
        layouts = []
    for devices, engines, frontends in layouts:
        proc, address = start_server(args, {"minilm": minilm, "bert-base": bert}, ce, device=devices,
                                     frontends=frontends, engines=engines)
        try:
            # The offered load grows with the devices, so each one's batches are as full as the
            # single GPU's (128 requests shared by two GPUs halved them: docs/benchmarks.md).
            in_flight = 128 * len(devices.split(","))
            for model, mode in (("minilm", "embed"), ("bert-base", "embed"), ("ce", "rerank")):
                log(f"scaling: {model} on {devices} (--engines {engines}, --frontends {frontends}), "
                    f"{in_flight} requests in flight")
                key = (f"{model}@{devices}" + ("" if engines == "one" else f"/{engines}")
                       + ("" if frontends == "auto" else f"/f{frontends}"))
                out[key] = load(address, args, mode=mode, model=model, concurrency=in_flight, request_size=32)
                save(out)
                if engines == "per-device" and args.profile_dir and model in SCALING_TARGETS:
                    out[key + "/profiled"] = load(address, args, f"scaling-{model}-per-device", proc.pid,
                                                  mode=mode, model=model, concurrency=in_flight, request_size=32)
                    save(out)
        finally:
            proc.terminate()
            proc.wait(60)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minilm", type=Path, required=True, help="all-MiniLM-L6-v2 folder (fp16 is fine)")
    parser.add_argument("--out", type=Path, default=ROOT / ".bench" / "results.json")
    parser.add_argument("--duration", type=float, default=12.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--client-processes", type=int, default=8)
    parser.add_argument("--max-batch-tokens", type=int, default=32768)
    parser.add_argument("--max-batch-size", type=int, default=512)
    parser.add_argument("--max-queue-delay-ms", type=float, default=2.0)
    parser.add_argument("--tokenizer-threads", type=int, default=4)
    parser.add_argument("--peer-texts", type=int, default=20000)
    parser.add_argument("--profile-dir", type=Path, default=None, help="write py-spy profiles of the server here")
    parser.add_argument("--py-spy", default="py-spy")
    parser.add_argument("--h2load", default="", help="h2load binary (Debian's nghttp2-client): also drive the "
                        "single-text loads from it, a C load generator (tests/perf/h2load_load.py)")
    parser.add_argument("--py-spy-native", action="store_true",
                        help="profile native frames too (py-spy pauses the processes to sample them)")
    parser.add_argument("--search-rows", type=int, default=4_000_000)
    parser.add_argument("--no-cuda-graphs", action="store_true", help="serve with --no-cuda-graphs")
    parser.add_argument("--no-unpadded", action="store_true", help="serve with --no-unpadded")
    parser.add_argument("--scaling", action="store_true", help="only compare one GPU with every GPU")
    parser.add_argument("--scaling-devices", default="",
                        help="the devices --scaling compares with cuda:0 (default: every GPU), e.g. cuda:0,cuda:0")
    parser.add_argument("--skip", default="", help="comma-separated sections to skip: peers,bert,rerank,search "
                        "(with --scaling: encode, the served loads)")
    parser.add_argument("--frontends", default="0,auto",
                        help="comma-separated --frontends values, each served in turn in this run; the last one "
                        "fills the table, the others are its peers")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    work = Path(tempfile.mkdtemp(prefix="semserve-bench-"))
    results: dict = {
        "date": time.strftime("%Y-%m-%d"),
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "command": " ".join(sys.argv),
        "settings": {k: str(v) for k, v in vars(args).items()},
    }
    texts = synthetic_texts(args.peer_texts, seed=1)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(args.minilm))
    lengths = [len(ids) for ids in tok(texts[:2000])["input_ids"]]
    results["texts"] = {"count": len(texts), "mean_tokens": sum(lengths) / len(lengths),
                        "min_tokens": min(lengths), "max_tokens": max(lengths)}
    log("texts:", results["texts"])

    bert_hf = make_random_folder(work / "bert-base-hf", args.minilm, "encoder")  # BertConfig() is BERT-base
    bert = st_folder(bert_hf, work / "bert-base")
    ce = make_random_folder(work / "ce-minilm", args.minilm, "cross_encoder", hidden_size=384, num_hidden_layers=6,
                            num_attention_heads=12, intermediate_size=1536, num_labels=1)
    nonembedding = sum(p.numel() for n, p in __import__("transformers").BertModel.from_pretrained(bert_hf)
                       .named_parameters() if "embeddings" not in n and "pooler" not in n)

    if args.scaling:
        args.out.parent.mkdir(parents=True, exist_ok=True)

        def save(scaling: dict) -> None:
            args.out.write_text(json.dumps({**results, "scaling": scaling}, indent=2))

        results["scaling"] = scaling_bench(args, args.minilm, bert, ce, save)
        save(results["scaling"])
        log("wrote", args.out)
        return
    peers: dict = {}
    peers["matmul_fp16_tflops"] = matmul_tflops()
    log("matmul fp16 TFLOP/s:", round(peers["matmul_fp16_tflops"], 1))
    if "peers" not in skip:
        peers["st_encode_b256"] = peer_encode(args.minilm, texts, 256)
        log("ST encode batch 256 texts/s:", round(peers["st_encode_b256"]))
        peers["st_encode_single"] = peer_encode_single(args.minilm, texts[:400])
        log("ST encode one text per call texts/s:", round(peers["st_encode_single"]))
        peers["st_bert_base_b256"] = peer_encode(bert, texts[:10000], 256)
        log("ST BERT-base encode batch 256 texts/s:", round(peers["st_bert_base_b256"]))
        peers["ce_predict_b32"] = peer_rerank(ce, texts[:10000], 32)
        peers["ce_predict_b256"] = peer_rerank(ce, texts[:10000], 256)
        log("CrossEncoder.predict pairs/s (b32, b256):", round(peers["ce_predict_b32"]), round(peers["ce_predict_b256"]))
    gc.collect()
    torch.cuda.empty_cache()
    results["peers"] = peers

    if "search" not in skip:
        results["search"] = search_bench(args.search_rows, 768, 10)
    served: dict = {}
    for frontends in args.frontends.split(","):
        log(f"semserve with --frontends {frontends}:")
        try:
            served[frontends] = serve_section(args, frontends, bert, ce, texts, nonembedding, peers)
        except Exception:  # one configuration failing must not lose the others' figures
            import traceback

            log(f"semserve with --frontends {frontends} FAILED:\n{traceback.format_exc()}")
    if not served:
        raise SystemExit("no served configuration ran")
    ours = served.get(args.frontends.split(",")[-1]) or next(iter(served.values()))
    results["semserve_by_frontends"] = served
    results["semserve"] = ours

    rows = []

    def row(name, value, unit, peer=None, peer_name="", target=""):
        ratio = value / peer if peer else None
        rows.append({"work": name, "semserve": value, "unit": unit, "peer": peer, "peer_name": peer_name,
                     "ratio": ratio, "target": target})

    if "peers" not in skip:
        row("encode MiniLM, 32-text requests", ours["embed_32"]["items_per_s"], "texts/s", peers["st_encode_b256"],
            "ST encode batch 256", ">= 8x and >= 60,000/s")
        row("encode MiniLM, single-text EmbedStream", ours["stream_1"]["items_per_s"], "texts/s", None, "", ">= 30,000/s")
        row("encode MiniLM, single-text unary", ours["unary_1"]["items_per_s"], "texts/s", peers["st_encode_single"],
            "ST encode one text per call", ">= 15,000/s")
        if "bert_32" in ours:
            row("encode BERT-base, 32-text requests", ours["bert_32"]["tflops"], "TFLOP/s",
                peers["matmul_fp16_tflops"], "fp16 matmul rate", ">= 0.35")
            row("encode BERT-base vs ST", ours["bert_32"]["items_per_s"], "texts/s", peers["st_bert_base_b256"],
                "ST encode batch 256", "")
        if "rerank_32" in ours:
            best = max(peers["ce_predict_b32"], peers["ce_predict_b256"])
            row("rerank MiniLM-sized, 32-doc requests", ours["rerank_32"]["items_per_s"], "pairs/s", best,
                "CrossEncoder.predict (best of b32, b256)", ">= 6x")
    if "search" in results:
        sr = results["search"]
        row("search 4M x 768 fp16, 1 query/call", sr["ours_1_corpus_gbps"], "GB/s of corpus",
            sr["copy_read_write_gbps"], "D2D copy, bytes read+written", ">= 0.90")
        row("search 4M x 768 fp16, 1 query/call vs torch", 1 / sr["ours_1_s"], "queries/s", 1 / sr["plain_1_s"],
            "torch matmul + topk", "")
        row("search 4M x 768 fp16, 1024 queries/call", 1024 / sr["ours_1024_s"], "queries/s",
            1024 / sr["plain_1024_s"], "torch matmul + topk", ">= 2x")
        row("search 1024 queries/call vs semantic_search", 1024 / sr["ours_1024_s"], "queries/s",
            1024 / sr["semantic_search_1024_s"], "util.semantic_search", "")
    for key, name, target in (("stream_1_h2load", "single-text EmbedStream", ">= 30,000/s"),
                              ("unary_1_h2load", "single-text unary", ">= 15,000/s"),
                              ("unary_1_h2load_1024", "single-text unary, 1024 in flight", ">= 15,000/s")):
        if key in ours:
            row(f"encode MiniLM, {name}, from h2load (answers whole: {ours[key]['answers_whole']})",
                ours[key]["items_per_s"], "texts/s", None, "", target)
    row("lone single-text Embed p50", ours["lone_1"]["p50_ms"], "ms", None, "", "<= 3 ms")
    row("lone single-text Embed p99", ours["lone_1"]["p99_ms"], "ms", None, "", "<= 6 ms")
    if "lone_1_h2load" in ours:
        for q, target in (("p50", "<= 3 ms"), ("p99", "<= 6 ms")):
            row(f"lone single-text Embed {q}, from h2load", ours["lone_1_h2load"][f"{q}_ms"], "ms", None, "", target)
    single = served.get("0")
    if single is not None and single is not ours:
        for key, name in (("embed_32", "MiniLM 32-text"), ("stream_1", "MiniLM single-text stream"),
                          ("unary_1", "MiniLM single-text unary"), ("bert_32", "BERT-base 32-text"),
                          ("rerank_32", "rerank 32-doc")):
            if key in ours and key in single:
                row(f"{name}: front ends vs one process", ours[key]["items_per_s"], "items/s",
                    single[key]["items_per_s"], "--frontends 0, same run", "")
    results["table"] = rows
    log("\n| work | semserve | peer | ratio | target |\n|---|---|---|---|---|")
    for r in rows:
        peer = f"{r['peer']:.1f} ({r['peer_name']})" if r["peer"] else "—"
        ratio = f"{r['ratio']:.2f}" if r["ratio"] else "—"
        log(f"| {r['work']} | {r['semserve']:.1f} {r['unit']} | {peer} | {ratio} | {r['target']} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    log("wrote", args.out)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
