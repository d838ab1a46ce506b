"""Unpadded against padded execution on a GPU, in one process: same outputs, and how fast.

For MiniLM (a real checkpoint), a random BERT-base and a random MiniLM-sized cross-encoder, the
benchmark's synthetic texts are cut into batches as the batcher cuts them (``--batch-texts``
texts each), run through the padded runner and the packed runner (both with CUDA graphs), and
compared row by row (cosine for embeddings, absolute difference for logits). Then each runner
runs every batch back to back, ``--repeat`` times, prepare included; the figure is real tokens
per second and, for BERT-base, TFLOP/s counted on real tokens (2 x non-embedding parameters per
token, as bench_gpu.py counts).

    python3 tests/perf/gpu_packed_check.py --minilm .models/minilm
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "server"), str(ROOT / "client"), str(ROOT / "tests" / "perf")]

from bench_gpu import make_random_folder  # noqa: E402
from semserve.core.types import TokenBatch  # noqa: E402
from semserve.engine.batching.requests import QueuedRequest  # noqa: E402
from semserve.engine.runtime.packing import PackedRunner  # noqa: E402
from semserve.engine.runtime.runners import ModelRunner  # noqa: E402
from semserve.models.cross_encoder import load_cross_encoder  # noqa: E402
from semserve.models.encoder import load_encoder  # noqa: E402
from semserve_client.bench import synthetic_texts  # noqa: E402


class _Future:
    def done(self) -> bool:
        return False

    def cancelled(self) -> bool:
        return False


def batches_of(model, texts: list[str], per_batch: int, pairs: bool) -> list[list]:
    tok = model.tokenizer
    if pairs:
        encoded = tok(texts[0::2], texts[1::2], truncation=True, max_length=model.max_tokens)
    else:
        encoded = tok(texts, truncation=True, max_length=model.max_tokens)
    ids = encoded["input_ids"]
    out = []
    for start in range(0, len(ids) - per_batch + 1, per_batch):
        chunk = ids[start:start + per_batch]
        flat = np.concatenate([np.asarray(x, dtype=np.int32) for x in chunk])
        offsets = np.concatenate([[0], np.cumsum([len(x) for x in chunk])]).astype(np.int64)
        types = None
        if pairs:
            types = np.concatenate([np.asarray(x, dtype=np.int8) for x in encoded["token_type_ids"][start:start + per_batch]])
        request = QueuedRequest(_Future(), TokenBatch(flat, offsets, types), None, 0.0)
        out.append([(request, np.arange(len(chunk)))])
    return out


def timed_pass(runner, batches, repeat: int) -> float:
    for parts in batches[:3]:
        runner.run(runner.prepare(parts))
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeat):
        handles = [runner.launch(runner.prepare(parts)) for parts in batches]
        for handle in handles:
            runner.collect(handle)
    return (time.perf_counter() - start) / repeat


def compare(name: str, model, batches, pairs: bool, repeat: int, nonembedding: int | None) -> dict:
    pad_id = model.tokenizer.pad_token_id or 0
    padded, packed = ModelRunner(model, pad_id, cuda_graphs=True), PackedRunner(model, pad_id, cuda_graphs=True)
    per_batch = len(batches[0][0][0].lengths)
    packed.set_batch_limits(32768, max(per_batch, 512))
    padded.set_batch_limits(32768, max(per_batch, 512))
    for runner in (padded, packed):
        runner.capture_graphs(10.0)
    a = np.concatenate([padded.run(padded.prepare(p)) for p in batches[:8]])
    b = np.concatenate([packed.run(packed.prepare(p)) for p in batches[:8]])
    result = {"model": name, "batches": len(batches), "texts_per_batch": per_batch}
    if pairs:
        result["max_abs_diff"] = float(np.abs(a - b).max())
    else:
        cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
        result["min_cosine"] = float(cos.min())
    real = sum(int(p[0][0].lengths.sum()) for p in batches)
    padded_tokens = sum(len(p[0][0].lengths) * int(p[0][0].lengths.max()) for p in batches)
    result["padding_overhead"] = padded_tokens / real
    for label, runner in (("padded", padded), ("packed", packed)):
        seconds = timed_pass(runner, batches, repeat)
        result[f"{label}_tokens_per_s"] = real / seconds
        if nonembedding:
            result[f"{label}_tflops"] = 2 * nonembedding * real / seconds / 1e12
    result["speedup"] = result["packed_tokens_per_s"] / result["padded_tokens_per_s"]
    print(json.dumps(result), flush=True)
    del padded, packed
    torch.cuda.empty_cache()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minilm", type=Path, required=True)
    parser.add_argument("--texts", type=int, default=8192)
    parser.add_argument("--batch-texts", default="32,256")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    texts = synthetic_texts(args.texts)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        bert = make_random_folder(Path(tmp) / "bert", args.minilm, "encoder")
        ce = make_random_folder(Path(tmp) / "ce", args.minilm, "ce", hidden_size=384, num_hidden_layers=6,
                                num_attention_heads=12, intermediate_size=1536, num_labels=1)
        models = [
            ("minilm", load_encoder(args.minilm, device="cuda", dtype=torch.float16), False),
            ("bert-base", load_encoder(bert, device="cuda", dtype=torch.float16), False),
            ("cross-encoder", load_cross_encoder(ce, device="cuda", dtype=torch.float16), True),
        ]
        for name, model, pairs in models:
            nonembedding = None
            if name == "bert-base":
                nonembedding = sum(p.numel() for n, p in model.named_parameters() if "embeddings" not in n)
            print(f"{name}: packing refusal = {model.packing_refusal()}", flush=True)
            for per_batch in (int(x) for x in args.batch_texts.split(",")):
                results.append(compare(name, model, batches_of(model, texts, per_batch, pairs), pairs,
                                       args.repeat, nonembedding))
    if args.out:
        args.out.write_text(json.dumps({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                                        "results": results}, indent=2))


if __name__ == "__main__":
    main()
