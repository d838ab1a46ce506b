"""``RemoteCore``: the core API of an engine in another process, for front ends.

One DEALER socket carries every call of this process; replies are matched to calls by id, so
any number of calls are in flight at once. A call whose gRPC caller goes away is cancelled in
the engine too (a cancel record follows it), and each reply carries the engine's models epoch
and its own time, from which the transport's share of a request's time is reported.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from typing import Any

import zmq
import zmq.asyncio

from semserve.core.api import CORE_METHODS
from semserve.core.errors import CoreError, Unavailable
from semserve.ipc import wire

log = logging.getLogger(__name__)


class RemoteCore:
    def __init__(self, address: str):
        self.address = address
        self.models_epoch = -1
        self._context = zmq.asyncio.Context()
        self._socket = self._context.socket(zmq.DEALER)
        wire.tune(self._socket)
        self._socket.connect(address)
        self._ids = itertools.count(1)
        self._calls: dict[int, asyncio.Future] = {}
        self._reader: asyncio.Task | None = None
        self._closed = False

    async def start(self) -> None:
        self._reader = asyncio.get_running_loop().create_task(self._read_forever())

    async def close(self) -> None:
        self._closed = True
        if self._reader is not None:
            self._reader.cancel()
        for future in self._calls.values():
            if not future.done():
                future.set_exception(Unavailable("the server is shutting down"))
        self._socket.close(0)
        self._context.term()

    async def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        if self._closed:
            raise Unavailable("the server is shutting down")
        call_id = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self._calls[call_id] = future
        sent = time.monotonic()
        try:
            await self._socket.send_multipart(wire.pack((wire.CALL, call_id, method, args, kwargs)), copy=False)
            ok, value, engine_s = await future
        except asyncio.CancelledError:
            if not self._closed:
                self._socket.send_multipart(wire.pack((wire.CANCEL, call_id, "", (), {})))
            raise
        finally:
            self._calls.pop(call_id, None)
        if not ok:
            raise CoreError.from_wire(*value)
        timing = getattr(value, "timing", None)
        if timing is not None:
            timing.transport_s += max(0.0, time.monotonic() - sent - engine_s)
        return value

    async def _read_forever(self) -> None:
        while True:
            frames = await self._socket.recv_multipart(copy=False)
            try:
                call_id, ok, value, epoch, engine_s = wire.unpack(frames)
            except Exception:
                log.exception("unreadable reply from the engine; ignored")
                continue
            self.models_epoch = epoch
            future = self._calls.get(call_id)
            if future is not None and not future.done():
                future.set_result((ok, value, engine_s))


def _forwarder(method: str):
    async def forward(self: RemoteCore, *args: Any, **kwargs: Any) -> Any:
        return await self.call(method, *args, **kwargs)

    forward.__name__ = method
    forward.__doc__ = f"The engine's ``{method}``, called across the process boundary."
    return forward


for _method in CORE_METHODS:
    setattr(RemoteCore, _method, _forwarder(_method))
