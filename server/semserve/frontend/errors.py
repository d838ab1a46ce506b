"""Errors are part of the API: every failure maps to one gRPC status with an actionable message.

The core raises ``CoreError``s whose ``code`` names the status; anything else reaching this
layer is a bug, logged with its traceback and answered INTERNAL.
"""

from __future__ import annotations

import functools
import logging
from typing import Awaitable, Callable

import grpc

from semserve.core.errors import CoreError, InvalidArgument

log = logging.getLogger(__name__)


def invalid_argument(message: str) -> CoreError:
    return InvalidArgument(message)


class ServiceError(CoreError):
    """A status chosen by the gRPC layer itself (authentication, for instance)."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.status = code


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status and message a client sees for an exception raised while serving."""
    if isinstance(exc, ServiceError):
        return exc.status, exc.message
    if isinstance(exc, CoreError):
        return getattr(grpc.StatusCode, exc.code, grpc.StatusCode.UNKNOWN), exc.message
    log.error("internal error while serving a request", exc_info=exc)
    return grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}"


def unary_rpc(handler: Callable[..., Awaitable]) -> Callable[..., Awaitable]:
    """Wrap a unary handler so any failure ends the call with its mapped status."""

    @functools.wraps(handler)
    async def wrapper(self, request, context: grpc.aio.ServicerContext):
        try:
            return await handler(self, request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            code, message = status_for(exc)
            await context.abort(code, message)

    return wrapper
