"""The IPC wire format: messages round-trip intact, and the types every call and reply carries
are named by extension code, not by module and name, so unpickling a message makes no
``find_class`` call and fires no audit event (whose Python hooks cost the engine per message)."""

from __future__ import annotations

import os
import pickletools
import subprocess
import sys
from pathlib import Path

import numpy as np

from semserve.core.types import EncodeResult, Hit, ScoreResult, SearchHits, Timing, TokenBatch, Upserted
from semserve.ipc.wire import CALL, pack, unpack

BIG = 8192  # above the inline limit: travels as a frame of its own


def messages(large: bool = True) -> list:
    """A call message and a reply of each kind. With ``large``, the call also carries a request
    whose ids exceed the inline limit: NumPy pickles such an array itself, naming its own
    rebuilders in full, which one message of that size easily carries."""
    small = TokenBatch.from_lists([[101, 7, 8, 102], [101, 9, 102]], [[0, 0, 1, 1], [0, 1, 1]])
    large = TokenBatch.from_lists([[101] + list(range(1000, 1000 + BIG)) + [102]]) if large else small
    return [
        [(CALL, 1, "encode", ("m", small, 12.5), {}), (CALL, 2, "encode", ("m", large, None), {})],
        [(1, True, EncodeResult(np.arange(2 * 384, dtype=np.float32).reshape(2, 384), Timing(queue_s=0.5)), 3, 0.1)],
        [(2, True, ScoreResult(np.array([0.25, -1.5], dtype=np.float32), Timing(batches=2)), 3, 0.2)],
        [(3, True, SearchHits([[Hit("a", 0.9, "text", {"k": "v"}), Hit("b", 0.1, present=False)]], Timing()), 3, 0.0)],
        [(4, True, Upserted(7, Timing(transport_s=0.25)), 3, 0.0)],
        [(5, True, SearchHits.from_columns([["a", "b"], []], [[0.5, 0.25], []], Timing(inference_s=0.1)), 3, 0.0)],
    ]


def round_trip(message):
    return unpack([memoryview(bytearray(f)) for f in pack(message)])


def test_messages_round_trip_with_their_arrays():
    calls, encoded, scored, found, stored, columns = (round_trip(m) for m in messages())
    small, large = calls[0][3][1], calls[1][3][1]
    want = messages()[0]
    for got, sent in ((small, want[0][3][1]), (large, want[1][3][1])):
        assert np.array_equal(got.ids, sent.ids) and np.array_equal(got.offsets, sent.offsets)
    assert np.array_equal(small.type_ids, want[0][3][1].type_ids) and large.type_ids is None
    assert calls[0][3][2] == 12.5 and calls[1][3][2] is None
    vectors = encoded[0][2].vectors
    assert vectors.shape == (2, 384) and vectors.dtype == np.float32 and vectors[1, 0] == 384
    assert encoded[0][2].timing.queue_s == 0.5
    assert np.array_equal(scored[0][2].scores, np.array([0.25, -1.5], dtype=np.float32))
    assert found[0][2].hits[0][0] == Hit("a", 0.9, "text", {"k": "v"}) and not found[0][2].hits[0][1].present
    assert stored[0][2] == Upserted(7, Timing(transport_s=0.25))
    # Hits without text travel as lists of ids and scores, and read as Hits on arrival.
    assert columns[0][2].columns == ([["a", "b"], []], [[0.5, 0.25], []])
    assert columns[0][2].hits == [[Hit("a", 0.5), Hit("b", 0.25)], []] and columns[0][2].timing.inference_s == 0.1


def test_the_carried_types_are_named_by_extension_code():
    for message in messages(large=False):
        header = pack(message)[0]
        opcodes = {op.name for op, _, _ in pickletools.genops(header)}
        assert not opcodes & {"GLOBAL", "STACK_GLOBAL", "INST"}, opcodes
        assert "EXT1" in opcodes


def test_unpacking_a_message_fires_no_audit_event_once_its_codes_are_known():
    """In a process of its own: an audit hook cannot be removed once added."""
    script = """
import sys
from test_wire import messages
from semserve.ipc.wire import pack, unpack
frames = [[memoryview(bytearray(f)) for f in pack(m)] for m in messages(large=False)]
for message in frames:
    unpack(message)  # the first sight of each code resolves it once
events = []
sys.addaudithook(lambda event, _args: events.append(event) if event.startswith("pickle") else None)
for message in frames:
    unpack(message)
print(events)
"""
    here = str(Path(__file__).resolve().parent)
    path = os.pathsep.join([here, os.environ.get("PYTHONPATH", ""), *sys.path])
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": path}, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_a_channel_carries_messages_whole_across_reads_and_reports_a_closed_peer(tmp_path):
    """Over a real Unix socket: many messages in one turn arrive as one, a message of megabytes
    arrives whole however the kernel splits it, arrays come back writable, replies find their
    peer, and each side hears when the other closes."""
    import asyncio

    from semserve.ipc.wire import MessageChannel

    async def scenario():
        address = f"ipc://{tmp_path}/engine"
        got_server, got_client, lost = [], [], []
        arrived = asyncio.Event()

        def on_server(peer, messages):
            got_server.append((peer, messages))
            for message in messages:
                server.send(("echo", message), peer)

        def on_client(peer, messages):
            got_client.extend(messages)
            if len(got_client) == 3:
                arrived.set()

        server = await MessageChannel.listen(address, on_server, lost.append)
        client = await MessageChannel.connect(address, on_client, lost.append)
        big = np.arange(3_000_000, dtype=np.float32)  # 12 MB: many reads on the other side
        client.send(("small", 1))
        client.send(("small", 2))  # the same turn: one message of two
        await asyncio.sleep(0.05)
        client.send(("big", big))
        await asyncio.wait_for(arrived.wait(), 10)
        assert [len(m) for _, m in got_server] == [2, 1]
        peer = got_server[0][0]
        assert peer is not None and got_server[1][0] == peer
        assert got_client[:2] == [("echo", ("small", 1)), ("echo", ("small", 2))]
        echoed = got_client[2][1][1]
        assert np.array_equal(echoed, big) and echoed.flags.writeable
        client.close()
        await asyncio.sleep(0.1)
        assert lost == [peer]  # the server heard that its peer went
        server.close()

    asyncio.run(scenario())


def test_a_front_end_fails_its_calls_at_once_when_the_engine_goes(tmp_path):
    import asyncio

    from semserve.core.errors import Unavailable
    from semserve.ipc.client import RemoteCore
    from semserve.ipc.wire import MessageChannel

    async def scenario():
        address = f"ipc://{tmp_path}/engine"
        server = await MessageChannel.listen(address, lambda peer, messages: None)  # never answers
        core = RemoteCore(address)
        await core.start()
        call = asyncio.ensure_future(core.info())
        await asyncio.sleep(0.05)
        server.close()  # the engine's end closes with the call in flight
        try:
            await asyncio.wait_for(call, 5)
        except Unavailable as exc:
            assert "engine process is gone" in str(exc)
        else:
            raise AssertionError("the call did not fail")
        await core.close()

    asyncio.run(scenario())
