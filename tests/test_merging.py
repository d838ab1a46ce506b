"""Model calls a front end reaches in one turn merged into one engine call (frontend/merging.py),
checked against a fake engine call that records what it was sent."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from semserve.core.errors import DeadlineExceeded, ResourceExhausted
from semserve.core.types import EncodeResult, ScoreResult, Timing, TokenBatch
from semserve.frontend.merging import MERGED_MAX_INPUTS, CallMerger, concatenate


def batch(*lengths: int, first: int = 1) -> TokenBatch:
    """Inputs whose token ids count up from ``first``, so every row's ids say where it came from."""
    ids, token = [], first
    for n in lengths:
        ids.append(list(range(token, token + n)))
        token += n
    return TokenBatch.from_lists(ids)


class FakeEngine:
    """Encodes each input as [first id, length]; holds calls until ``release`` when ``gate`` is set."""

    def __init__(self, gated: bool = False, fail: Exception | None = None):
        self.calls: list[tuple[TokenBatch, float | None]] = []
        self.gate = asyncio.Event()
        if not gated:
            self.gate.set()
        self.fail = fail
        self.cancelled = 0

    async def encode(self, tokens: TokenBatch, deadline: float | None) -> EncodeResult:
        self.calls.append((tokens, deadline))
        try:
            await self.gate.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        if self.fail is not None:
            raise self.fail
        rows = np.stack([tokens.ids[tokens.offsets[:-1]], tokens.lengths], axis=1).astype(np.float32)
        return EncodeResult(rows, Timing(queue_s=0.001, inference_s=0.002, compute_tokens=tokens.total_tokens,
                                         padded_tokens=tokens.total_tokens + 7, batches=1))


def expected_rows(tokens: TokenBatch) -> np.ndarray:
    return np.stack([tokens.ids[tokens.offsets[:-1]], tokens.lengths], axis=1).astype(np.float32)


def send(merger: CallMerger, engine: FakeEngine, tokens: TokenBatch, deadline: float | None = None,
         max_items: int = 256, max_tokens: int = 10_000, lane: str = "m"):
    """One embed call of ``lane`` through the merger to the fake engine."""
    return merger.call(lane, "embed", tokens, deadline, engine.encode, max_items, max_tokens)


async def busy_lane(max_wait_s: float = 60, engine: FakeEngine | None = None):
    """A merger allowed one engine call per lane, with that call out (held at the engine's gate)."""
    engine = engine or FakeEngine(gated=True)
    merger = CallMerger(in_flight=1, max_wait_s=max_wait_s)
    first = asyncio.create_task(send(merger, engine, batch(2)))
    await settle()
    return engine, merger, first


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_concatenate_keeps_inputs_in_order_with_type_ids():
    a = TokenBatch.from_lists([[1, 2], [3]], [[0, 1], [0]])
    b = TokenBatch.from_lists([[4, 5, 6]], [[1, 1, 0]])
    joined = concatenate([a, b])
    assert joined.ids.tolist() == [1, 2, 3, 4, 5, 6]
    assert joined.offsets.tolist() == [0, 2, 3, 6]
    assert joined.type_ids.tolist() == [0, 1, 0, 1, 1, 0]


def test_a_lone_call_goes_at_once_and_unchanged():
    async def main():
        engine, merger = FakeEngine(), CallMerger()
        tokens = batch(3, 2)
        out = await send(merger, engine, tokens)
        assert engine.calls[0][0] is tokens
        assert out.vectors.tolist() == expected_rows(tokens).tolist()
        assert merger.merged_engine_calls == 0

    asyncio.run(main())


def test_calls_reached_in_one_turn_travel_as_one_and_each_gets_its_rows():
    async def main():
        engine, merger = FakeEngine(), CallMerger()
        calls = [batch(1, 4, first=100), batch(3, first=200), batch(2, 2, 5, first=300)]
        now = time.monotonic()
        outs = await asyncio.gather(*(send(merger, engine, b, deadline=now + 60 + i)
                                      for i, b in enumerate(calls)))
        assert len(engine.calls) == 1
        merged, deadline = engine.calls[0]
        assert len(merged) == 6 and deadline == now + 62  # the latest deadline
        for tokens, out in zip(calls, outs):
            assert out.vectors.tolist() == expected_rows(tokens).tolist()
            assert out.timing.compute_tokens == tokens.total_tokens
            assert out.timing.batches == 1 and out.timing.inference_s == 0.002
        assert merger.merged_engine_calls == 1 and merger.merged_calls == 3

        # A call without a deadline makes the merged call's none.
        await asyncio.gather(send(merger, engine, batch(1), deadline=now + 60),
                             send(merger, engine, batch(1)))
        assert engine.calls[-1][1] is None

    asyncio.run(main())


