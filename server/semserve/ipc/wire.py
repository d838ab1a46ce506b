"""Framing and delivery of core calls and replies between processes.

A message on the socket is one pickled header frame (a list of calls or replies: everything one
side had to send in one turn of its event loop), then one frame per large buffer. Pickle
protocol 5 hands large NumPy arrays to ``buffer_callback`` instead of copying them into the
header, and ZeroMQ sends those buffers as frames of their own; the other side rebuilds the
arrays over the received frames. Both ends are processes of one server started from one
installation, over a socket in a folder only the server's user can open, so pickle's trust model
(never unpickle foreign data) holds.

``MessageSocket`` drives a plain ZeroMQ socket from the asyncio loop through its file
descriptor: a readable socket is drained in one go, and sends made during one turn of the loop
leave as one message. Measured with tests/perf/bench_engine_ipc.py, this costs the engine a
fraction of what one message per call through ``zmq.asyncio`` did (docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
import pickle
from typing import Any, Callable

import zmq

PROTOCOL = 5
# Socket options and flags as plain ints: pyzmq's enum flags cost microseconds per operation in
# enum code (send_multipart and recv_multipart combine them per frame), which showed up as a
# tenth of the engine's time under single-text load on the H100 (docs/benchmarks.md).
_EVENTS, _POLLIN, _RCVMORE = int(zmq.EVENTS), int(zmq.POLLIN), int(zmq.RCVMORE)
_NOBLOCK, _SNDMORE = int(zmq.NOBLOCK), int(zmq.SNDMORE)
CALL = "call"
CANCEL = "cancel"


def pack(message: Any) -> list:
    buffers: list[pickle.PickleBuffer] = []
    header = pickle.dumps(message, protocol=PROTOCOL, buffer_callback=buffers.append)
    return [header, *(b.raw() for b in buffers)]


def unpack(frames) -> Any:
    return pickle.loads(frames[0].buffer, buffers=[f.buffer for f in frames[1:]])


class MessageSocket:
    """A DEALER or ROUTER socket on the running loop. ``on_messages(peer, messages)`` gets every
    batch received (``peer`` is the sender's identity on a ROUTER, None on a DEALER)."""

    def __init__(self, socket: zmq.Socket, on_messages: Callable[[bytes | None, list], None]):
        self._socket = socket
        self._routed = socket.type == zmq.ROUTER
        self._on_messages = on_messages
        self._outbox: dict[bytes | None, list] = {}
        self._flush_scheduled = False
        self._loop = asyncio.get_running_loop()
        # No high-water mark: a ROUTER silently drops what exceeds it, and memory is already
        # bounded by the batchers' queue bounds.
        socket.setsockopt(zmq.SNDHWM, 0)
        socket.setsockopt(zmq.RCVHWM, 0)
        socket.setsockopt(zmq.LINGER, 0)
        self._fd = socket.getsockopt(zmq.FD)
        self._loop.add_reader(self._fd, self._drain)
        self._loop.call_soon(self._drain)

    def send(self, message: Any, peer: bytes | None = None) -> None:
        """Queue a message; everything queued in this turn of the loop leaves as one."""
        self._outbox.setdefault(peer, []).append(message)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        outbox, self._outbox = self._outbox, {}
        for peer, messages in outbox.items():
            frames = pack(messages)
            if self._routed:
                frames.insert(0, peer)
            last = len(frames) - 1
            for i, frame in enumerate(frames):
                self._socket.send(frame, _SNDMORE if i < last else 0, copy=False)
        # ZeroMQ's descriptor signals edges: a send may consume the edge of an arrival.
        self._drain()

    def _drain(self) -> None:
        socket = self._socket
        while socket.getsockopt(_EVENTS) & _POLLIN:
            frames = [socket.recv(_NOBLOCK, copy=False)]
            while socket.getsockopt(_RCVMORE):
                frames.append(socket.recv(0, copy=False))
            peer = frames[0].bytes if self._routed else None
            self._on_messages(peer, unpack(frames[1:] if self._routed else frames))

    def close(self) -> None:
        self._loop.remove_reader(self._fd)
        self._socket.close(0)
