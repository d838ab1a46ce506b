"""Framing and delivery of core calls and replies between processes, over a Unix socket.

A message is one pickled header frame (a list of calls or replies: everything one side had to
send to one peer in one turn of its event loop), then one frame per large buffer. Pickle
protocol 5 hands large NumPy arrays to ``buffer_callback`` instead of copying them into the
header; they are written as frames of their own and the other side rebuilds the arrays over
the received bytes. On the socket, a message is its frame count (u32), each frame's length
(u64) and the frames. Both ends are processes of one server started from one installation, over
a socket in a folder only the server's user can open, so pickle's trust model (never unpickle
foreign data) holds.

``MessageChannel`` reads and writes the socket from the asyncio loop itself: no thread stands
between a front end's loop and the engine's. ZeroMQ, which carried this before, hands every
message to an I/O thread on each side; between two asyncio processes on a 2-core machine, a
round trip every 3 ms (a lone caller's pace) took 122-186 us p50 through ZeroMQ and 48-54 us
through a plain Unix socket, back to back 80-83 against 42-43 us (tests/perf/bench_ipc_roundtrip.py,
docs/benchmarks.md). Framing is the part ZeroMQ did here, and it is the few lines below.
"""

from __future__ import annotations

import asyncio
import itertools
import pickle
import struct
from typing import Any, Callable

PROTOCOL = 5
CALL = "call"
CANCEL = "cancel"
_COUNT = struct.Struct("<I")


def pack(message: Any) -> list:
    buffers: list[pickle.PickleBuffer] = []
    header = pickle.dumps(message, protocol=PROTOCOL, buffer_callback=buffers.append)
    return [header, *(b.raw() for b in buffers)]


def unpack(frames: list) -> Any:
    """A message from its frames (bytes-like; writable ones give writable arrays)."""
    return pickle.loads(frames[0], buffers=frames[1:])


def socket_path(address: str) -> str:
    """The file of an ``ipc://PATH`` address."""
    return address.removeprefix("ipc://")


def _framed(frames: list) -> list:
    lengths = [memoryview(f).nbytes for f in frames]
    return [_COUNT.pack(len(frames)) + struct.pack(f"<{len(frames)}Q", *lengths), *frames]


class _Connection(asyncio.Protocol):
    """One end of one socket connection: bytes in, whole messages out."""

    def __init__(self, channel: "MessageChannel", peer: int | None):
        self._channel = channel
        self.peer = peer
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()

    def connection_made(self, transport) -> None:
        self.transport = transport
        self._channel._connected(self)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        offset, available, received = 0, len(buffer), []
        while available - offset >= 4:
            (count,) = _COUNT.unpack_from(buffer, offset)
            start = offset + 4 + 8 * count
            if available < start:
                break
            lengths = struct.unpack_from(f"<{count}Q", buffer, offset + 4)
            end = start + sum(lengths)
            if available < end:
                break
            # A copy of its own per message: the arrays rebuilt over it stay valid (and writable)
            # after the buffer moves on.
            view = memoryview(buffer[start:end])
            frames, position = [], 0
            for length in lengths:
                frames.append(view[position:position + length])
                position += length
            received.append(unpack(frames))
            offset = end
        if offset:
            del buffer[:offset]
        for messages in received:
            self._channel._on_messages(self.peer, messages)

    def connection_lost(self, exc: Exception | None) -> None:
        self._channel._disconnected(self)


class MessageChannel:
    """The engine's listening end (``listen``: one peer per front-end connection) or a front
    end's connection to it (``connect``). ``on_messages(peer, messages)`` gets every message
    received (``peer`` names the connection on the listening end, None on a connecting one);
    ``on_lost(peer)`` hears of a connection that closed."""

    def __init__(self, on_messages: Callable[[int | None, list], None],
                 on_lost: Callable[[int | None], None] | None = None):
        self._on_messages = on_messages
        self._on_lost = on_lost
        self._loop = asyncio.get_running_loop()
        self._peers: dict[int | None, _Connection] = {}
        self._outbox: dict[int | None, list] = {}
        self._flush_scheduled = False
        self._server: asyncio.AbstractServer | None = None
        self._closed = False

    @classmethod
    async def listen(cls, address: str, on_messages, on_lost=None) -> "MessageChannel":
        channel = cls(on_messages, on_lost)
        ids = itertools.count(1)
        channel._server = await channel._loop.create_unix_server(
            lambda: _Connection(channel, next(ids)), socket_path(address))
        return channel

    @classmethod
    async def connect(cls, address: str, on_messages, on_lost=None) -> "MessageChannel":
        channel = cls(on_messages, on_lost)
        await channel._loop.create_unix_connection(lambda: _Connection(channel, None), socket_path(address))
        return channel

    def _connected(self, connection: _Connection) -> None:
        self._peers[connection.peer] = connection

    def _disconnected(self, connection: _Connection) -> None:
        if self._peers.get(connection.peer) is connection:
            del self._peers[connection.peer]
        if self._on_lost is not None and not self._closed:
            self._on_lost(connection.peer)

    def send(self, message: Any, peer: int | None = None) -> None:
        """Queue a message; everything queued for one peer in this turn of the loop leaves as one."""
        self._outbox.setdefault(peer, []).append(message)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        outbox, self._outbox = self._outbox, {}
        for peer, messages in outbox.items():
            connection = self._peers.get(peer)
            if connection is None or connection.transport is None or connection.transport.is_closing():
                continue  # the peer is gone: nobody waits for these
            connection.transport.writelines(_framed(pack(messages)))

    def close(self) -> None:
        self._closed = True
        if self._server is not None:
            self._server.close()
        for connection in list(self._peers.values()):
            if connection.transport is not None:
                connection.transport.close()
