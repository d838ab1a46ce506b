"""Errors of the core API, each carrying the gRPC status name a client will see.

They are plain exceptions with a ``code`` so that they cross a process boundary as
``(code, message)`` and come back as the same class (``from_wire``); the gRPC layer maps the
code to a status without knowing which part of the engine raised it.
"""

from __future__ import annotations

from typing import ClassVar


class CoreError(Exception):
    """A failure a caller can act on; ``code`` is the name of a grpc.StatusCode."""

    code: ClassVar[str] = "UNKNOWN"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def to_wire(self) -> tuple[str, str]:
        return self.code, self.message

    @staticmethod
    def from_wire(code: str, message: str) -> "CoreError":
        return _BY_CODE.get(code, CoreError)(message)


class InvalidArgument(CoreError, ValueError):
    code = "INVALID_ARGUMENT"


class NotFound(CoreError, LookupError):
    code = "NOT_FOUND"


class AlreadyExists(CoreError, ValueError):
    code = "ALREADY_EXISTS"


class FailedPrecondition(CoreError):
    code = "FAILED_PRECONDITION"


class ResourceExhausted(CoreError):
    code = "RESOURCE_EXHAUSTED"


class DeadlineExceeded(CoreError):
    code = "DEADLINE_EXCEEDED"


class Unavailable(CoreError):
    code = "UNAVAILABLE"


class DataLoss(CoreError):
    code = "DATA_LOSS"


class Cancelled(CoreError):
    code = "CANCELLED"


class Internal(CoreError):
    """A bug in the engine, reported to the caller instead of hanging the call."""

    code = "INTERNAL"


# Names the engine raises; each is the status its name suggests.
class ModelNotFound(NotFound):
    """No model of that name."""


class NoModelOfKind(FailedPrecondition):
    """The call needs a kind of model the server does not host."""


class WrongModelKind(InvalidArgument):
    """The named model exists but is of the other kind."""


class QueueFull(ResourceExhausted):
    """The model's queue is at its bound."""


class DeadlineExpired(DeadlineExceeded):
    """The request's deadline passed while it waited; it was dropped before compute."""


class ShuttingDown(Unavailable):
    """The model or the server is stopping; the call may be retried elsewhere."""


class CollectionNotFound(NotFound):
    """No collection of that name (or it was dropped while the call ran)."""


class CollectionExists(AlreadyExists):
    pass


class DiskFull(ResourceExhausted):
    """A write could not be committed for lack of disk space; nothing of it was applied."""


class CollectionFailed(DataLoss):
    """The collection could not be loaded (damaged or missing file); its files are kept as found."""


_BY_CODE: dict[str, type[CoreError]] = {
    cls.code: cls
    for cls in (InvalidArgument, NotFound, AlreadyExists, FailedPrecondition, ResourceExhausted, DeadlineExceeded,
                Unavailable, DataLoss, Cancelled, Internal)
}
