"""Errors are part of the API: every failure maps to one gRPC status with an actionable message."""

from __future__ import annotations

import functools
import logging
from typing import Awaitable, Callable

import grpc

from semserve.batching import DeadlineExpired, QueueFull
from semserve.registry import ModelNotFound, NoModelOfKind, WrongModelKind

log = logging.getLogger(__name__)


class ServiceError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def invalid_argument(message: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.INVALID_ARGUMENT, message)


def not_found(message: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.NOT_FOUND, message)


def failed_precondition(message: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.FAILED_PRECONDITION, message)


_STATUS_BY_TYPE: list[tuple[type[BaseException], grpc.StatusCode]] = [
    (QueueFull, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (DeadlineExpired, grpc.StatusCode.DEADLINE_EXCEEDED),
    (ModelNotFound, grpc.StatusCode.NOT_FOUND),
    (NoModelOfKind, grpc.StatusCode.FAILED_PRECONDITION),
    (WrongModelKind, grpc.StatusCode.INVALID_ARGUMENT),
]


def status_for(exc: Exception) -> tuple[grpc.StatusCode, str]:
    """The status and message a client sees for an exception raised while serving."""
    if isinstance(exc, ServiceError):
        return exc.code, exc.message
    for exc_type, code in _STATUS_BY_TYPE:
        if isinstance(exc, exc_type):
            return code, str(exc)
    if isinstance(exc, RuntimeError) and "shutting down" in str(exc):
        return grpc.StatusCode.UNAVAILABLE, str(exc)
    log.exception("internal error while serving a request", exc_info=exc)
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


def unimplemented(what: str, issue_hint: str):
    """A handler for an RPC of the v1 contract that this version does not serve yet."""

    async def handler(self, request_or_iterator, context: grpc.aio.ServicerContext):
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{what} is not implemented by this server yet ({issue_hint})")

    return handler
