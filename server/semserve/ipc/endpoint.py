"""The engine process's side of the IPC: a listening socket whose calls run on the engine's loop.

Each call becomes a task, so slow calls (a large search, a model load) never hold up others;
a cancel record from the front end cancels the task, and a cancelled inference is dropped from
its batcher before compute. Only the core API's methods can be called. Replies finished in the
same turn of the loop (a batch's requests, typically) go back to each front end as one message.
"""

from __future__ import annotations

import asyncio
import logging
import time

from semserve.core.api import CORE_METHODS, Core
from semserve.core.errors import CoreError
from semserve.ipc.wire import CANCEL, MessageChannel

log = logging.getLogger(__name__)


class EngineEndpoint:
    def __init__(self, core: Core, address: str):
        self._core = core
        self._address = address
        self._socket: MessageChannel | None = None
        self._tasks: dict[tuple[int, int], asyncio.Task] = {}

    async def start(self) -> None:
        self._socket = await MessageChannel.listen(self._address, self._received, self._lost)

    async def stop(self) -> None:
        for task in list(self._tasks.values()):
            task.cancel()
        if self._socket is not None:
            self._socket.close()

    def _lost(self, peer: int | None) -> None:
        """A front end's connection closed (it died or stopped): its calls have nobody to answer."""
        for key, task in list(self._tasks.items()):
            if key[0] == peer:
                task.cancel()

    def _received(self, peer: int | None, messages: list) -> None:
        loop = asyncio.get_running_loop()
        for kind, call_id, method, args, kwargs in messages:
            key = (peer, call_id)
            if kind == CANCEL:
                task = self._tasks.get(key)
                if task is not None:
                    task.cancel()
                continue
            if method not in CORE_METHODS:
                self._socket.send(
                    (call_id, False, ("INTERNAL", f"no core method {method!r}"), self._core.models_epoch, 0.0), peer
                )
                continue
            task = loop.create_task(self._serve(peer, call_id, method, args, kwargs))
            self._tasks[key] = task
            task.add_done_callback(lambda _, key=key: self._tasks.pop(key, None))

    async def _serve(self, peer: int | None, call_id: int, method: str, args: tuple, kwargs: dict) -> None:
        started = time.monotonic()
        try:
            value = await getattr(self._core, method)(*args, **kwargs)
            ok = True
        except asyncio.CancelledError:
            return  # the caller is gone; nothing to answer
        except CoreError as exc:
            ok, value = False, exc.to_wire()
        except Exception as exc:
            log.exception("internal error in engine call %s", method)
            ok, value = False, ("INTERNAL", f"internal error in the engine: {type(exc).__name__}: {exc}")
        self._socket.send((call_id, ok, value, self._core.models_epoch, time.monotonic() - started), peer)
