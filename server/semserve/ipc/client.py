"""``RemoteCore``: the core API of an engine in another process, for front ends.

One connection carries every call of this process; replies are matched to calls by id, so any
number of calls are in flight at once, and calls made in one turn of the event loop leave as
one message. A call whose gRPC caller goes away is cancelled in the engine too (a cancel
record follows it), and each reply carries the engine's models epoch and its own time, from
which the transport's share of a request's time is reported. If the engine's end closes, the
calls in flight fail with UNAVAILABLE at once (the supervisor then stops the server).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from typing import Any

from semserve.core.api import CORE_METHODS
from semserve.core.errors import CoreError, Unavailable
from semserve.ipc.wire import CALL, CANCEL, MessageChannel

log = logging.getLogger(__name__)


class RemoteCore:
    def __init__(self, address: str):
        self.address = address
        self.models_epoch = -1
        self._socket: MessageChannel | None = None
        self._ids = itertools.count(1)
        self._calls: dict[int, asyncio.Future] = {}
        self._closed = False

    async def start(self) -> None:
        self._socket = await MessageChannel.connect(self.address, self._received, self._lost)

    async def close(self) -> None:
        self._fail_all("the server is shutting down")
        if self._socket is not None:
            self._socket.close()

    def _lost(self, _peer) -> None:
        log.error("the connection to the engine process at %s closed", self.address)
        self._fail_all("the engine process is gone; the server is stopping")

    def _fail_all(self, reason: str) -> None:
        self._closed = True
        for future in self._calls.values():
            if not future.done():
                future.set_exception(Unavailable(reason))

    async def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        if self._closed or self._socket is None:
            raise Unavailable("the server is shutting down")
        call_id = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self._calls[call_id] = future
        sent = time.monotonic()
        self._socket.send((CALL, call_id, method, args, kwargs))
        try:
            ok, value, engine_s = await future
        except asyncio.CancelledError:
            if not self._closed:
                self._socket.send((CANCEL, call_id, "", (), {}))
            raise
        finally:
            self._calls.pop(call_id, None)
        if not ok:
            raise CoreError.from_wire(*value)
        timing = getattr(value, "timing", None)
        if timing is not None:
            timing.transport_s += max(0.0, time.monotonic() - sent - engine_s)
        return value

    def _received(self, peer: bytes | None, replies: list) -> None:
        for call_id, ok, value, epoch, engine_s in replies:
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
