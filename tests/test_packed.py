"""Unpadded (packed) execution: the same numbers as the padded model, for every pooling mode and
for cross-encoders, and the flat layouts the graphs rely on.

On a CPU the packed forward uses a block-diagonal attention mask instead of the flash kernel,
so these tests check everything but that kernel: embeddings, fused projections, per-text
positions, pooling over segments, the padding slots of a graph's layout. The GPU check is
``tests/perf/gpu_packed_check.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model_factory import make_tiny_cross_encoder, make_tiny_hf_encoder, make_tiny_st_encoder
from semserve.core.types import TokenBatch
from semserve.engine.batching.requests import QueuedRequest
from semserve.engine.runtime.packing import Layout, PackedBatch, PackedRunner, make_runner, pack_arrays, token_buckets
from semserve.engine.runtime.runners import ModelRunner
from semserve.models.cross_encoder import load_cross_encoder
from semserve.models.encoder import load_encoder
from semserve.models.packed import packing_refusal
from semserve.models.pooling import POOLING_MODES, Pooling


def _request(texts: list[list[int]], pairs: bool = False) -> QueuedRequest:
    ids = np.concatenate([np.asarray(t, dtype=np.int32) for t in texts])
    offsets = np.concatenate([[0], np.cumsum([len(t) for t in texts])]).astype(np.int64)
    type_ids = None
    if pairs:  # second half of each text is the "document"
        type_ids = np.concatenate([(np.arange(len(t)) >= len(t) // 2).astype(np.int8) for t in texts])
    loop_future = type("F", (), {"done": lambda self: False, "cancelled": lambda self: False})()
    return QueuedRequest(loop_future, TokenBatch(ids, offsets, type_ids), None, 0.0)


def _random_texts(rng: np.random.Generator, count: int, vocab: int, max_len: int) -> list[list[int]]:
    return [[101, *rng.integers(1000, vocab, size=int(rng.integers(0, max_len - 2))).tolist(), 102]
            for _ in range(count)]


def _both(model, parts, pad_id=0):
    padded = ModelRunner(model, pad_id).run(ModelRunner(model, pad_id).prepare(parts))
    packed_runner = PackedRunner(model, pad_id)
    packed = packed_runner.run(packed_runner.prepare(parts))
    return padded, packed


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    return load_encoder(make_tiny_st_encoder(tmp_path_factory.mktemp("st")))


def test_packed_encoder_matches_padded_across_requests(encoder):
    rng = np.random.default_rng(0)
    vocab = encoder.transformer.config.vocab_size
    first = _request(_random_texts(rng, 7, vocab, 30))
    second = _request(_random_texts(rng, 5, vocab, 12))
    parts = [(first, np.array([0, 2, 3, 6])), (second, np.arange(5))]
    padded, packed = _both(encoder, parts)
    assert packed.shape == padded.shape == (9, encoder.dimension)
    np.testing.assert_allclose(packed, padded, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mode", POOLING_MODES)
def test_every_pooling_mode_matches_padded(encoder, mode):
    rng = np.random.default_rng(1)
    request = _request(_random_texts(rng, 6, encoder.transformer.config.vocab_size, 25))
    original = encoder.pool
    encoder.pool = Pooling((mode,))
    try:
        padded, packed = _both(encoder, [(request, np.arange(6))])
    finally:
        encoder.pool = original
    np.testing.assert_allclose(packed, padded, rtol=1e-4, atol=1e-5)


def test_packed_cross_encoder_matches_padded(tmp_path):
    model = load_cross_encoder(make_tiny_cross_encoder(tmp_path / "ce", num_labels=3), score_label=1)
    assert packing_refusal(model.model.bert) is None
    rng = np.random.default_rng(2)
    request = _request(_random_texts(rng, 8, model.model.config.vocab_size, 40), pairs=True)
    padded, packed = _both(model, [(request, np.arange(8))])
    assert packed.shape == (8, 3)
    np.testing.assert_allclose(packed, padded, rtol=1e-4, atol=1e-5)


def test_a_graph_layout_with_padding_slots_changes_no_real_row(encoder):
    """The layout a CUDA graph replays: spare tokens as padding texts, empty slots after them."""
    rng = np.random.default_rng(3)
    texts = _random_texts(rng, 5, encoder.transformer.config.vocab_size, 20)
    lengths = np.array([len(t) for t in texts], dtype=np.int64)
    flat = np.concatenate(texts).astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths[:-1])])
    exact = Layout(int(lengths.sum()), 5, 0, int(lengths.max()))
    roomy = Layout(int(lengths.sum()) + 37, 9, 3, 16)
    runner = PackedRunner(encoder, 0)
    outputs = []
    for layout in (exact, roomy):
        staged = pack_arrays(lengths, flat, None, starts, layout, pad_id=0)
        cu = staged[4 * layout.tokens:]
        assert len(cu) == layout.slots + 1 and cu[-1] == layout.tokens and np.all(np.diff(cu) >= 0)
        assert np.diff(cu).max() <= max(layout.max_seqlen, lengths.max())
        batch = PackedBatch(torch.from_numpy(staged), layout, 5, graphed=False)
        outputs.append(runner.run(batch))
    np.testing.assert_allclose(outputs[1], outputs[0], rtol=1e-5, atol=1e-6)


def test_token_buckets_double_then_step():
    assert token_buckets(2000) == [64, 128, 256, 512, 1024, 1536, 2048]
    assert token_buckets(64) == [64]


def test_graph_layouts_fit_every_batch_under_the_caps(encoder):
    runner = PackedRunner(encoder, 0)
    runner._graphs_on = True  # layouts only; nothing is captured on a CPU
    runner.set_batch_limits(4096, 64)
    for tokens in (1, 63, 64, 65, 511, 513, 1500, 4096):
        rows = min(64, tokens)
        layout = runner._layout_for(tokens, max(1, rows // 2))
        assert layout is not None and layout.tokens >= tokens
        spare = layout.tokens - tokens
        assert -(-spare // layout.max_seqlen) <= layout.pad_slots
    assert runner._layout_for(5000, 10) is None  # beyond the token cap: eager
    assert runner._layout_for(100, 65) is None  # beyond the batch size cap: eager


def test_packing_is_chosen_only_where_it_runs(tmp_path):
    plain = load_encoder(make_tiny_hf_encoder(tmp_path / "hf"))
    assert "CUDA" in plain.packing_refusal()  # a CPU model stays padded
    assert isinstance(make_runner(plain, 0, cuda_graphs=False, unpadded=True), ModelRunner)
    assert packing_refusal(plain.transformer) is None


def test_unpadded_batches_take_the_queue_head_in_arrival_order():
    from semserve.engine.batching.planner import batch_of_first

    lengths = np.array([10, 500, 3, 20, 7])
    assert batch_of_first(lengths, 520, 64, padded=False).tolist() == [True, True, True, False, False]
    assert batch_of_first(lengths, 520, 2, padded=False).tolist() == [True, True, False, False, False]
    assert batch_of_first(np.array([900, 5]), 520, 64, padded=False).tolist() == [True, False]
    assert batch_of_first(np.array([5, 6]), 520, 64, padded=False).tolist() == [True, True]
    # Padded, the same queue is sorted and cut so the long input does not pad the short ones.
    assert batch_of_first(lengths, 520, 64).tolist() != [True, True, True, False, False]


def test_a_packed_worker_behind_the_batcher_serves_every_request_and_counts_real_tokens(encoder):
    """The batcher and a worker around the packed runner (CPU, reference attention): concurrent
    requests come back with the padded model's vectors, in batches cut on real tokens."""
    import asyncio

    from semserve.config import BatchingConfig
    from semserve.engine.batching.batcher import DynamicBatcher
    from semserve.engine.runtime.worker import DeviceWorker
    from semserve.engine.stats import ModelStats

    rng = np.random.default_rng(4)
    requests = [_random_texts(rng, 3, encoder.transformer.config.vocab_size, 30) for _ in range(12)]
    expected = [ModelRunner(encoder, 0).run(ModelRunner(encoder, 0).prepare([(_request(t), np.arange(3))]))
                for t in requests]

    async def main():
        stats = ModelStats(model="packed")
        worker = DeviceWorker(PackedRunner(encoder, 0), stats)
        assert not worker.padded
        batcher = DynamicBatcher("packed", [worker], BatchingConfig(max_queue_delay_us=20_000), stats)
        batcher.start()
        futures = [batcher.submit(_request(t).tokens, None) for t in requests]
        done = await asyncio.gather(*futures)
        await batcher.stop()
        return [r.outputs for r in done], stats

    outputs, stats = asyncio.run(main())
    for got, want in zip(outputs, expected):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert stats.padded_tokens == stats.tokens == sum(len(t) for r in requests for t in r)
