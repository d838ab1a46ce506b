"""Bidirectional streams answered by client-chosen id, in completion order.

Each request message is handled concurrently; at most ``max_in_flight`` per stream, so a
fast writer is slowed by gRPC flow control rather than by server memory.
"""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator, Awaitable, Callable

from semserve.frontend.errors import status_for
from semserve_client.v1 import common_pb2

_END = object()


async def answer_by_id(
    requests: AsyncIterator[Any],
    handle: Callable[[Any], Awaitable[Any]],
    make_response: Callable[..., Any],
    max_in_flight: int = 256,
) -> AsyncIterator[Any]:
    """``handle(inner_request)`` returns the inner response; failures become per-message errors."""
    out: asyncio.Queue = asyncio.Queue()
    slots = asyncio.Semaphore(max_in_flight)
    tasks: set[asyncio.Task] = set()

    async def one(message: Any) -> None:
        try:
            response = await handle(message.request)
            await out.put(make_response(id=message.id, response=response))
        except Exception as exc:  # one bad message must not end the stream
            code, text = status_for(exc)
            await out.put(make_response(id=message.id, error=common_pb2.Error(code=code.value[0], message=text)))
        finally:
            slots.release()

    async def read() -> None:
        try:
            async for message in requests:
                await slots.acquire()
                task = asyncio.get_running_loop().create_task(one(message))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if tasks:
                await asyncio.gather(*list(tasks), return_exceptions=True)
            await out.put(_END)
        except Exception as exc:
            await out.put(exc)

    reader = asyncio.get_running_loop().create_task(read())
    try:
        while True:
            item = await out.get()
            if item is _END:
                return
            if isinstance(item, Exception):
                raise item
            yield item
    finally:
        reader.cancel()
        for task in list(tasks):
            task.cancel()
