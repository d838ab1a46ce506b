"""The engine process's side of the IPC: a ROUTER socket whose calls run on the engine's loop.

Each call becomes a task, so slow calls (a large search, a model load) never hold up others;
a cancel record from the front end cancels the task, and a cancelled inference is dropped from
its batcher before compute. Only the core API's methods can be called.
"""

from __future__ import annotations

import asyncio
import logging
import time

import zmq
import zmq.asyncio

from semserve.core.api import CORE_METHODS, Core
from semserve.core.errors import CoreError, Internal
from semserve.ipc import wire

log = logging.getLogger(__name__)


class EngineEndpoint:
    def __init__(self, core: Core, address: str):
        self._core = core
        self._address = address
        self._context = zmq.asyncio.Context()
        self._socket = self._context.socket(zmq.ROUTER)
        wire.tune(self._socket)
        self._tasks: dict[tuple[bytes, int], asyncio.Task] = {}
        self._reader: asyncio.Task | None = None

    async def start(self) -> None:
        self._socket.bind(self._address)
        self._reader = asyncio.get_running_loop().create_task(self._read_forever())

    async def stop(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        for task in list(self._tasks.values()):
            task.cancel()
        self._socket.close(0)
        self._context.term()

    async def _read_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            frames = await self._socket.recv_multipart(copy=False)
            identity = frames[0].bytes
            try:
                kind, call_id, method, args, kwargs = wire.unpack(frames[1:])
            except Exception:
                log.exception("unreadable message on the engine socket; ignored")
                continue
            key = (identity, call_id)
            if kind == wire.CANCEL:
                task = self._tasks.get(key)
                if task is not None:
                    task.cancel()
                continue
            task = loop.create_task(self._serve(identity, call_id, method, args, kwargs))
            self._tasks[key] = task
            task.add_done_callback(lambda _, key=key: self._tasks.pop(key, None))

    async def _serve(self, identity: bytes, call_id: int, method: str, args: tuple, kwargs: dict) -> None:
        started = time.monotonic()
        try:
            if method not in CORE_METHODS:
                raise Internal(f"no core method {method!r}")
            value = await getattr(self._core, method)(*args, **kwargs)
            ok = True
        except asyncio.CancelledError:
            return  # the caller is gone; nothing to answer
        except CoreError as exc:
            ok, value = False, exc.to_wire()
        except Exception as exc:
            log.exception("internal error in engine call %s", method)
            ok, value = False, ("INTERNAL", f"internal error in the engine: {type(exc).__name__}: {exc}")
        reply = (call_id, ok, value, self._core.models_epoch, time.monotonic() - started)
        try:
            frames = wire.pack(reply)
        except Exception as exc:  # an unpicklable result is a bug; still answer the caller
            log.exception("could not send the result of %s", method)
            frames = wire.pack((call_id, False, ("INTERNAL", f"unsendable result: {exc}"), self._core.models_epoch, 0.0))
        await self._socket.send_multipart([identity, *frames], copy=False)
