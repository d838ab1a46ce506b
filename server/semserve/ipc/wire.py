"""Framing of core calls and replies: one pickled header frame, then one frame per buffer.

Pickle protocol 5 hands NumPy arrays to ``buffer_callback`` instead of copying them into the
header, and ZeroMQ sends those buffers as frames of their own (without a copy above its copy
threshold); on the other side the arrays are rebuilt over the received frames. Both ends are
processes of one server started from one installation, over a socket in a folder only the
server's user can open, so pickle's trust model (never unpickle foreign data) holds.
"""

from __future__ import annotations

import pickle
from typing import Any, Sequence

import zmq

PROTOCOL = 5
CALL = "call"
CANCEL = "cancel"


def pack(message: Any) -> list:
    buffers: list[pickle.PickleBuffer] = []
    header = pickle.dumps(message, protocol=PROTOCOL, buffer_callback=buffers.append)
    return [header, *(b.raw() for b in buffers)]


def unpack(frames: Sequence[zmq.Frame]) -> Any:
    return pickle.loads(frames[0].buffer, buffers=[f.buffer for f in frames[1:]])


def tune(socket: zmq.Socket) -> None:
    """No high-water mark: a ROUTER silently drops what exceeds it, and memory is already
    bounded by the batchers' queue bounds."""
    socket.setsockopt(zmq.SNDHWM, 0)
    socket.setsockopt(zmq.RCVHWM, 0)
    socket.setsockopt(zmq.LINGER, 0)