def test_a_call_never_waits_for_calls_already_at_the_engine():
    async def main():
        engine, merger = FakeEngine(gated=True), CallMerger()
        first = asyncio.create_task(send(merger, engine, batch(2)))
        await settle()
        second = asyncio.create_task(send(merger, engine, batch(3)))
        await settle()
        assert [len(t) for t, _ in engine.calls] == [1, 1]  # both at the engine, neither waiting here
        engine.gate.set()
        await asyncio.gather(first, second)

    asyncio.run(main())


def test_groups_hold_at_most_one_batch_and_lanes_are_separate():
    async def main():
        engine, merger = FakeEngine(), CallMerger()
        await asyncio.gather(*(send(merger, engine, batch(1, first=10 * i), max_items=3, lane="a")
                               for i in range(7)),
                             send(merger, engine, batch(1), max_items=3, lane="b"))
        assert sorted(len(tokens) for tokens, _ in engine.calls) == [1, 1, 3, 3]
        await asyncio.gather(*(send(merger, engine, batch(4, first=10 * i), max_tokens=9, lane="a")
                               for i in range(5)))
        assert [t.total_tokens for t, _ in engine.calls[4:]] == [8, 8, 4]  # at most 9 tokens a group

    asyncio.run(main())


def test_a_call_larger_than_the_cap_still_goes_alone():
    async def main():
        engine, merger = FakeEngine(), CallMerger()
        small, big = await asyncio.gather(send(merger, engine, batch(1), max_items=2),
                                          send(merger, engine, batch(1, 1, 1, 1), max_items=2))
        assert len(big.vectors) == 4 and [len(t) for t, _ in engine.calls] == [1, 4]

    asyncio.run(main())


def test_a_caller_that_goes_away_is_skipped_and_a_group_nobody_wants_is_cancelled():
    async def main():
        engine, merger = FakeEngine(gated=True), CallMerger()
        gone = asyncio.create_task(send(merger, engine, batch(5, first=50)))
        kept = asyncio.create_task(send(merger, engine, batch(2, first=80)))
        await asyncio.sleep(0)  # both reached the lane; the dispatch comes after this turn
        gone.cancel()
        await settle()
        engine.gate.set()
        out = await kept
        assert out.vectors.tolist() == [[80, 2]]
        assert [len(t) for t, _ in engine.calls] == [1]  # the cancelled call never reached the engine

        # Every caller of a group at the engine goes away: the engine call is cancelled too.
        engine.gate.clear()
        group = [asyncio.create_task(send(merger, engine, batch(1))) for _ in range(2)]
        await settle()
        assert len(engine.calls) == 2
        group[0].cancel()
        await settle()
        assert engine.cancelled == 0  # one caller still wants its row
        group[1].cancel()
        await settle()
        assert engine.cancelled == 1

    asyncio.run(main())


def test_an_engine_error_reaches_every_caller_of_the_group_as_its_own_exception():
    async def main():
        engine = FakeEngine(fail=ResourceExhausted("queue is full; retry with backoff"))
        merger = CallMerger()
        errors = await asyncio.gather(*(send(merger, engine, batch(1)) for _ in range(3)),
                                      return_exceptions=True)
        assert len(engine.calls) == 1
        assert all(isinstance(e, ResourceExhausted) and "queue is full" in str(e) for e in errors)
        assert len({id(e) for e in errors}) == 3

    asyncio.run(main())


def test_scores_split_by_rows_and_a_disabled_merger_never_merges():
    async def main():
        async def score(tokens: TokenBatch, deadline):
            return ScoreResult(tokens.lengths.astype(np.float32), Timing())

        merger = CallMerger()
        outs = await asyncio.gather(*(merger.call("s", "embed", batch(*range(1, i + 2)), None, score, 256, 10_000)
                                      for i in range(4)))
        assert [o.scores.tolist() for o in outs] == [[1], [1, 2], [1, 2, 3], [1, 2, 3, 4]]
        assert merger.merged_engine_calls == 1

        engine, alone = FakeEngine(), CallMerger(enabled=False)
        await asyncio.gather(*(send(alone, engine, batch(1)) for _ in range(5)))
        assert [len(t) for t, _ in engine.calls] == [1] * 5

    asyncio.run(main())


def test_while_the_lane_is_busy_calls_wait_for_a_return_but_never_past_the_max_wait():
    async def main():
        engine, merger, first = await busy_lane()
        held = [asyncio.create_task(send(merger, engine, batch(1, first=10 * i))) for i in range(1, 4)]
        await settle()
        await asyncio.sleep(0.02)
        assert len(engine.calls) == 1  # held while the lane's one engine call is out
        engine.gate.set()
        await first
        outs = await asyncio.gather(*held)
        assert [len(t) for t, _ in engine.calls] == [1, 3]  # they left together when it came back
        assert [o.vectors[0, 0] for o in outs] == [10, 20, 30]
        assert all(o.timing.queue_s >= 0.02 for o in outs)  # the time held counts as queueing

        engine.gate.clear()
        engine, merger, first = await busy_lane(max_wait_s=0.01, engine=engine)
        late = asyncio.create_task(send(merger, engine, batch(1)))
        await asyncio.sleep(0.05)
        assert len(engine.calls) == 4  # the max wait passed: it went with the first still out
        # A batch's worth goes at once.
        full = [asyncio.create_task(send(merger, engine, batch(1), max_items=2)) for _ in range(2)]
        await settle()
        assert len(engine.calls) == 5 and len(engine.calls[-1][0]) == 2
        engine.gate.set()
        await asyncio.gather(first, late, *full)

    asyncio.run(main())


def test_a_deadline_that_passes_while_held_is_refused_before_the_engine():
    async def main():
        engine, merger, busy = await busy_lane()
        late = asyncio.create_task(send(merger, engine, batch(1), deadline=time.monotonic() + 0.01))
        await asyncio.sleep(0.03)
        engine.gate.set()
        await busy
        with pytest.raises(DeadlineExceeded, match="nothing was computed"):
            await late
        assert len(engine.calls) == 1

    asyncio.run(main())


def test_calls_of_more_than_a_few_inputs_go_on_their_own():
    async def main():
        engine, merger = FakeEngine(), CallMerger()
        large = batch(*[1] * (MERGED_MAX_INPUTS + 1))
        await asyncio.gather(send(merger, engine, batch(1)),
                             send(merger, engine, large),
                             send(merger, engine, batch(1)))
        assert engine.calls[0][0] is large  # at once, alone; the two small ones together after it
        assert [len(t) for t, _ in engine.calls] == [MERGED_MAX_INPUTS + 1, 2]

    asyncio.run(main())


@pytest.mark.parametrize("frontends,merge", [("0", True), ("1", True), ("1", False)])
def test_concurrent_single_text_calls_share_engine_calls_and_get_their_own_vectors(tmp_path, frontends, merge):
    """Over gRPC: a burst of single-text Embed calls reaches the engine as fewer requests (its
    queue histogram counts one per engine call), and every caller gets its own text's vector."""
    import grpc

    from model_factory import make_tiny_st_encoder
    from semserve_client.v1 import encoder_pb2, encoder_pb2_grpc
    from test_lifecycle import start_server
    from test_metrics import free_port, scrape, value

    encoder = make_tiny_st_encoder(tmp_path / "enc")
    port = free_port()
    proc, address, _ = start_server("--frontends", frontends, "--metrics-port", str(port), "--encoder",
                                    f"tiny={encoder}", *([] if merge else ["--no-merge-engine-calls"]))
    texts = [f"text number {i} " + "word " * (i % 7) for i in range(64)]
    counted = 'semserve_queue_seconds_count{model="tiny"}'
    try:
        with grpc.insecure_channel(address) as channel:
            stub = encoder_pb2_grpc.EncoderServiceStub(channel)
            before = value(scrape(port), counted)
            futures = [stub.Embed.future(encoder_pb2.EmbedRequest(texts=[t]), timeout=60) for t in texts]
            replies = [f.result() for f in futures]
            engine_calls = value(scrape(port), counted) - before
            merged = 0.0
            for _ in range(40):  # front ends report their counters twice a second
                merged = value(scrape(port), 'semserve_merged_calls_total{model="tiny"}')
                if merged or not merge:
                    break
                time.sleep(0.1)
            lone = [stub.Embed(encoder_pb2.EmbedRequest(texts=[t]), timeout=60) for t in texts]
    finally:
        proc.terminate()
        proc.wait(30)
    for reply, alone in zip(replies, lone):
        np.testing.assert_allclose(reply.embeddings[0].values, alone.embeddings[0].values, rtol=1e-5, atol=1e-6)
        assert len(reply.embeddings) == 1 and reply.timing.compute_tokens == reply.token_counts[0]
    if merge:
        assert 1 <= engine_calls < len(texts), engine_calls
        # The calls that travelled merged, as /metrics counts them: what the engine did not see as calls of its own.
        assert merged >= len(texts) - engine_calls + 1, (merged, engine_calls)
    else:
        assert engine_calls == len(texts) and merged == 0
